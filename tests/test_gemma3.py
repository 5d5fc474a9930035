"""Gemma 3 270M (the packaged Q4_K_M GGUF) in float32.

transformers 5 reads gemma3 GGUF files, but loading this one takes ~60 s (its GGUFReader pass over
the 262k-token vocabulary alone is ~12 s), so by default hastelm is compared with greedy tokens
recorded from transformers 5.24 (`AutoModelForCausalLM.from_pretrained(dir, gguf_file=...,
dtype=torch.float32)`), and with the reference forward over a prompt longer than the 512-token
sliding window. HASTELM_SLOW_TESTS=1 re-checks against transformers live, logits included.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from exactness_data import FIXED_TEXT
from hastelm.decoding.sampling import SamplingParams
from hastelm.models.loader import read_model_files
from hastelm.models.reference import ReferenceModel
from hastelm.engine.runner import teacher_forced_logits

SLOW = bool(os.environ.get("HASTELM_SLOW_TESTS"))
NEW_TOKENS = 24

# prompt name -> (prompt length, transformers' greedy continuation)
RECORDED: dict[str, tuple[int, list[int]]] = {
    "chat": (19, [155122, 528, 1156, 23974, 3217, 506, 7217, 563, 3730, 236761, 217716, 107, 3048, 659, 496,
                  5117, 528, 496, 1012, 236761, 1599, 659, 496, 5117]),
    "raw": (8, [784, 528, 506, 1657, 529, 3788, 496, 861, 5279, 3207, 236761, 669, 1171, 563, 9079, 236764, 837,
                563, 506, 5279, 529, 7001, 236761, 669]),
    "long": (653, [236764, 84255, 236764, 54264, 506, 32450, 60545, 1418, 9137, 657, 85083, 531, 2214, 506,
                   15123, 236761, 1293, 7261, 1546, 529, 506, 886, 7549, 532]),
}


@pytest.fixture(scope="module")
def gemma_f32(gemma_path: Path) -> Any:
    from hastelm import LLM
    return LLM(str(gemma_path), dtype="float32", context_length=1024)


def _prompt(llm: Any, name: str) -> list[int]:
    if name == "chat":
        return llm.chat_prompt([{"role": "user", "content": "Explain in two sentences why the sky is blue."}])
    if name == "raw":
        return llm.encode_prompt("The three largest cities in Europe are")
    return llm.encode_prompt(FIXED_TEXT + "\n\n" + FIXED_TEXT + "\n\nSummary: the keeper")


def _greedy(llm: Any, ids: list[int]) -> list[int]:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    return list(llm.generate([ids], params)[0].token_ids)


@pytest.mark.parametrize("name", list(RECORDED))
def test_greedy_matches_recorded_transformers(gemma_f32: Any, name: str) -> None:
    ids = _prompt(gemma_f32, name)
    length, expected = RECORDED[name]
    assert len(ids) == length
    assert _greedy(gemma_f32, ids) == expected


def test_long_prompt_matches_reference(gemma_f32: Any, gemma_path: Path) -> None:
    """653 tokens: the sliding layers see only the last 512, the global ones everything."""
    ids = _prompt(gemma_f32, "long")
    assert len(ids) > gemma_f32.config.sliding_window
    model = gemma_f32.model
    ours = teacher_forced_logits(model, ids)[-8:]
    config, source, _ = read_model_files(gemma_path)
    want = ReferenceModel(config, source).forward(ids, last=8)
    diff = (ours - want).abs().max().item()
    print(f"\nGemma 3 270M float32 vs reference forward, last 8 of {len(ids)} positions: max |diff| = {diff:.2e}")
    assert diff < 1e-3


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="set HASTELM_SLOW_TESTS=1 (loads Gemma in transformers, ~60 s)")
def test_matches_transformers_live(gemma_f32: Any, gemma_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(gemma_path.parent), gguf_file=gemma_path.name,
                                              dtype=torch.float32)
    hf.generation_config.eos_token_id = None
    model = gemma_f32.model
    worst = 0.0
    for name in RECORDED:
        ids = _prompt(gemma_f32, name)
        with torch.no_grad():
            theirs = hf(torch.tensor([ids])).logits[0]
        ours = teacher_forced_logits(model, ids)
        worst = max(worst, (ours - theirs).abs().max().item())
        mask = torch.ones(1, len(ids), dtype=torch.long)
        live = hf.generate(torch.tensor([ids]), attention_mask=mask, do_sample=False,
                           max_new_tokens=NEW_TOKENS)[0, len(ids):].tolist()
        assert _greedy(gemma_f32, ids) == live
    print(f"\nGemma 3 270M float32 logits vs transformers (same GGUF): max |diff| = {worst:.2e}")
    assert worst < 1e-3
