"""The batch-invariant bf16 mode (dtype="invariant", issue 18): its Triton kernels compute every
row with one fixed arithmetic, so a token's logits are the same bits from a decode step, a prompt
chunk, a batch or a draft-tree node, and greedy speculation equals plain decoding.

On CUDA the kernels run compiled; without CUDA they run through Triton's interpreter
(TRITON_INTERPRET=1), which checks the indexing, masking and compaction logic on the CPU. Tests
that need Triton skip when it is absent (CPU builds of torch come without it)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from hastelm import LLM, SamplingParams
from hastelm.engine.llm import resolve_mode
from hastelm.engine.runner import ModelRunner, Row
from hastelm.errors import InvalidParameterError
from hastelm.models.transformer import Transformer
from tiny_models import VOCAB, build_tiny

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
if not CUDA and "triton" not in sys.modules:
    # Triton's interpreter must be chosen before triton is first imported (its own library is
    # decorated then), so at collection, before any test (building a tiny model imports it)
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:        # decide now: a test that unsets the variable must not change it
        import triton  # noqa: F401
    except ImportError:
        pass


def _patch_interpreter() -> None:
    # triton 3.6's interpreter turns loop bounds into ints with int(ndarray of shape [1]), which
    # numpy >= 2.4 refuses; read the one element instead
    from triton.runtime import interpreter
    original = interpreter._patch_lang_tensor
    if getattr(original, "hastelm_patched", False):
        return

    def patched(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.hastelm_patched = True
    interpreter._patch_lang_tensor = patched


@pytest.fixture(scope="module")
def kernels() -> ModuleType:
    """The kernels module: compiled on CUDA, interpreted elsewhere."""
    triton = pytest.importorskip("triton")
    if not CUDA:
        if not triton.knobs.runtime.interpret or type(triton.language.zeros).__name__ != "InterpretedFunction":
            pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (run with TRITON_INTERPRET=1)")
        _patch_interpreter()
    from hastelm.kernels import triton_invariant
    return triton_invariant


# ---- the mode's checks ---------------------------------------------------------------------
def test_the_mode_is_named_and_refused_off_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_mode("invariant", torch.device("cuda")) == "invariant"
    build_tiny("llama", tmp_path / "m")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(InvalidParameterError, match="CUDA only"):
        LLM(str(tmp_path / "m"), dtype="invariant", device="cpu")


# ---- kernels -----------------------------------------------------------------------------
def _randn(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(DEVICE, torch.bfloat16)


def test_matmul_rows_do_not_depend_on_the_batch(kernels: ModuleType) -> None:
    # K and N not multiples of the blocks: the tails are masked the same way for every M
    x, w, b = _randn(37, 200, seed=1), _randn(130, 200, seed=2), _randn(130, seed=3)
    full = kernels.invariant_linear(x, w, b)
    for r in (0, 5, 36):
        assert torch.equal(kernels.invariant_linear(x[r:r + 1].clone(), w, b), full[r:r + 1])
    assert torch.equal(kernels.invariant_linear(x[3:20], w, b), full[3:20])    # a strided view, other M
    ref = x.double() @ w.double().T + b.double()
    # one bf16 rounding of the fp32 sums: relative 2^-8 (twice that in the interpreter, which truncates)
    torch.testing.assert_close(full.double(), ref, rtol=2 ** -7, atol=1e-3)
    wide = kernels.invariant_linear(x, w, None, torch.float32)
    assert wide.dtype == torch.float32
    torch.testing.assert_close(wide.double(), x.double() @ w.double().T, rtol=1e-5, atol=1e-4)


def test_rms_norm_rows_do_not_depend_on_the_batch(kernels: ModuleType) -> None:
    x, w = _randn(9, 576, seed=7), _randn(576, seed=8)
    full = kernels.invariant_rms_norm(x, w, 1e-5)
    for r in (0, 8):
        assert torch.equal(kernels.invariant_rms_norm(x[r:r + 1].clone(), w, 1e-5), full[r:r + 1])
    ref = x.double() * torch.rsqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * w.double()
    torch.testing.assert_close(full.double(), ref, rtol=2 ** -7, atol=1e-3)
    bare = kernels.invariant_rms_norm(x[:, :64], None, 1e-5)          # a strided view, no weight
    torch.testing.assert_close(bare.double(), torch.nn.functional.rms_norm(x[:, :64].double(), (64,), eps=1e-5),
                               rtol=2 ** -7, atol=1e-3)


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """float64 attention of q `[H, D]` over k, v `[n, Hkv, D]`."""
    group = q.shape[0] // k.shape[1]
    k, v = k.double().repeat_interleave(group, 1), v.double().repeat_interleave(group, 1)
    s = torch.einsum("hd,nhd->hn", q.double(), k) * scale
    return torch.einsum("hn,nhd->hd", s.softmax(-1), v)


def test_attention_rows_alone_batched_and_with_gaps(kernels: ModuleType) -> None:
    """A row's keys read compact from one slot, or scattered among hidden entries of another, with
    other rows in the launch or alone: the same bits, and float64 attention to bf16 accuracy."""
    H, Hkv, D, n, scale = 6, 2, 64, 150, 0.125           # GQA groups of 3; 150 keys = 3 blocks
    keys, values = _randn(3, 400, Hkv, D, seed=4), _randn(3, 400, Hkv, D, seed=5)
    q = _randn(4, H, D, seed=6)
    gaps = torch.arange(n) * 2 + 7                  # slot 1: the same keys at odd places, hidden between
    keys[1, gaps], values[1, gaps] = keys[0, :n], values[0, :n]
    index = torch.zeros(4, 320, dtype=torch.int32)
    index[0, :n] = torch.arange(n)
    index[1, :n] = gaps.int()
    index[2, :40] = torch.arange(40)
    index[3, :n] = torch.arange(n)
    lengths = torch.tensor([n, n, 40, n], dtype=torch.int32)
    slots = torch.tensor([0, 1, 2, 0], dtype=torch.int32)
    q[1], q[3] = q[0], q[0]
    to = {"device": DEVICE}
    out = kernels.invariant_attention(q, keys, values, index.to(**to), lengths.to(**to), slots.to(**to), scale)
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[3])
    for r in range(4):
        alone = kernels.invariant_attention(q[r:r + 1].clone(), keys, values, index[r:r + 1, :160].to(**to),
                                            lengths[r:r + 1].to(**to), slots[r:r + 1].to(**to), scale)
        assert torch.equal(alone[0], out[r])
        sel = index[r, :lengths[r]].long().to(DEVICE)
        want = _reference(q[r], keys[slots[r].item(), sel], values[slots[r].item(), sel], scale)
        torch.testing.assert_close(out[r].double(), want, rtol=0, atol=2e-2)


# ---- the model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for arch in ("llama", "mistral", "qwen2", "gemma3"):
        out[arch] = tmp_path_factory.mktemp(f"tiny-{arch}")
        build_tiny(arch, out[arch], seed=3)
    return out


def _invariant(folder: Path) -> LLM:
    return LLM(str(folder), dtype="invariant", device=str(DEVICE), context_length=128, max_batch=4)


def _ids(n: int, seed: int) -> list[int]:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


class Decoder:
    """Reference logits from one-token decode steps, the form every other must equal: a trunk
    decoded once, each continuation from a copy of its cache (the tests' cost is interpreted steps)."""

    def __init__(self, model: Transformer, trunk: list[int], branches: int) -> None:
        self.runner = ModelRunner(model, 64, slots=branches + 1, cuda_graphs=False)
        self.trunk = self.steps(0, trunk, 0)
        self.n, self.used = len(trunk), 0

    def steps(self, slot: int, ids: list[int], start: int) -> torch.Tensor:
        return torch.stack([self.runner.forward([Row(slot, [t], start + i)], last_only=True)[0]
                            for i, t in enumerate(ids)])

    def branch(self, ids: list[int]) -> torch.Tensor:
        """The logits of each of `ids` decoded after the trunk."""
        self.used += 1
        self.runner.cache.copy_prefix(0, self.used, self.n)
        return self.steps(self.used, ids, self.n)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "gemma3"])
