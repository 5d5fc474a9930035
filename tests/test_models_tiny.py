"""Tiny random llama, mistral, qwen2 and gemma3 checkpoints (built in memory, saved as HF folders)
loaded by hastelm in float32: logits and greedy continuations match transformers on the same
weights, as does the reference forward; sharded and bf16 checkpoints load too.

What each config exercises: llama: GQA, an untied head, Llama 3.1 RoPE scaling; mistral: a sliding
window on every layer; qwen2: q/k/v biases, tied embeddings; gemma3: sliding and global layers with
their own RoPE bases, q/k norms, sandwich norms stored as (1 + w), GeGLU, scaled embeddings, MQA and
a query scale that is not 1/sqrt(head_dim). Sequences are longer than the sliding window (8).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from hastelm import LLM
from hastelm.decoding.sampling import SamplingParams
from hastelm.models.loader import read_model_files
from hastelm.models.reference import ReferenceModel
from hastelm.engine.runner import teacher_forced_logits
from tiny_models import SLIDING_WINDOW, build_tiny

pytest.importorskip("transformers")

ARCHS = ["llama", "mistral", "qwen2", "gemma3"]
ATOL = 1e-4            # float32 logits of magnitude ~5
SEQ = 24               # > SLIDING_WINDOW
NEW_TOKENS = 32


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Any, LLM]:
    folder = tmp_path_factory.mktemp(request.param)
    hf = build_tiny(request.param, folder)
    return request.param, folder, hf, LLM(str(folder), dtype="float32", context_length=256)


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, 257, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _hf_logits(hf: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def _our_logits(llm: LLM, ids: list[int]) -> torch.Tensor:
    return teacher_forced_logits(llm.model, ids)


def test_config_read_from_the_folder(tiny: tuple) -> None:
    arch, _, hf, llm = tiny
    c, ref = llm.config, hf.config
    assert c.architecture == ("llama" if arch == "mistral" else arch)
    head_dim = getattr(ref, "head_dim", None) or ref.hidden_size // ref.num_attention_heads
    assert (c.num_hidden_layers, c.num_key_value_heads, c.head_dim) == (ref.num_hidden_layers,
                                                                        ref.num_key_value_heads, head_dim)
    assert c.sliding_window == (SLIDING_WINDOW if arch in ("mistral", "gemma3") else None)
    if arch == "gemma3":
        assert c.layer_types.count("full_attention") == 1 and c.rope_theta == 1e6
        assert c.rope_local_base_freq == 1e4


def test_logits_match_transformers(tiny: tuple) -> None:
    arch, _, hf, llm = tiny
    ids = _ids(SEQ, 1)
    diff = (_our_logits(llm, ids) - _hf_logits(hf, ids)).abs().max().item()
    print(f"\ntiny {arch}: float32 logits vs transformers max |diff| = {diff:.2e}")
    assert diff < ATOL


def test_reference_forward_matches_transformers(tiny: tuple) -> None:
    """The oracle itself, on rotate-half (Hugging Face) weights."""
    _, folder, hf, _ = tiny
    config, source, _ = read_model_files(folder)
    ids = _ids(SEQ, 2)
    torch.testing.assert_close(ReferenceModel(config, source).forward(ids), _hf_logits(hf, ids), atol=ATOL, rtol=0)


def test_greedy_matches_transformers(tiny: tuple) -> None:
    _, _, hf, llm = tiny
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    for seed, n in ((3, 10), (4, 3)):
        ids = _ids(n, seed)
        ours = llm.generate([ids], params)[0].token_ids
        theirs = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, n, dtype=torch.long),
                             do_sample=False, max_new_tokens=NEW_TOKENS)[0, n:].tolist()
        assert list(ours) == theirs
        assert len(set(theirs)) > 3       # a real continuation, not one token repeated


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_sharded_bf16_checkpoint(arch: str, tmp_path: Path) -> None:
    """Sharded safetensors (with their index file) in bfloat16, as most hub checkpoints are."""
    hf = build_tiny(arch, tmp_path / "f32", seed=5)
    hf = hf.to(torch.bfloat16)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="60KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (sharded / name).write_bytes((tmp_path / "f32" / name).read_bytes())
    assert len(list(sharded.glob("*.safetensors"))) > 2
    llm = LLM(str(sharded), dtype="float32", context_length=64)
    ids = _ids(SEQ, 6)
    from transformers import AutoModelForCausalLM

    # transformers reading the same shards into float32 (hf.float() would keep bf16-rounded RoPE tables)
    want = _hf_logits(AutoModelForCausalLM.from_pretrained(sharded, dtype=torch.float32), ids)
    torch.testing.assert_close(_our_logits(llm, ids), want, atol=ATOL, rtol=0)
