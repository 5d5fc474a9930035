"""The static-shape step (hastelm/gpu/static_step.py) and its CUDA-graph replay (gpu/graphs.py),
reached through the `ModelRunner` as the engine reaches it.

On the CPU, in float32, a runner whose one-token rows and small trees go through `GraphDecoder`
(eagerly, without CUDA) computes what the plain runner (`Transformer.forward`) does: decode rows
in different slots at different lengths, draft trees beside chains of another length, padding,
buckets and split batches. On a GPU, graph replay equals the eager static step, and greedy
decoding through the graphs follows eager bf16 decoding. `HASTELM_GPU_MODEL` names the model for
the GPU tests (else the packaged default model, else a tiny random llama).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hastelm.engine.runner import ModelRunner, Row
from hastelm.gpu.graphs import GraphDecoder, length_buckets
from hastelm.gpu.static_step import StaticDecodeStep, supports
from hastelm.models.loader import load_model
from hastelm.models.transformer import Transformer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
LENGTHS = {0: 7, 2: 19, 3: 40}       # prompt length per slot: rows of one batch at different lengths


def _ids(n: int, seed: int, vocab: int) -> list[int]:
    return torch.randint(0, min(vocab, 257), (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _runner(model: Transformer, graphs: bool, buckets: tuple[int, ...] | None = None,
            replay: bool | None = None) -> ModelRunner:
    """A runner over 4 slots holding LENGTHS' prompts; with `graphs`, its steps go through a
    GraphDecoder (`buckets`: its batch buckets; `replay` False: the static step run eagerly)."""
    runner = ModelRunner(model, 512, slots=4, cuda_graphs=graphs)
    if graphs and (buckets or replay is not None):
        runner._graphs = GraphDecoder(model, runner.cache, **({"batch_buckets": buckets} if buckets else {}),
                                      use_graphs=replay)
    runner.forward([Row(s, _ids(n, s, model.config.vocab_size), 0) for s, n in LENGTHS.items()], last_only=True)
    return runner


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * want.abs().max().item())


def _check_decode(model: Transformer, slots: list[int], rtol: float = 1e-5) -> None:
    ref, fast = _runner(model, False), _runner(model, True)
    tokens = [11 + 5 * b for b in range(len(slots))]
    positions = [LENGTHS[s] for s in slots]
    _close(fast.decode(slots, tokens, positions), ref.decode(slots, tokens, positions), rtol)
    for s in slots:
        n = LENGTHS[s] + 1
        assert fast.length(s) == ref.length(s) == n
        _close(fast.cache.keys[-1][s, :n], ref.cache.keys[-1][s, :n], rtol)
        _close(fast.cache.values[-1][s, :n], ref.cache.values[-1][s, :n], rtol)


# ---- CPU: the static step against the eager forward ----------------------------------------------
@pytest.fixture(scope="module")
def smollm(llm_f32) -> Transformer:
    return llm_f32.model


@pytest.mark.parametrize("slots", [[2], [3, 0, 2]], ids=["B1", "B3"])
def test_graph_decode_matches_forward_real_model(smollm: Transformer, slots: list[int]) -> None:
    assert supports(smollm)
    _check_decode(smollm, slots)


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral", "gemma3"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Transformer]:
    pytest.importorskip("transformers")
    from tiny_models import build_tiny

    folder = tmp_path_factory.mktemp(request.param)
    build_tiny(request.param, folder)
    return request.param, load_model(folder, "float32").model


def test_graph_decode_matches_forward_tiny(tiny: tuple[str, Transformer]) -> None:
    arch, model = tiny
    if arch in ("mistral", "gemma3"):     # sliding windows, q/k norms: declined, not miscomputed
        assert not supports(model)
        with pytest.raises(ValueError):
            StaticDecodeStep(model, model.new_cache(64))
        return
    assert supports(model)
    _check_decode(model, [0])
    _check_decode(model, [3, 0, 2])


def test_tree_and_chain_rows_through_the_graph_step(smollm: Transformer) -> None:
    """A draft tree (5 nodes) beside a 3-token chain: the token bucket's padding and the tree mask
    give the plain forward's logits, and the padding leaves the cache."""
    parents = [-1, 0, 0, 1, 2]
    mask = torch.zeros(5, 5, dtype=torch.bool)
    depth = []
    for i, p in enumerate(parents):
        mask[i] = mask[p] if p >= 0 else False
        mask[i, i] = True
        depth.append(0 if p < 0 else depth[p] + 1)
    rows = [Row(3, [5, 6, 7, 8, 9], positions=[LENGTHS[3] + d for d in depth], mask=mask),
            Row(0, [10, 11, 12], LENGTHS[0])]
    ref, fast = _runner(smollm, False), _runner(smollm, True)
    want, got = ref.forward(rows), fast.forward(rows)
    _close(got[0], want[0], 1e-5)
    _close(got[1, :3], want[1, :3], 1e-5)
    assert (fast.length(3), fast.length(0)) == (LENGTHS[3] + 5, LENGTHS[0] + 3)
    assert bool((fast.cache.positions[0, LENGTHS[0] + 3:] == -1).all())


