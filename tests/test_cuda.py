"""The same code on CUDA (bf16). Skipped where no GPU is present."""
from __future__ import annotations

import pytest
import torch

from hastelm import LLM, SamplingParams
from hastelm.engine.runner import teacher_forced_logits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at"]


@pytest.fixture(scope="module")
def llm_cuda(smollm_path):
    return LLM(str(smollm_path), device="cuda", context_length=2048)


def test_cuda_runs_bf16_and_agrees_with_float32(llm_cuda, llm_f32):
    assert llm_cuda.mode == "bfloat16" and llm_cuda.model.device.type == "cuda"
    agree = total = 0
    for prompt in PROMPTS:
        ref = llm_f32.generate(prompt, SamplingParams(temperature=0, max_tokens=32))[0]
        ids = llm_f32.encode_prompt(prompt) + ref.token_ids
        logits = teacher_forced_logits(llm_cuda.model, ids)
        n = len(ref.token_ids)
        pred = logits[len(ids) - n - 1:-1].argmax(-1).cpu().tolist()
        agree += sum(p == t for p, t in zip(pred, ref.token_ids))
        total += n
    print(f"CUDA bf16 top-1 agreement with CPU float32: {agree}/{total}")
    assert agree / total >= 0.9


def test_cuda_sampling_and_batched_slots(llm_cuda):
    out = llm_cuda.generate(PROMPTS, SamplingParams(temperature=0.8, seed=3, max_tokens=16))
    again = llm_cuda.generate(PROMPTS, SamplingParams(temperature=0.8, seed=3, max_tokens=16))
    assert [o.text for o in out] == [o.text for o in again]
