"""Float32 exactness on the real default model (SmolLM2-135M Q4_1).

Two oracles: transformers loading the same GGUF file in float32 (logits and 128-token greedy
continuations), and hastelm's own cache-free reference forward (hastelm/models/reference.py),
against which every fast path of `Transformer.forward` is checked: prefill + incremental decode
with rollback, batched multi-slot steps over different lengths, draft trees with compaction, and
layer subsets. The fast-path checks also run on a tiny random gemma3 whose sliding window is
shorter than the sequences.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from exactness_data import FIXED_TEXT, PROMPTS, greedy, prompt_ids
from hastelm.models.loader import read_model_files
from hastelm.models.reference import ReferenceModel
from hastelm.models.transformer import Transformer
from hastelm.engine.runner import ModelRunner, Row, teacher_forced_logits
from tiny_models import build_tiny

LOGIT_ATOL = 1e-3      # float32 logits of magnitude ~20, summed over 30 layers in another op order


@pytest.fixture(scope="module")
def hf_smollm(smollm_path: Path) -> Any:
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(smollm_path.parent), gguf_file=smollm_path.name, dtype=torch.float32)
    model.generation_config.eos_token_id = None     # fixed-length continuations, as ignore_eos
    return model.eval()


def _hf_logits(model: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _logits(model: Transformer, ids: list[int]) -> torch.Tensor:
    return teacher_forced_logits(model, ids).cpu()


def test_logits_match_transformers(llm_f32: Any, hf_smollm: Any) -> None:
    texts = [prompt_ids(llm_f32, p) for p in PROMPTS[:2]] + [llm_f32.encode_prompt(FIXED_TEXT)]
    worst = 0.0
    for ids in texts:
        ours, theirs = _logits(llm_f32.model, ids), _hf_logits(hf_smollm, ids)
        assert ours.shape == theirs.shape
        worst = max(worst, (ours - theirs).abs().max().item())
    print(f"\nSmolLM2 float32 logits vs transformers (same GGUF): max |diff| = {worst:.2e}")
    assert worst < LOGIT_ATOL


def test_greedy_128_matches_transformers(llm_f32: Any, hf_smollm: Any) -> None:
    """Our 128-token greedy continuation, fed to transformers in one teacher-forced forward: at every
    position transformers' argmax is our next token. By induction over the positions this is
    transformers' own greedy continuation (its generate() is the same argmax, one token at a time),
    and it costs one forward instead of 128 incremental steps."""
    for prompt in PROMPTS:
        ids = prompt_ids(llm_f32, prompt)
        ours = greedy(llm_f32, ids)
        assert len(ours) == 128
        theirs = _hf_logits(hf_smollm, ids + ours)[len(ids) - 1:-1].argmax(-1).tolist()
        assert ours == theirs, f"{prompt}: first difference at token {_first_diff(ours, theirs)}"


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


# ----------------------------------------------------------------------------- fast paths vs oracle

@pytest.fixture(scope="module", params=["smollm2", "tiny-gemma3"])
def oracle(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """(fast Transformer, reference model, vocab size, atol)."""
    if request.param == "smollm2":
        llm = request.getfixturevalue("llm_f32")
        config, source, _ = read_model_files(llm.path)
        return llm.model, ReferenceModel(config, source), llm.tokenizer.vocab_size, LOGIT_ATOL
    from hastelm import LLM

    folder = tmp_path_factory.mktemp("tiny-gemma3")
    build_tiny("gemma3", folder)
    llm = LLM(str(folder), dtype="float32", context_length=256)
    config, source, _ = read_model_files(folder)
    return llm.model, ReferenceModel(config, source), 257, 1e-4


def _random_ids(n: int, vocab: int, seed: int) -> list[int]:
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _close(got: torch.Tensor, want: torch.Tensor, atol: float) -> None:
    torch.testing.assert_close(got.cpu(), want.cpu(), atol=atol, rtol=0)   # the model may run on a GPU


def test_incremental_decode_and_rollback(oracle: tuple) -> None:
    model, ref, vocab, atol = oracle
    ids = _random_ids(30, vocab, 1)
    runner = ModelRunner(model, 64)
    k = 11
    outs = [runner.forward([Row(0, ids[:k], 0)])[0]]
    for i in range(k, len(ids)):
        outs.append(runner.decode([0], [ids[i]], [i]))
    _close(torch.cat(outs), ref.forward(ids), atol)
    # speculation rollback: drop the last 4 entries and continue with other tokens
    runner.cache.trim(4)
    other = _random_ids(4, vocab, 2)
    got = runner.forward([Row(0, other, 26)])[0]
    _close(got, ref.forward(ids[:26] + other)[-4:], atol)


def test_batched_slots_with_different_lengths(oracle: tuple) -> None:
    model, ref, vocab, atol = oracle
    lengths = [5, 17, 26]
    seqs = [_random_ids(n + 3, vocab, 10 + s) for s, n in enumerate(lengths)]
    runner = ModelRunner(model, 64, slots=3)
    for s, n in enumerate(lengths):
        runner.forward([Row(s, seqs[s][:n], 0)])
    order = [2, 0, 1]      # batch rows need not follow slot order
    out = runner.forward([Row(s, seqs[s][lengths[s]:], lengths[s]) for s in order])
    for row, s in enumerate(order):
        _close(out[row], ref.forward(seqs[s])[-3:], atol)
    assert [runner.length(s) for s in range(3)] == [n + 3 for n in lengths]


def _tree(parents: list[int]) -> tuple[torch.Tensor, list[int], list[list[int]]]:
    """Mask (ancestor-or-self), depth and root-to-node path of each node of a parent-list tree."""
    paths: list[list[int]] = []
    for i, p in enumerate(parents):
        paths.append((paths[p] if p >= 0 else []) + [i])
    mask = torch.zeros(len(parents), len(parents), dtype=torch.bool)
    for i, path in enumerate(paths):
        mask[i, path] = True
    return mask, [len(p) - 1 for p in paths], paths


def test_tree_mask_and_compaction(oracle: tuple) -> None:
    model, ref, vocab, atol = oracle
    trees = [[-1, 0, 0, 1, 1, 2, 5], [-1, 0, 1, 2, 0, 4, 0]]     # one tree shape per slot
    prefix_len = 20
    runner = ModelRunner(model, 64, slots=2)
    prefixes = [_random_ids(prefix_len, vocab, 20 + s) for s in range(2)]
    for s in range(2):
        runner.forward([Row(s, prefixes[s], 0)])
    built = [_tree(parents) for parents in trees]
    nodes = [_random_ids(len(t), vocab, 30 + s) for s, t in enumerate(trees)]
    out = runner.forward([Row(s, nodes[s], positions=[prefix_len + d for d in b[1]], mask=b[0])
                          for s, b in enumerate(built)])
    for s, (_, _, paths) in enumerate(built):
        for i, path in enumerate(paths):
            want = ref.forward(prefixes[s] + [nodes[s][j] for j in path])[-1]
            _close(out[s, i], want, atol)
    # keep the accepted path of slot 0 (nodes 0, 2, 5, 6) and decode one more token after it
    path = built[0][2][6]
    runner.cache.keep_tail(prefix_len, path, slot=0)
    accepted = prefixes[0] + [nodes[0][j] for j in path]
    nxt = _random_ids(1, vocab, 40)
    got = runner.decode([0], nxt, [len(accepted)])[0]
    _close(got, ref.forward(accepted + nxt)[-1], atol)


def test_layer_subset(oracle: tuple) -> None:
    model, ref, vocab, atol = oracle
    ids = _random_ids(12, vocab, 50)
    layers = list(range(len(model.layers) // 2))
    out = teacher_forced_logits(model, ids, layers)
    _close(out, ref.forward(ids, layers=layers), atol)
