"""KV-cache eviction in the engine: on a tiny random llama, a budget at least the sequence changes
no token, caches stay within budget during long generations, a step after eviction computes what
the kept entries at their positions give (per head: what masking the evicted ones gives); on the
real model, next-token agreement with the full cache at half the cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hastelm import LLM, SamplingParams
from hastelm.engine.runner import ModelRunner, Row, teacher_forced_logits
from hastelm.errors import InvalidParameterError
from hastelm.kv.cache import KVCache
from hastelm.kv.policies import POLICIES, make_kv_config
from tiny_models import VOCAB, build_tiny


# ---- a tiny random llama --------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = tmp_path_factory.mktemp("tiny-llama-kv")
    build_tiny("llama", path, seed=3)
    return path


@pytest.fixture(scope="module")
def plain(folder: Path) -> LLM:
    return LLM(str(folder), dtype="float32", context_length=512, max_batch=2)


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB - 44, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


GREEDY = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)


@pytest.mark.parametrize("budget", [200, 1.0])
@pytest.mark.parametrize("name", list(POLICIES))
def test_a_budget_at_least_the_sequence_changes_no_token(folder: Path, plain: LLM, name: str, budget) -> None:
    prompts = [_ids(30, 1), _ids(45, 2)]
    want = [c.token_ids for c in plain.generate(prompts, GREEDY)]
    llm = LLM(str(folder), dtype="float32", context_length=512, max_batch=2, kv_policy=name, kv_budget=budget)
    assert [c.token_ids for c in llm.generate(prompts, GREEDY)] == want
    assert llm.scheduler.runner.kv.compressions == 0


@pytest.mark.parametrize("name", list(POLICIES))
def test_the_cache_stays_within_budget_during_a_long_generation(folder: Path, name: str) -> None:
    budget, interval, prompt = 48, 8, _ids(70, 3)
    llm = LLM(str(folder), dtype="float32", context_length=512, max_batch=2, kv_policy=name, kv_budget=budget,
              kv_interval=interval)
    cache = llm.scheduler.cache
    made = 0
    for step in llm.stream(prompt, SamplingParams(temperature=0, max_tokens=150, ignore_eos=True)):
        made += len(step.tokens)
        assert cache.live(0) <= budget + interval
        if name in ("streamingllm", "h2o", "snapkv"):           # one length for every column
            assert cache.length(0) <= budget + interval
        if step.finish_reason is None:
            assert cache.seen(0) == len(prompt) + made - 1      # the newest token is still pending
    assert made == 150 and llm.scheduler.runner.kv.compressions >= 150 // interval


def test_a_step_after_eviction_equals_the_kept_tokens_at_their_positions(plain: LLM) -> None:
    """StreamingLLM keeps one set for all heads: layer 0's keys depend only on each token and its
    position, so a one-layer step over the kept cache must equal one over a fresh cache holding only
    the kept tokens at their original positions (RoPE distances included)."""
    model, ids = plain.model, _ids(41, 4)
    runner = ModelRunner(model, 128, kv_policy=make_kv_config("streamingllm", 16, interval=1))
    runner.extend(0, ids[:40], 0)
    assert runner.apply_kv_policy([0]) == 1 and runner.length(0) == 16
    kept = runner.cache.positions[0, :16].tolist()
    assert kept == [0, 1, 2, 3] + list(range(28, 40))
    got = runner.forward([Row(0, [ids[40]], 40)], layers=[0], last_only=True)
    fresh = ModelRunner(model, 128)
    fresh.forward([Row(0, [ids[p] for p in kept], positions=kept)], layers=[0])
    want = fresh.forward([Row(0, [ids[40]], 40)], layers=[0], last_only=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _hide(cache: KVCache, drop: torch.Tensor) -> None:
    """Mark `drop` `[layers, n, Hkv]` hidden in a full cache (attention's per-head mask)."""
    n = drop.shape[1]
    cache.hidden = torch.zeros((cache.num_layers, cache.num_slots, cache.capacity, cache.kv_heads), dtype=torch.bool)
    cache.hidden[:, 0, :n] = drop
    cache.packed[0], cache.masked[0] = n, True


@pytest.mark.parametrize("name", ["h2o", "snapkv", "adakv", "pyramidkv"])
def test_per_head_eviction_equals_masking_the_evicted_entries(plain: LLM, name: str) -> None:
    """Each (layer, head) column packed on its own computes what a full cache computes when the new
    query may not read the entries that column evicted."""
    model, ids = plain.model, _ids(81, 5)
    runner = ModelRunner(model, 128, kv_policy=make_kv_config(name, 40, interval=1))
    runner.extend(0, ids[:80], 0)
    assert runner.apply_kv_policy([0]) == 1
    pos, vis = runner.cache.entry_positions(0), runner.cache.visible(0)
    drop = torch.ones(model.config.num_hidden_layers, 80, model.n_kv, dtype=torch.bool)
    for layer in range(drop.shape[0]):
        for j in range(runner.length(0)):
            for h in range(model.n_kv):
                if vis is None or vis[layer, j, h]:
                    drop[layer, int(pos[layer, j, h]), h] = False
    assert 0 < int((~drop).sum()) < drop.numel()
    got = runner.forward([Row(0, [ids[80]], 80)], last_only=True)
    full = ModelRunner(model, 128)
    full.extend(0, ids[:80], 0)
    _hide(full.cache, drop)
    want = full.forward([Row(0, [ids[80]], 80)], last_only=True)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_hiding_one_set_from_every_head_equals_evicting_it(plain: LLM) -> None:
    """The per-head mask itself, against a plain compaction of the same entries."""
    model, ids = plain.model, _ids(61, 6)
    keep = list(range(0, 60, 3))
    evicted = ModelRunner(model, 128)
    evicted.extend(0, ids[:60], 0)
    evicted.cache.evict(keep, 0)
    masked = ModelRunner(model, 128)
    masked.extend(0, ids[:60], 0)
    drop = torch.ones(model.config.num_hidden_layers, 60, model.n_kv, dtype=torch.bool)
    drop[:, keep] = False
    _hide(masked.cache, drop)
    a = evicted.forward([Row(0, [ids[60]], 60)], last_only=True)
    b = masked.forward([Row(0, [ids[60]], 60)], last_only=True)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_policies_refuse_speculation_and_per_head_policies_sliding_windows(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidParameterError, match="plain decoding only"):
        LLM(str(folder), dtype="float32", kv_policy="snapkv", kv_budget=0.5, speculative="pld")
    llm = LLM(str(folder), dtype="float32", context_length=256, kv_policy="h2o", kv_budget=0.5)
    with pytest.raises(InvalidParameterError, match="plain decoding only"):
        llm.generate(_ids(10, 7), SamplingParams(max_tokens=4), speculative="pld")
    build_tiny("mistral", tmp_path / "mistral", seed=1)
    with pytest.raises(InvalidParameterError, match="sliding-window"):
        LLM(str(tmp_path / "mistral"), dtype="float32", kv_policy="snapkv", kv_budget=0.5)
    LLM(str(tmp_path / "mistral"), dtype="float32", kv_policy="streamingllm", kv_budget=0.5)


def test_fast_mode_runs_the_hooks_and_masks(folder: Path) -> None:
    """bf16 on the CPU kernels: queries come from the fused RoPE kernel's path, hidden heads fall
    back to torch attention; a budget over the sequence still changes nothing."""
    prompt = _ids(60, 8)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    base = LLM(str(folder), context_length=256)
    assert base.model.decode_kernel
    want = base.generate(prompt, params)[0].token_ids
    for name in ("snapkv", "h2o"):
        llm = LLM(str(folder), context_length=256, kv_policy=name, kv_budget=1.0)
        assert llm.generate(prompt, params)[0].token_ids == want
    ada = LLM(str(folder), context_length=256, kv_policy="adakv", kv_budget=48, kv_interval=4)
    assert len(ada.generate(prompt, params)[0].token_ids) == 30
    assert ada.scheduler.runner.kv.compressions > 0


# ---- the real model -------------------------------------------------------------------------
SECOND_TEXT = (
    " The notebooks were moved to the regional archive, where a young archivist named Ines spent a "
    "winter copying them into a database. She noticed that Tomas had not only written down the weather "
    "but also the birds he saw each day: the first swallows of spring, the gannets diving offshore in "
    "August, the flocks of geese that crossed the bay in late October. Matching his dates against modern "
    "surveys, she found that the swallows now arrived almost three weeks earlier than they had when he "
    "began. Her report was short and plain, but it travelled further than she expected. A school in the "
    "village asked her to speak, and the children, some of whom were the grandchildren of the ones who "
    "had visited Tomas, decided to keep a notebook of their own. Every morning one of them walked to the "
    "end of the spit, looked at the sky and the water, and wrote down what they saw. They argued about "
    "how to describe the clouds and whether a grey seal counted as a visitor or a neighbour. After a "
    "year the notebook was full, and after ten years there was a shelf of them in the school library, "
    "next to a photograph of the old keeper standing in his garden between the rocks. The harbour "
    "authority, which had once wanted to sell the keeper's house, turned it into a small museum, and on "
    "the first day of every spring the children climb the hundred and twelve steps to light the old "
    "lamp for one evening, so that the boats coming home can see it from far out at sea. Ines still "
    "visits every year, and she always brings a new notebook, because the old keeper believed that the "
    "most useful thing a person can do is to pay attention and write it down."
)


def test_eviction_at_half_the_cache_keeps_most_next_tokens(llm_fast) -> None:
    """~600 prompt tokens of prose, compressed to half by StreamingLLM and SnapKV, then 32 tokens
    teacher-forced: the greedy next token agrees with the full cache's most of the time."""
    from exactness_data import FIXED_TEXT

    model = llm_fast.model
    ids = llm_fast.tokenizer.encode(FIXED_TEXT + SECOND_TEXT)
    assert len(ids) >= 632, len(ids)
    prompt, follow = ids[:600], ids[600:632]
    want = teacher_forced_logits(model, prompt + follow)[599:631].argmax(-1)
    for name, floor in (("streamingllm", FLOORS["streamingllm"]), ("snapkv", FLOORS["snapkv"])):
        runner = ModelRunner(model, 700, kv_policy=make_kv_config(name, 0.5))
        first = runner.extend(0, prompt, 0)
        assert runner.apply_kv_policy([0]) == 1 and runner.length(0) == 300
        got = [int(first.argmax())]
        for i, tok in enumerate(follow[:-1]):
            got.append(int(runner.decode([0], [tok], [600 + i])[0].argmax()))
            runner.apply_kv_policy([0])
        agree = float((torch.tensor(got) == want).float().mean())
        assert agree >= floor, (name, agree)


# Measured on this 2-core CPU in the fast mode: 23/32 (StreamingLLM) and 24/32 (SnapKV) at half the
# cache (H2O 27/32, Ada-KV 25/32; SnapKV 30/32 at 0.9, so the prose leans on its first lines); a
# decode at wrong positions after the same eviction scores 9/32 and 15/32. 20/32 leaves three or
# four tokens of numeric slack either way and still fails broken positions or a wrong kept set.
FLOORS = {"streamingllm": 20 / 32, "snapkv": 20 / 32}
