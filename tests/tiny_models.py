"""Tiny random Hugging Face checkpoints built in memory (nothing is downloaded).

Each is a transformers model from a small config with random weights, saved with
`save_pretrained` next to a byte-level tokenizer.json, so hastelm loads it through the same HF
folder path as a real checkpoint.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

VOCAB = 300          # > the tokenizer's 257 entries: the embedding has unused rows, as real ones do
SLIDING_WINDOW = 8   # shorter than every test sequence, so the window changes the result

_COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               max_position_embeddings=512, rms_norm_eps=1e-6)


def tiny_config(arch: str) -> Any:
    import transformers as tf

    if arch == "llama":   # GQA, untied head, Llama 3.1 RoPE scaling
        return tf.LlamaConfig(**_COMMON, num_hidden_layers=2, num_key_value_heads=2, rope_theta=5000.0,
                              tie_word_embeddings=False,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    if arch == "mistral":  # llama family with a sliding window on every layer
        return tf.MistralConfig(**_COMMON, num_hidden_layers=2, num_key_value_heads=2,
                                sliding_window=SLIDING_WINDOW)
    if arch == "qwen2":    # q/k/v biases, tied embeddings
        return tf.Qwen2Config(**_COMMON, num_hidden_layers=2, num_key_value_heads=2, tie_word_embeddings=True,
                              rope_theta=20000.0)
    if arch == "gemma3":   # 7 layers: sliding layers 0-4 and 6, a global layer 5; MQA; its own attn scale
        return tf.Gemma3TextConfig(**_COMMON, num_hidden_layers=7, num_key_value_heads=1, head_dim=16,
                                   sliding_window=SLIDING_WINDOW, query_pre_attn_scalar=24)
    raise ValueError(arch)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Weights large enough that logits are far from ties (the default init gives near-uniform
    outputs); norm weights move away from 1 (or 0 for gemma's 1 + w) so offset bugs show. Small
    embeddings keep gemma's scaled, tied embedding from making the model echo its last token."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name:
                p.add_(0.3 * noise)
            else:
                p.copy_((0.02 if "embed_tokens" in name else 0.15) * noise)


def write_tokenizer(folder: Path) -> None:
    """A byte-level BPE over the 256 byte symbols plus an end-of-sequence token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<eos>"])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))


def build_tiny(arch: str, folder: Path, seed: int = 0, max_shard_size: str | None = None) -> torch.nn.Module:
    """Save a random `arch` model (float32) and a tokenizer to `folder`; returns the HF model."""
    import transformers as tf

    torch.manual_seed(seed)
    model = tf.AutoModelForCausalLM.from_config(tiny_config(arch), dtype=torch.float32)
    randomize(model, seed)
    model.generation_config.eos_token_id = None      # compare fixed-length continuations
    model.generation_config.pad_token_id = 0
    folder.mkdir(parents=True, exist_ok=True)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(folder, **kwargs)
    write_tokenizer(folder)
    return model.eval()
