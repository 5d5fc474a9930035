"""What the fast default mode (dtype="auto" on CPU: the GGUF's int4 blocks packed for torch's int4
kernel, other weights int8, bf16 activations) costs in quality against float32, on the real model.

Top-1 agreement is teacher-forced: both modes read the same tokens (each prompt plus float32's
128-token greedy continuation) and we count the positions where their argmax agrees. Perplexity is
over a fixed ~300-token paragraph. Run with -s to see the numbers.
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from exactness_data import FIXED_TEXT, PROMPTS, greedy, prompt_ids
from hastelm.engine.runner import teacher_forced_logits

# The int4 weights are the file's own Q4_1 values, so the fast mode differs from float32 only by
# bf16 rounding of activations and int8 rounding of the Q8_0/Q6_K-type tensors: a few logit
# hundredths. Flips then happen only where float32's top two are nearly tied, a few per cent.
MIN_AGREEMENT = 0.9
MAX_PPL_RATIO = 1.1


def _logits(llm: Any, ids: list[int]) -> torch.Tensor:
    model = llm.model
    return teacher_forced_logits(model, ids).float()


def _perplexity(llm: Any, ids: list[int]) -> float:
    logits = _logits(llm, ids)
    return math.exp(F.cross_entropy(logits[:-1], torch.tensor(ids[1:])).item())


def test_fast_mode_agreement_and_perplexity(llm_f32: Any, llm_fast: Any) -> None:
    agree = total = 0
    for prompt in PROMPTS:
        ids = prompt_ids(llm_f32, prompt)
        seq = ids + greedy(llm_f32, ids)
        # rows len(ids)-1 .. end-1 predict the continuation tokens
        ref = _logits(llm_f32, seq)[len(ids) - 1:-1].argmax(-1)
        fast = _logits(llm_fast, seq)[len(ids) - 1:-1].argmax(-1)
        agree += int((ref == fast).sum())
        total += len(ref)
    text = llm_f32.encode_prompt(FIXED_TEXT)
    ppl_f32, ppl_fast = _perplexity(llm_f32, text), _perplexity(llm_fast, text)
    rate = agree / total
    print(f"\nfast mode vs float32: top-1 agreement {rate:.3f} ({agree}/{total} teacher-forced tokens); "
          f"perplexity on {len(text)} tokens: float32 {ppl_f32:.3f}, fast {ppl_fast:.3f} "
          f"(ratio {ppl_fast / ppl_f32:.4f})")
    assert rate >= MIN_AGREEMENT
    assert ppl_fast / ppl_f32 <= MAX_PPL_RATIO
