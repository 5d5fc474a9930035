"""The sampler chain and stop conditions, on toy logits (exact expectations)."""
from __future__ import annotations

import math

import pytest
import torch

from hastelm.decoding.sampling import Sampler, SamplingParams
from hastelm.errors import InvalidParameterError


def _logits(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


@pytest.mark.parametrize("kwargs", [
    {"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"top_k": -1}, {"min_p": 1.5},
    {"max_tokens": 0}, {"repetition_penalty": 0.0}, {"frequency_penalty": 3.0}, {"stop": [""]},
])
def test_invalid_parameters_raise_clear_errors(kwargs):
    with pytest.raises(InvalidParameterError):
        SamplingParams(**kwargs)


def test_greedy_is_argmax_and_probs_one_hot():
    s = Sampler(SamplingParams(temperature=0))
    logits = _logits(0.1, 3.0, 2.9, -1.0)
    assert s.sample(logits, []) == 1
    assert s.probs(logits, []).tolist() == [0.0, 1.0, 0.0, 0.0]


def test_temperature_scales_softmax():
    s = Sampler(SamplingParams(temperature=2.0))
    logits = _logits(0.0, 2.0)
    p = s.probs(logits, [])
    expected = torch.softmax(logits / 2.0, -1)
    assert torch.allclose(p, expected)


def test_top_k_keeps_k_most_likely():
    p = Sampler(SamplingParams(top_k=2)).probs(_logits(1.0, 4.0, 3.0, 0.0), [])
    assert (p > 0).tolist() == [False, True, True, False]
    assert math.isclose(float(p.sum()), 1.0, rel_tol=1e-6)


def test_top_p_keeps_smallest_prefix_reaching_p():
    # probabilities 0.5, 0.3, 0.2 (in that order of logits)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.2]))
    assert (Sampler(SamplingParams(top_p=0.5)).probs(logits, []) > 0).tolist() == [True, False, False]
    assert (Sampler(SamplingParams(top_p=0.6)).probs(logits, []) > 0).tolist() == [True, True, False]
    assert (Sampler(SamplingParams(top_p=1.0)).probs(logits, []) > 0).tolist() == [True, True, True]


def test_min_p_drops_tokens_below_fraction_of_best():
    logits = torch.log(torch.tensor([0.6, 0.3, 0.1]))
    p = Sampler(SamplingParams(min_p=0.2)).probs(logits, [])   # threshold 0.12
    assert (p > 0).tolist() == [True, True, False]


def test_penalties():
    logits = _logits(2.0, -2.0, 1.0, 0.5)
    params = SamplingParams(temperature=0, repetition_penalty=2.0, frequency_penalty=0.5, presence_penalty=0.25)
    s = Sampler(params, prompt_len=1)
    out = s.process(logits, [0, 1, 1])       # token 0 only in the prompt; token 1 twice in the output
    assert out[0].item() == pytest.approx(1.0)                  # 2.0 / 2 (prompt tokens: repetition only)
    assert out[1].item() == pytest.approx(-4.0 - 2 * 0.5 - 0.25)  # -2 * 2, then frequency and presence
    assert out[2].item() == pytest.approx(1.0) and out[3].item() == pytest.approx(0.5)


def test_same_seed_same_samples_and_different_seed_differs():
    logits = torch.zeros(1000)
    a = [Sampler(SamplingParams(seed=42)).sample(logits, []) for _ in range(3)]
    draws = lambda seed: [s.sample(logits, []) for s in [Sampler(SamplingParams(seed=seed))] for _ in range(20)]
    assert draws(42) == draws(42)
    assert draws(42) != draws(43)
    assert len(set(a)) == 1


def test_sampling_frequencies_follow_distribution():
    probs = torch.tensor([0.5, 0.3, 0.2])
    s = Sampler(SamplingParams(seed=0))
    n = 6000
    counts = torch.bincount(torch.tensor([s.sample(torch.log(probs), []) for _ in range(n)]), minlength=3)
    # 5 standard deviations of a binomial: fails by chance with probability < 1e-5
    for c, p in zip(counts.tolist(), probs.tolist()):
        assert abs(c - n * p) < 5 * math.sqrt(n * p * (1 - p))


@pytest.mark.parametrize("params", [
    {"top_p": 5e-324},                     # underflows to 0 in float32: the best token must survive
    {"temperature": 1e-30},                # dividing by it overflows: treated as greedy
    {"temperature": 0.5, "repetition_penalty": 1e-38},   # penalised logits overflow to inf
])
def test_extreme_values_still_give_a_distribution(params):
    logits = torch.tensor([3.0, 1.0, -2.0, 0.5])
    sampler = Sampler(SamplingParams(seed=0, **params))
    probs = sampler.probs(logits, [0, 1])
    assert torch.isfinite(probs).all() and probs.sum().item() == pytest.approx(1.0)
    assert sampler.sample(logits, [0, 1]) in range(4)