def test_a_tokens_logits_are_the_same_bits_in_every_kind_of_forward(
        kernels: ModuleType, tiny_folders: dict[str, Path], arch: str) -> None:
    """Prefill in one chunk, a batch with a longer row, a draft tree beside a chain: each token's
    logits equal those of decoding it step by step (sliding windows, biases, q/k norms included)."""
    model = _invariant(tiny_folders[arch]).model
    ids, other = _ids(12, 1), _ids(15, 2)           # longer than the tiny models' sliding window (8)
    ref = Decoder(model, ids, 3)
    runner = ModelRunner(model, 64, slots=2, cuda_graphs=False)
    assert torch.equal(runner.forward([Row(0, ids, 0)])[0], ref.trunk)
    batched = runner.forward([Row(0, [5, 6], 12), Row(1, other, 0)])      # row 0 padded to 15
    assert torch.equal(batched[0, :2], ref.branch([5, 6]))
    # a tree after the prefix: root 7, children 8 and 9, grandchild 10 under 9; beside it a chain
    runner.cache.trim(2, 0)
    parents, nodes = [-1, 0, 0, 2], [7, 8, 9, 10]
    mask = torch.zeros(4, 4, dtype=torch.bool)
    paths: list[list[int]] = []
    for i, p in enumerate(parents):
        paths.append((paths[p] if p >= 0 else []) + [i])
        mask[i, paths[i]] = True
    out = runner.forward([Row(0, nodes, positions=[12 + len(p) - 1 for p in paths], mask=mask),
                          Row(1, [3], 15)])
    left, right = ref.branch([7, 8]), ref.branch([7, 9, 10])
    for i, want in enumerate([left[0], left[1], right[1], right[2]]):
        assert torch.equal(out[0, i], want), f"tree node {i}"
    chain = Decoder(model, other + [3], 0).trunk
    assert torch.equal(batched[1], chain[:15])
    assert torch.equal(out[1, 0], chain[15])


