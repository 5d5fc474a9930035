"""The static-shape decode step (hastelm/gpu/static_step.py) and its CUDA-graph replay (gpu/graphs.py).

On the CPU, in float32, the static step computes what `Transformer.forward` does (the real default
model and tiny llama/qwen2 models), for one row and for rows in different slots with different
lengths, and `GraphDecoder` (eager without CUDA) pads, buckets and splits batches correctly. On a
GPU, graph replay equals the eager static step and greedy decoding through the graphs follows eager
bf16 decoding. `HASTELM_GPU_MODEL` names the model for the GPU tests (else the packaged default
model, else a tiny random llama).
"""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from hastelm.gpu.eager import commit_decode, eager_step, prefill, record_decode
from hastelm.gpu.graphs import GraphDecoder, length_buckets
from hastelm.gpu.static_step import StaticDecodeStep, supports
from hastelm.models.loader import load_model
from hastelm.models.transformer import Transformer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
LENGTHS = {0: 7, 2: 19, 3: 40}       # prompt length per slot: rows of one batch at different lengths


def _ids(n: int, seed: int, vocab: int) -> list[int]:
    return torch.randint(0, min(vocab, 257), (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def _filled_cache(model: Transformer, capacity: int = 512):
    cache = model.new_cache(capacity, slots=4)
    for slot, n in LENGTHS.items():
        prefill(model, cache, slot, _ids(n, slot, model.config.vocab_size))
    return cache


def _check_step(model: Transformer, slots: list[int], rtol: float = 1e-5) -> None:
    """One decode step of `slots` through the eager forward and through the static step, each on
    its own copy of the same cache: logits and the written keys/values agree."""
    cache = _filled_cache(model)
    ref_cache = copy.deepcopy(cache)
    tokens = [11 + 5 * b for b in range(len(slots))]
    ref = eager_step(model, ref_cache, slots, [[t] for t in tokens])
    step = StaticDecodeStep(model, cache)
    w = torch.tensor([cache.lengths[s] for s in slots])
    with torch.inference_mode():
        logits, ids = step(torch.tensor(tokens), w, torch.tensor(slots), w, length_buckets(cache.capacity)[0])
    scale = ref.abs().max().item()
    torch.testing.assert_close(logits, ref, rtol=rtol, atol=rtol * scale)
    assert ids.tolist() == logits.argmax(-1).tolist()
    for s, n in zip(slots, w.tolist()):
        for store, ref_store in ((cache.keys, ref_cache.keys), (cache.values, ref_cache.values)):
            torch.testing.assert_close(store[-1][s, :n + 1], ref_store[-1][s, :n + 1], rtol=rtol, atol=rtol)


# ---- CPU: the static step against the eager forward ----------------------------------------------
@pytest.fixture(scope="module")
def smollm(llm_f32) -> Transformer:
    return llm_f32.model


@pytest.mark.parametrize("slots", [[2], [3, 0, 2]], ids=["B1", "B3"])
def test_static_step_matches_forward_real_model(smollm: Transformer, slots: list[int]) -> None:
    assert supports(smollm)
    _check_step(smollm, slots)


@pytest.fixture(scope="module", params=["llama", "qwen2", "mistral", "gemma3"])
def tiny(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Transformer]:
    pytest.importorskip("transformers")
    from tiny_models import build_tiny

    folder = tmp_path_factory.mktemp(request.param)
    build_tiny(request.param, folder)
    return request.param, load_model(folder, "float32").model


def test_static_step_matches_forward_tiny(tiny: tuple[str, Transformer]) -> None:
    arch, model = tiny
    if arch in ("mistral", "gemma3"):     # sliding windows, q/k norms: declined, not miscomputed
        assert not supports(model)
        with pytest.raises(ValueError):
            StaticDecodeStep(model, model.new_cache(64))
        return
    assert supports(model)
    _check_step(model, [0])
    _check_step(model, [3, 0, 2])


def test_graph_decoder_pads_buckets_and_splits(smollm: Transformer) -> None:
    """GraphDecoder's host side on the CPU (no graphs): 3 rows padded to bucket 4, and the same
    rows split over buckets of 2, follow eager greedy decoding for 8 steps."""
    base = _filled_cache(smollm)
    slots = [3, 0, 2]
    first = [5, 6, 7]
    ref_cache = copy.deepcopy(base)
    want, toks = [], first
    for _ in range(8):
        toks = eager_step(smollm, ref_cache, slots, [[t] for t in toks]).argmax(-1).tolist()
        want.append(toks)
    for buckets in ((1, 4), (2,)):
        cache = copy.deepcopy(base)
        dec = GraphDecoder(smollm, cache, batch_buckets=buckets)
        got, toks = [], first
        for _ in range(8):
            positions, write = record_decode(cache, slots)
            toks = dec.decode_greedy(slots, toks, positions, write)
            commit_decode(cache, slots)
            got.append(toks)
        assert got == want, buckets
        logits = dec.decode(slots, [1, 2, 3], *record_decode(cache, slots))
        assert logits.shape == (3, smollm.config.vocab_size) and logits.dtype == torch.float32


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
    cache = _filled_cache(gpu_model)
    slots = [3, 0, 2]
    w = [cache.lengths[s] for s in slots]
    dec = GraphDecoder(gpu_model, cache)
    eager = GraphDecoder(gpu_model, cache, use_graphs=False)
    for rep, tokens in enumerate(([9, 8, 7], [4, 5, 6])):   # captured on the first call, replayed on new inputs
        got = dec.decode(slots, tokens, w, w)
        want = eager.decode(slots, tokens, w, w)
        torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2 * want.abs().max().item())
        print(f"replay {rep}: max |graph - eager| = {(got - want).abs().max().item():.2e}")


@cuda
def test_graph_greedy_follows_eager_bf16(gpu_model: Transformer) -> None:
    """32 greedy tokens from eager bf16 `Transformer.forward`; the graph path, fed the same tokens
    (teacher forcing, so one early flip cannot cascade), picks the same argmax at >= 95% of steps."""
    n = 32
    prompt = _ids(24, 1, gpu_model.config.vocab_size)
    ref_cache = gpu_model.new_cache(512)
    tok = prefill(gpu_model, ref_cache, 0, prompt).argmax().item()
    eager_tokens = [tok]
    for _ in range(n - 1):
        eager_tokens.append(eager_step(gpu_model, ref_cache, [0], [[eager_tokens[-1]]])[0].argmax().item())
    cache = gpu_model.new_cache(512)
    graph_tokens = [prefill(gpu_model, cache, 0, prompt).argmax().item()]
    dec = GraphDecoder(gpu_model, cache)
    for t in eager_tokens[:-1]:
        positions, write = record_decode(cache, [0])
        graph_tokens.append(dec.decode_greedy([0], [t], positions, write)[0])
        commit_decode(cache, [0])
    agree = sum(a == b for a, b in zip(graph_tokens, eager_tokens)) / n
    print(f"graph vs eager bf16 greedy argmax agreement: {agree:.3f}; identical: {graph_tokens == eager_tokens}")
    assert agree >= 0.95


@cuda
def test_graph_batch_of_three_slots(gpu_model: Transformer) -> None:
    base = _filled_cache(gpu_model)
    slots, tokens = [3, 0, 2], [5, 6, 7]
    ref_cache, cache = copy.deepcopy(base), copy.deepcopy(base)
    ref = eager_step(gpu_model, ref_cache, slots, [[t] for t in tokens])
    dec = GraphDecoder(gpu_model, cache)
    positions, write = record_decode(cache, slots)
    got = dec.decode(slots, tokens, positions, write)
    commit_decode(cache, slots)
    tol = 0.05 * ref.abs().max().item()      # bf16, other kernels than the eager forward's
    torch.testing.assert_close(got, ref, rtol=0.05, atol=tol)
    _same_choice(got, ref, tol)
    alone = GraphDecoder(gpu_model, copy.deepcopy(base)).decode([2], [7], [LENGTHS[2]], [LENGTHS[2]])
    torch.testing.assert_close(alone[0], got[2], rtol=0.05, atol=tol)
    # buckets of 2: the rows run as two replays of one graph (2 rows, then 1 padded to 2)
    split = GraphDecoder(gpu_model, copy.deepcopy(base), batch_buckets=(2,))
    ids = torch.tensor(split.decode_greedy(slots, tokens, positions, write), device=ref.device)
    assert (ref.gather(1, ids[:, None])[:, 0] >= ref.max(-1).values - tol).all()
    # every bucket captured up front (a slot is empty), then decoding goes on
    warm = GraphDecoder(gpu_model, copy.deepcopy(base), batch_buckets=(1, 4))
    warm.capture_all()
    assert len(warm._captured) == 2 * len(warm.key_buckets)
    torch.testing.assert_close(warm.decode(slots, tokens, positions, write), got, rtol=0.05, atol=tol)


def _same_choice(got: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """Each row's argmax is the reference's, or within `tol` of its top logit (a bf16 near-tie)."""
    picked = ref.gather(1, got.argmax(-1, keepdim=True))[:, 0]
    assert (picked >= ref.max(-1).values - tol).all(), (got.argmax(-1), ref.argmax(-1))
    print(f"batch of {len(ref)}: argmax equal in {(got.argmax(-1) == ref.argmax(-1)).sum().item()} rows")
