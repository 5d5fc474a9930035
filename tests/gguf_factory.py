"""Small valid GGUF files written with the `gguf` package's GGUFWriter, for reader and bad-input tests.

The default file is a complete 1-layer llama with a byte-level vocabulary: hastelm loads and runs
it, so a test that breaks one thing (architecture, a tensor's type) fails for that reason only.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

HIDDEN, FFN, HEADS = 32, 256, 2     # FFN = one 256-wide block per row, so any GGML type fits ffn_down


def _byte_symbols() -> list[str]:
    from hastelm.formats.vocab import byte_level_alphabet
    return list(byte_level_alphabet().values())


def write_tiny_gguf(path: Path, arch: str = "llama",
                    ffn_down_type: GGMLQuantizationType = GGMLQuantizationType.F32, seed: int = 0) -> Path:
    """A 1-layer `arch` model; `ffn_down_type` stores that tensor in another GGML type (random bytes)."""
    rng = np.random.default_rng(seed)
    tokens = [*_byte_symbols(), "Ġa", "<|end|>"]
    w = GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.context_length", 128)
    w.add_uint32(f"{arch}.embedding_length", HIDDEN)
    w.add_uint32(f"{arch}.block_count", 1)
    w.add_uint32(f"{arch}.feed_forward_length", FFN)
    w.add_uint32(f"{arch}.attention.head_count", HEADS)
    w.add_uint32(f"{arch}.attention.head_count_kv", HEADS)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])
    w.add_token_merges(["Ġ a"])
    w.add_eos_token_id(len(tokens) - 1)

    def dense(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    shapes = {"token_embd.weight": (len(tokens), HIDDEN), "output_norm.weight": (HIDDEN,),
              "blk.0.attn_norm.weight": (HIDDEN,), "blk.0.ffn_norm.weight": (HIDDEN,),
              "blk.0.attn_q.weight": (HIDDEN, HIDDEN), "blk.0.attn_k.weight": (HIDDEN, HIDDEN),
              "blk.0.attn_v.weight": (HIDDEN, HIDDEN), "blk.0.attn_output.weight": (HIDDEN, HIDDEN),
              "blk.0.ffn_gate.weight": (FFN, HIDDEN), "blk.0.ffn_up.weight": (FFN, HIDDEN)}
    for name, shape in shapes.items():
        w.add_tensor(name, dense(*shape))
    if ffn_down_type == GGMLQuantizationType.F32:
        w.add_tensor("blk.0.ffn_down.weight", dense(HIDDEN, FFN))
    else:
        block, size = GGML_QUANT_SIZES[ffn_down_type]
        raw = rng.integers(0, 256, (HIDDEN, FFN // block * size), dtype=np.uint8)
        w.add_tensor("blk.0.ffn_down.weight", raw, raw_dtype=ffn_down_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