def test_greedy_speculation_equals_plain_decoding(kernels: ModuleType, tiny_folders: dict[str, Path]) -> None:
    llm = _invariant(tiny_folders["llama"])
    prompts = [[1, 2, 3, 4] * 4, _ids(9, 3) * 2, _ids(12, 4)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    plain = llm.generate(prompts, params)
    spec = llm.generate(prompts, params, speculative="pld@4")
    assert [c.token_ids for c in spec] == [c.token_ids for c in plain]
    assert sum(c.accepted for c in spec) > 0          # drafts were verified and accepted


@pytest.mark.skipif(not CUDA, reason="CUDA graphs exist only on CUDA")
def test_graphs_decline_invariant_models(kernels: ModuleType, tiny_folders: dict[str, Path]) -> None:
    """Decode steps must not replay CUDA graphs of the bf16 step (SDPA, cuBLAS): the runner then
    sends them through the invariant forward like every other row."""
    from hastelm.gpu.graphs import supports
    model = LLM(str(tiny_folders["llama"]), dtype="invariant", device="cuda", context_length=128).model
    assert not supports(model)


CODE_PROMPTS = [
    'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
    "def is_palindrome(s: str) -> bool:\n",
    "def merge_sorted(a: list[int], b: list[int]) -> list[int]:\n    result = []\n",
    "class Stack:\n    def __init__(self):\n",
]


@pytest.fixture(scope="module")
def real_llm(request: pytest.FixtureRequest) -> LLM:
    """SmolLM2 in the invariant mode: HASTELM_GPU_MODEL (as scripts/gpu_check.sh sets it from
    MODEL), else the packaged default model."""
    path = os.environ.get("HASTELM_GPU_MODEL") or request.getfixturevalue("smollm_path")
    return LLM(str(path), dtype="invariant", device="cuda", context_length=1024, max_batch=8)


@pytest.mark.real_model
@pytest.mark.skipif(not CUDA, reason="the real model in the invariant mode needs CUDA")
@pytest.mark.parametrize("method", ["pld", "auto"])
def test_real_model_speculation_equals_plain_decoding(kernels: ModuleType, real_llm: LLM, method: str) -> None:
    llm = real_llm
    params = SamplingParams(temperature=0, max_tokens=96)
    plain = [c.token_ids for c in llm.generate(CODE_PROMPTS, params)]
    spec = llm.generate(CODE_PROMPTS, params, speculative=method)
    assert [c.token_ids for c in spec] == plain
    assert sum(c.accepted for c in spec) > 0


# ---- the benchmark's report (no GPU needed) ---------------------------------------------------
def test_the_benchmark_reports_equality_and_cost() -> None:
    from hastelm.kernels import triton_invariant_bench as bench
    assert bench._first_difference([1, 2, 3], [1, 2, 3]) is None
    assert bench._first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert bench._first_difference([1, 2], [1, 2, 3]) == 2

    def mode(tg: float, equal: float) -> dict:
        spec = {"tokens_per_s": 2 * tg, "equal": equal, "first_difference": [None, 7], "accepted_per_step": 1.5}
        return {"tg_tokens_per_s": tg, "plain": {"tokens_per_s": tg}, "pld": spec, "auto": spec, "total_s": 9.0}

    text = bench.table({"model": "m", "device": "gpu", "torch": "x", "tokens": 128,
                        "modes": {"bfloat16": mode(400.0, 0.6), "invariant": mode(100.0, 1.0)}})
    assert "invariant / bfloat16 decode speed: 0.25x" in text
    assert "bfloat16 pld: first differing token per prompt [None, 7]" in text
    assert "invariant pld: first" not in text
    if not CUDA:
        assert bench.main(["--model", "unused"]) == 2          # needs CUDA: one line, exit 2
