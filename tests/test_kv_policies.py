"""KV-cache eviction (hastelm/kv/policies): every policy's choice equals a slow reference written
from its paper (tests/kv_references.py) on small random tensors, through the cache and the
compressor the runner uses; on a tiny random llama, a budget at least the sequence changes no
token, caches stay within budget, and a step after eviction computes what the kept entries at
their positions give; on the real model, next-token agreement with the full cache."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import kv_references as ref
from hastelm import LLM, SamplingParams
from hastelm.cli import app
from hastelm.engine.runner import ModelRunner, Row, teacher_forced_logits
from hastelm.errors import InvalidParameterError
from hastelm.kv.cache import KVCache
from hastelm.kv.policies import POLICIES, KVPolicyConfig, make_kv_config, parse_budget
from hastelm.kv.policies.base import Budget
from hastelm.kv.policies.compressor import KVCompressor
from hastelm.kv.policies.snapkv import SnapKV, pyramid_budgets
from hastelm.kv.policies.streaming import H2O, StreamingLLM
from tiny_models import VOCAB, build_tiny

SCALE = 0.35


# ---- the fast policies against the references ------------------------------------------------
def run_fast(policy, keys: torch.Tensor, queries: torch.Tensor, first_chunk: int, budget: int,
             interval: int) -> list[list[list[int]]]:
    """Drive a real KVCache + KVCompressor as the runner does; returns each column's visible
    positions, after checking every kept key is the one written at its position."""
    layers, n_tok, kv_heads, dim = keys.shape
    cache = KVCache(layers, kv_heads, dim, n_tok, slots=1, dtype=torch.float64)
    comp = KVCompressor(KVPolicyConfig(policy, Budget(budget), interval), cache, SCALE)
    for step in [list(range(first_chunk))] + [[t] for t in range(first_chunk, n_tok)]:
        start, n = cache.reserve(0, len(step)), len(step)
        for layer in range(layers):
            cache.keys[layer][0, start:start + n] = keys[layer, step]
            cache.values[layer][0, start:start + n] = keys[layer, step]
        cache.positions[0, start:start + n] = torch.tensor(step)
        comp.begin([0], [start], [n], [step])
        for layer in range(layers):
            comp.observe(layer, queries[layer, step][None])
        comp.end()
        cache.commit(0, n)
        comp.maintain(0)
    assert comp.compressions > 0
    pos, vis, n = cache.entry_positions(0), cache.visible(0), cache.length(0)
    assert cache.seen(0) == n_tok
    out = []
    for layer in range(layers):
        cols = []
        for h in range(kv_heads):
            live = [j for j in range(n) if vis is None or bool(vis[layer, j, h])]
            cols.append([int(pos[layer, j, h]) for j in live])
            for j in live:
                assert torch.equal(cache.keys[layer][0, j, h], keys[layer, int(pos[layer, j, h]), h])
        out.append(cols)
    return out


def positions_of(columns: list[list[ref.Entries]]) -> list[list[list[int]]]:
    return [[[p for p, _ in col] for col in layer] for layer in columns]


def random_qk(seed: int, layers: int = 2, n_tok: int = 64, kv_heads: int = 2, group: int = 2, dim: int = 8):
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(layers, n_tok, kv_heads, dim, generator=g, dtype=torch.float64)
    queries = torch.randn(layers, n_tok, kv_heads * group, dim, generator=g, dtype=torch.float64)
    return keys, queries


def reference(name: str, keys, queries, first_chunk: int, budget: int, interval: int, window: int):
    def compress(columns, scores, window_of):
        layers = len(columns)
        for layer in range(layers):
            for h, col in enumerate(columns[layer]):
                if name == "streamingllm":
                    columns[layer][h] = ref.streaming(col, budget, 4)
                elif name == "h2o":
                    columns[layer][h], scores[layer][h] = ref.h2o(col, scores[layer][h], budget)
                elif name == "snapkv":
                    columns[layer][h] = ref.snapkv(col, window_of(layer, h), budget, SCALE)
        if name == "pyramidkv":
            w = len(window_of(0, 0))
            cand = max(p for lay in columns for c in lay for p, _ in c) + 1 - w     # tokens seen
            budgets = ref.pyramid(budget - w, cand, layers)
            for layer in range(layers):
                columns[layer] = [ref.snapkv(col, window_of(layer, h), budgets[layer] + w, SCALE)
                                  for h, col in enumerate(columns[layer])]
        if name == "adakv":
            for layer in range(layers):
                columns[layer] = ref.adakv(columns[layer], [window_of(layer, h) for h in range(len(columns[layer]))],
                                           budget, SCALE)

    columns, _ = ref.simulate(keys, queries, first_chunk, budget, interval, compress, SCALE, window=window,
                              accumulate=name == "h2o")
    return positions_of(columns)


CASES = [  # policy, first chunk, budget, interval
    (StreamingLLM(), 30, 12, 3),
    (H2O(), 20, 12, 3),
    (SnapKV(window=8), 40, 16, 8),
    (SnapKV(name="pyramidkv", window=8, pyramid=True), 40, 20, 8),
    (SnapKV(name="adakv", window=8, adaptive=True), 40, 16, 8),
]


@pytest.mark.parametrize("policy,first_chunk,budget,interval", CASES, ids=[c[0].name for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_policy_keeps_what_the_reference_keeps(policy, first_chunk: int, budget: int, interval: int,
                                                    seed: int) -> None:
    keys, queries = random_qk(seed)
    fast = run_fast(policy, keys, queries, first_chunk, budget, interval)
    slow = reference(policy.name, keys, queries, first_chunk, budget, interval, policy.window)
    assert fast == slow


def test_adakv_gives_heads_different_budgets_and_pyramid_layers_different_ones() -> None:
    """The head- and layer-wise cases really hide entries (so the reference test covers masks)."""
    keys, queries = random_qk(5, layers=3)
    ada = run_fast(SnapKV(name="adakv", window=8, adaptive=True), keys, queries, 40, 16, 20)
    assert len({len(c) for c in ada[0]}) > 1
    pyr = run_fast(SnapKV(name="pyramidkv", window=8, pyramid=True), keys, queries, 40, 20, 20)
    assert len(pyr[0][0]) > len(pyr[2][0])
    assert sum(pyramid_budgets(12, 32, 3)) == 3 * 12


# ---- configuration and errors ----------------------------------------------------------------
def test_budgets_parse_as_ratio_or_tokens() -> None:
    assert parse_budget("0.25") == Budget(0.25) and parse_budget("512") == Budget(512)
    assert parse_budget(1.0).tokens(10) == 10 and parse_budget(0.25).tokens(10) == 3
    assert str(make_kv_config("snapkv", 0.25)) == "snapkv (budget 0.25, every 32 tokens)"


@pytest.mark.parametrize("policy,budget,fragment", [
    ("nope", 0.5, "unknown kv policy 'nope'"),
    ("snapkv", None, "needs a kv budget"),
    (None, 0.5, "kv budget needs a kv policy"),
    ("snapkv", 0.0, "ratio must be in (0, 1]"),
    ("snapkv", 1.5, "ratio must be in (0, 1]"),
    ("h2o", -3, "at least 1 token"),
    ("snapkv", "abc", "ratio in (0, 1] or a token count"),
    ("snapkv", 20, "below what snapkv always keeps"),
    ("streamingllm", 4, "below what streamingllm always keeps"),
])
def test_bad_values_are_one_line_errors(policy, budget, fragment: str) -> None:
    with pytest.raises(InvalidParameterError, match=None) as info:
        make_kv_config(policy, budget)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_the_command_line_rejects_bad_kv_values_in_one_line() -> None:
    result = CliRunner().invoke(app, ["generate", "--no-stats", "-m", "/nonexistent.gguf", "-p", "hi",
                                      "--kv-policy", "snapkv", "--kv-budget", "2.5"])
    assert result.exit_code != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "ratio must be in (0, 1]" in lines[0], result.stderr


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