@pytest.mark.parametrize("buckets", [(1, 4), (2,)], ids=["padded", "split"])
def test_padded_and_split_batches_follow_eager_greedy(smollm: Transformer, buckets: tuple[int, ...]) -> None:
    """3 rows padded to a bucket of 4, or split over buckets of 2: 8 greedy steps as the plain runner."""
    slots, first = [3, 0, 2], [5, 6, 7]

    def greedy(runner: ModelRunner) -> list[list[int]]:
        toks, out = first, []
        for i in range(8):
            toks = runner.decode(slots, toks, [LENGTHS[s] + i for s in slots]).argmax(-1).tolist()
            out.append(toks)
        return out

    assert greedy(_runner(smollm, True, buckets, replay=False)) == greedy(_runner(smollm, False))


def test_buckets() -> None:
    assert length_buckets(2048) == [256, 512, 1024, 2048]
    assert length_buckets(300) == [256, 300] and length_buckets(100) == [100]


# ---- CUDA: graph replay ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory: pytest.TempPathFactory) -> Transformer:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from hastelm.errors import ModelLoadError
    from hastelm.models.registry import resolve_model

    path: Path | str | None = os.environ.get("HASTELM_GPU_MODEL") or None
    if path is None:
        try:
            path = resolve_model("smollm2-135m")
        except ModelLoadError:
            from tiny_models import build_tiny
            path = tmp_path_factory.mktemp("tiny_llama")
            build_tiny("llama", path)
    print(f"\nGPU tests on {path}")
    return load_model(path, "bfloat16", "cuda").model


@cuda
def test_graph_replay_equals_eager_static_step(gpu_model: Transformer) -> None:
    slots = [3, 0, 2]
    replayed, eager = _runner(gpu_model, True), _runner(gpu_model, True, replay=False)
    for i, tokens in enumerate(([9, 8, 7], [4, 5, 6])):    # captured on the first call, replayed after
        positions = [LENGTHS[s] + i for s in slots]
        got, want = replayed.decode(slots, tokens, positions), eager.decode(slots, tokens, positions)
        _close(got, want, 1e-2)
        print(f"replay {i}: max |graph - eager| = {(got - want).abs().max().item():.2e}")


@cuda
def test_graph_greedy_follows_eager_bf16(gpu_model: Transformer) -> None:
    """32 greedy tokens from eager bf16 decoding; the graph path, fed the same tokens (teacher
    forcing, so one early flip cannot cascade), picks the same argmax at >= 95% of steps."""
    ref, fast = _runner(gpu_model, False), _runner(gpu_model, True)
    tokens = [5]
    for i in range(32):
        tokens.append(int(ref.decode([2], [tokens[-1]], [LENGTHS[2] + i])[0].argmax()))
    picked = [int(fast.decode([2], [t], [LENGTHS[2] + i])[0].argmax()) for i, t in enumerate(tokens[:-1])]
    agree = sum(a == b for a, b in zip(picked, tokens[1:])) / 32
    print(f"graph vs eager bf16 greedy argmax agreement: {agree:.3f}")
    assert agree >= 0.95


@cuda
def test_graph_rows_trees_and_capture_all(gpu_model: Transformer) -> None:
    slots, tokens = [3, 0, 2], [5, 6, 7]
    positions = [LENGTHS[s] for s in slots]
    ref, fast = _runner(gpu_model, False), _runner(gpu_model, True)
    want, got = ref.decode(slots, tokens, positions), fast.decode(slots, tokens, positions)
    _close(got, want, 0.05)                 # bf16, other kernels than the eager forward's
    alone = _runner(gpu_model, True).decode([2], [7], [LENGTHS[2]])
    _close(alone[0], got[2], 0.05)
    chain = [Row(0, [1, 2, 3, 4], LENGTHS[0] + 1), Row(2, [5, 6], LENGTHS[2] + 1)]
    _close(fast.forward(chain)[0], ref.forward(chain)[0], 0.05)
    warm = _runner(gpu_model, True)
    warm.cache.reset(1)
    warm._graph_decoder().capture_all((1, 4))          # every bucket up front, then decoding goes on
    _close(warm.decode(slots, tokens, positions), got, 0.05)
