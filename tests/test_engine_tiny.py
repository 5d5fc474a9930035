"""The engine core on a tiny random llama built in memory (no real model needed): the runner's
batch descriptions, the KV cache's prefix copy, the scheduler's shared prompts, and model-running
proposers, each checked against the plain path."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hastelm import LLM, SamplingParams
from hastelm.decoding.speculative import Controller, SpeculativeDecoding
from hastelm.decoding.speculative.proposers.draft_model import DraftModel
from hastelm.decoding.speculative.proposers.layerskip import LayerSkip
from hastelm.engine.runner import ModelRunner, Row, teacher_forced_logits
from tiny_models import VOCAB, build_tiny

ATOL = 2e-5


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LLM:
    folder: Path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny("llama", folder, seed=3)
    return LLM(str(folder), dtype="float32", context_length=128, max_batch=4)


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def test_rows_of_different_lengths_compute_as_alone_and_padding_leaves_the_cache(tiny: LLM) -> None:
    prompts = [_ids(n, seed) for seed, n in enumerate((5, 17, 11))]
    runner = ModelRunner(tiny.model, 64, slots=3)
    out = runner.forward([Row(s, ids, 0) for s, ids in enumerate(prompts)])
    assert out.shape[:2] == (3, 17)
    for s, ids in enumerate(prompts):
        torch.testing.assert_close(out[s, :len(ids)], teacher_forced_logits(tiny.model, ids), atol=ATOL, rtol=0)
        assert runner.length(s) == len(ids)
        assert runner.cache.positions[s, :len(ids)].tolist() == list(range(len(ids)))
        assert bool((runner.cache.positions[s, len(ids):] == -1).all())
    last = runner.forward([Row(s, [7], len(ids)) for s, ids in enumerate(prompts)], last_only=True)
    for s, ids in enumerate(prompts):
        torch.testing.assert_close(last[s], teacher_forced_logits(tiny.model, ids + [7])[-1], atol=ATOL, rtol=0)


def test_rows_that_cannot_be_padded_run_one_by_one(tiny: LLM) -> None:
    """Near the end of the context a short row cannot take the longest row's padding."""
    runner = ModelRunner(tiny.model, 20, slots=2)
    a, b = _ids(18, 1), _ids(4, 2)
    runner.forward([Row(0, a[:16], 0)])
    out = runner.forward([Row(0, a[16:], 16), Row(1, b, 0)], last_only=True)
    torch.testing.assert_close(out[0], teacher_forced_logits(tiny.model, a)[-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1], teacher_forced_logits(tiny.model, b)[-1], atol=ATOL, rtol=0)
    assert (runner.length(0), runner.length(1)) == (18, 4)


def test_a_tree_row_beside_a_chain_row(tiny: LLM) -> None:
    """Node i of a tree sees its ancestors only: its logits are those of its root-to-node path."""
    prefix = _ids(9, 4)
    parents = [-1, 0, 0, 1, 2]                          # root, two children, a grandchild under each
    mask = torch.zeros(5, 5, dtype=torch.bool)
    paths: list[list[int]] = []
    for i, p in enumerate(parents):
        paths.append((paths[p] if p >= 0 else []) + [i])
        mask[i, paths[i]] = True
    nodes = _ids(5, 5)
    chain = _ids(3, 6)
    runner = ModelRunner(tiny.model, 32, slots=2)
    runner.forward([Row(0, prefix, 0), Row(1, prefix, 0)])
    out = runner.forward([Row(0, nodes, positions=[9 + len(p) - 1 for p in paths], mask=mask), Row(1, chain, 9)])
    for i, path in enumerate(paths):
        want = teacher_forced_logits(tiny.model, prefix + [nodes[j] for j in path])[-1]
        torch.testing.assert_close(out[0, i], want, atol=ATOL, rtol=0)
    torch.testing.assert_close(out[1, :3], teacher_forced_logits(tiny.model, prefix + chain)[-3:], atol=ATOL, rtol=0)
    assert (runner.length(0), runner.length(1)) == (14, 12)     # the chain's padding left the cache


def test_copy_prefix_gives_a_slot_another_slots_entries(tiny: LLM) -> None:
    runner = ModelRunner(tiny.model, 32, slots=2)
    ids = _ids(12, 7)
    runner.forward([Row(0, ids, 0)])
    runner.forward([Row(1, _ids(20, 8), 0)])            # the target slot held something longer
    runner.cache.copy_prefix(0, 1, 10)
    assert runner.length(1) == 10 and bool((runner.cache.positions[1, 10:] == -1).all())
    got = runner.decode([1], [ids[10]], [10])[0]
    torch.testing.assert_close(got, teacher_forced_logits(tiny.model, ids[:11])[-1], atol=ATOL, rtol=0)


def test_choices_of_one_prompt_prefill_it_once(tiny: LLM, monkeypatch: pytest.MonkeyPatch) -> None:
    """n samples of one prompt: the prompt runs once and is copied to the other slots; each
    sample is what it would be alone."""
    prompt = _ids(40, 9)
    params = [SamplingParams(temperature=0.9, seed=s, max_tokens=6, ignore_eos=True) for s in range(3)]
    tiny.clear_prefix_cache()
    alone = [tiny.generate([prompt], p, progress=False)[0].token_ids for p in params]
    tiny.clear_prefix_cache()
    rows = []
    forward = ModelRunner.forward

    def counting(self: ModelRunner, batch: list[Row], **kw: object) -> torch.Tensor:
        rows.extend(len(r.tokens) for r in batch)
        return forward(self, batch, **kw)

    monkeypatch.setattr(ModelRunner, "forward", counting)
    together = tiny.generate([prompt] * 3, params, progress=False)
    assert [c.token_ids for c in together] == alone
    assert sum(n for n in rows if n > 1) == len(prompt) - 1      # one prefill of ids[:-1], not three


def test_model_drafters_are_lossless_on_the_tiny_model(tiny: LLM) -> None:
    greedy = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompts = [_ids(n, 10 + n) for n in (6, 13)]
    tiny.clear_prefix_cache()
    plain = [c.token_ids for c in tiny.generate(prompts, greedy, progress=False)]
    for proposer in (DraftModel(tiny.model), LayerSkip(tiny.model, tiny.tokenizer, layers=[0])):
        strategy = SpeculativeDecoding(proposer.name, [proposer], Controller(fixed=3))
        done = tiny.generate(prompts, greedy, speculative=strategy, progress=False)
        assert [c.token_ids for c in done] == plain, proposer.name
        assert sum(c.proposed for c in done) > 0, f"{proposer.name}: no draft was verified"
    same = SpeculativeDecoding("self", [DraftModel(tiny.model)], Controller(fixed=3))
    done = tiny.generate(prompts, greedy, speculative=same, progress=False)
    assert sum(c.accepted for c in done) >= 0.9 * sum(c.proposed for c in done)   # the target drafting for itself
