"""hastelm's CPU kernels (the W4A8 int4 and W8A16 int8 GEMMs, decode attention): accuracy against a float64
reference, bit-identical rows for any batch size or thread count, the Int4Linear/Int8Linear
integration, and the torch fallback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

from hastelm.kernels import cpu as kernels
from hastelm.formats.ggml_blocks import int4_groups
from hastelm.quant.linear import Int4Linear, Int8Linear

U_FP32 = 2.0 ** -24   # unit roundoff of fp32 accumulation
U_BF16 = 2.0 ** -8    # unit roundoff of rounding to bf16 (7 stored mantissa bits)


def _cpu_has_bf16() -> bool:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    return " avx512_bf16" in text and " avx512bw" in text and " avx512_vnni" in text


needs_kernel = pytest.mark.skipif(not _cpu_has_bf16(), reason="CPU lacks AVX512-BF16 or AVX512-VNNI")


def gguf_groups(ggml_type: T, rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int4_groups of random GGUF blocks with realistic fp16 scales (1e-3..3e-2)."""
    rng = np.random.default_rng(seed)
    block, size = GGML_QUANT_SIZES[ggml_type]
    n = rows * cols // block
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    for off in {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q4_K: (0, 2)}[ggml_type]:
        raw[:, off:off + 2] = rng.uniform(1e-3, 3e-2, n).astype("<f2").view(np.uint8).reshape(n, 2)
    return int4_groups(raw.reshape(rows, -1), ggml_type, (rows, cols))


def dequant(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    return (q.double().view(*scale.shape, 32) * scale.double()[..., None] + offset.double()[..., None]).flatten(1)


@pytest.fixture(scope="module")
def kernel():
    mod = kernels.native()
    if mod is None:
        pytest.skip("int4 kernel unavailable (HASTELM_NO_KERNELS set, or no compiler)")
    return mod


@needs_kernel
def test_the_install_built_the_kernels(tmp_path: Path) -> None:
    """setup.py built hastelm.kernels._cpu_kernels at install, and a fresh process uses it as is:
    nothing compiles, nothing is written to the kernel cache."""
    env = {k: v for k, v in os.environ.items() if k != "HASTELM_NO_KERNELS"}
    code = "from hastelm.kernels import cpu as kernels; m = kernels.native(); print(m and m.__name__)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**env, "XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == kernels._PREBUILT, (
        "the install did not build the CPU kernels, or csrc/ changed since: run ./scripts/setup.sh again")
    assert kernels.COMPILING_NOTICE not in proc.stderr
    assert not any(tmp_path.iterdir())


@needs_kernel
def test_kernel_builds_on_this_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the install's module (a `pip install .` with build isolation has no torch to build
    against), the first call compiles (~30 s); later sessions load the cached build."""
    monkeypatch.delenv("HASTELM_NO_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_PREBUILT", "hastelm.kernels._not_built")
    kernels._load.cache_clear()
    try:
        mod = kernels.native()
        assert mod is not None and mod.__name__ == "hastelm_cpu_kernels"
        assert kernels.build_dir().is_dir()
    finally:
        kernels._load.cache_clear()   # later tests load the install's build again


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's int8 activations, computed the same way in float32: per row and group of 32,
    dx = max|x| / 127 and xq = round-half-even(x * (127 / max|x|)). Returns (xq, dx) `[M, G, 32]`, `[M, G]`."""
    g = x.float().view(x.shape[0], -1, 32)
    amax = g.abs().amax(-1)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))
    return torch.round(g * inv[..., None]).clamp(-127, 127), amax / 127.0


@needs_kernel
@pytest.mark.parametrize("ggml_type", [T.Q4_0, T.Q4_1, T.Q4_K], ids=lambda t: t.name)
def test_matches_float64_reference(kernel, ggml_type: T) -> None:
    rows, cols = 208, 512      # 13 column blocks: every tile width and its remainder path run
    q, scale, offset = gguf_groups(ggml_type, rows, cols, seed=int(ggml_type))
    packed = kernels.pack_int4(q, scale, offset)
    # fp16 scales are exact for Q4_0/Q4_1 and kept; Q4_K's products of scales are not
    assert packed.shape[-1] == (384 if ggml_type == T.Q4_K else 320)
    w = dequant(q, scale, offset)
    x = torch.randn(11, cols, generator=torch.Generator().manual_seed(1))
    bound = x.abs().double() @ (q.double().view(rows, -1, 32) * scale.double().abs()[..., None]
                                + offset.double().abs()[..., None]).flatten(1).T
    # fp32 rounding: the group sum of x (32 adds), scale * dx, and two FMAs per group
    steps = 32 + 3 * cols // 32

    for xin in (x, x.bfloat16()):
        y = kernels.int4_gemm(xin, packed)
        assert y.dtype == xin.dtype
        # the kernel's own arithmetic in float64: integer dot products of nibbles and int8 activations
        # (exact), scaled per group, plus offset * (exact sum of x)
        xq, dx = quantize_activations(xin)
        qg = q.double().view(rows, -1, 32)
        dots = torch.einsum("mgk,ngk->mng", xq.double(), qg)
        ref = (dots * (scale.double()[None] * dx.double()[:, None])).sum(-1) + xin.double() @ (
            offset.double().repeat_interleave(32, dim=1)).T
        out_rounding = U_BF16 * ref.abs() if xin.dtype == torch.bfloat16 else 0
        assert ((y.double() - ref).abs() <= out_rounding + steps * U_FP32 * bound).all()
        # against the exact product: each activation is off by at most dx / 2
        quant_err = (dx.double()[:, None, :] / 2 * (qg * scale.double()[..., None]).abs().sum(-1)[None]).sum(-1)
        exact = xin.double() @ w.T
        assert ((y.double() - exact).abs() <= out_rounding + quant_err + 2 * steps * U_FP32 * bound).all()
        # and the quantization error is real but small: a few tenths of a per cent of the scale of |x| |w|
        assert 0 < (y.double() - exact).abs().max() <= 0.02 * bound.max()


@needs_kernel
@pytest.mark.parametrize("fp16_scales", [True, False], ids=["fp16-scales", "fp32-scales"])
def test_rows_identical_for_any_batch_and_threads(kernel, fp16_scales: bool) -> None:
    rows, cols = 208, 2048     # 13 column blocks of 20 KB: one L2 span of 12 and one of 1
    g = torch.Generator().manual_seed(2)
    q = torch.randint(0, 16, (rows, cols), dtype=torch.uint8, generator=g)
    scale = torch.rand(rows, cols // 32, generator=g) * 0.02
    offset = -8 * scale + torch.randn(rows, cols // 32, generator=g) * 1e-3
    if fp16_scales:
        scale, offset = scale.half().float(), offset.half().float()
    packed = kernels.pack_int4(q, scale, offset)
    assert packed.shape[-1] == (320 if fp16_scales else 384)
    x = torch.randn(64, cols, generator=g).bfloat16()
    single = torch.cat([kernels.int4_gemm(x[i:i + 1], packed) for i in range(64)])
    for m in range(1, 65):
        assert torch.equal(kernels.int4_gemm(x[:m], packed), single[:m]), m
    threads = torch.get_num_threads()
    try:
        for t in (1, 3):   # other splits of the columns over threads
            torch.set_num_threads(t)
            assert torch.equal(kernels.int4_gemm(x, packed), single)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
def test_int4_linear_uses_kernel(kernel) -> None:
    q, scale, offset = gguf_groups(T.Q4_1, 64, 128, seed=3)
    bias = torch.randn(64)
    lin = Int4Linear(q, scale, offset, bias)
    assert lin.native
    x = torch.randn(2, 5, 128).bfloat16()
    y = lin(x)
    assert y.shape == (2, 5, 64) and y.dtype == torch.bfloat16
    # the layer is the kernel plus the bias, within int8 activation quantization of the exact product
    assert torch.equal(y, kernels.int4_gemm(x, lin.packed) + lin.bias)
    ref = x.double() @ dequant(q, scale, offset).T + bias.bfloat16().double()
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=6e-2)
    # decode and verification batches go through the kernel: each row equals its single-row result
    some = torch.randn(200, 128).bfloat16()
    assert torch.equal(lin(some)[7], lin(some[7:8])[0])
    assert torch.equal(lin(some[40:90]), lin(some)[40:90])


def test_fallback_when_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HASTELM_NO_KERNELS", "1")
    assert kernels.native() is None
    q, scale, offset = gguf_groups(T.Q4_0, 128, 128, seed=4)
    lin = Int4Linear(q, scale, offset)
    assert not lin.native
    w = dequant(q, scale, offset)
    x = torch.randn(100, 128).bfloat16()
    torch.testing.assert_close(lin(x).double(), x.double() @ w.T, rtol=2e-2, atol=2e-2)   # torch's int4 op


@needs_kernel
def test_build_failure_falls_back(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HASTELM_NO_KERNELS", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(kernels, "_PREBUILT", "hastelm.kernels._not_built")
    monkeypatch.setattr(kernels, "_SOURCES", [tmp_path / "missing.cpp"])
    kernels._load.cache_clear()
    try:
        with pytest.warns(UserWarning, match="int4 kernel not built"):
            assert kernels.native() is None
    finally:
        kernels._load.cache_clear()   # later tests load the real build again


def test_pack_rejects_bad_shapes() -> None:
    q = torch.zeros(24, 64, dtype=torch.uint8)
    with pytest.raises(ValueError, match="rows % 16"):
        kernels.pack_int4(q, torch.ones(24, 2), torch.zeros(24, 2))
    with pytest.raises(ValueError, match="rows % 16"):
        kernels.pack_int8(torch.zeros(24, 64, dtype=torch.int8))


def _int8_table(rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g)
    return w, w.abs().amax(1) / 127.0


@needs_kernel
def test_int8_kernel_matches_float64_and_rows_are_batch_independent(kernel) -> None:
    rows, cols = 400, 192
    w, _ = _int8_table(rows, cols, seed=4)
    lin = Int8Linear.quantize(w.shape, [w[:160], w[160:320], w[320:]])   # chunks as the loader sends them
    assert lin.native and lin.q.shape == (rows // 16, cols // 4, 64)
    q = kernels.unpack_int8_rows(lin.q, torch.arange(rows))
    assert bool((q.float() * lin.scale.float()[:, None] - w).abs().max() < 0.02)     # pack/unpack round trip
    x = torch.randn(40, cols).bfloat16()
    y = lin(x.float())
    # the kernel's arithmetic in float64: exact integer dot products per group of 32, scaled
    xq, dx = quantize_activations(x)
    qg = q.double().view(rows, -1, 32)
    dots = torch.einsum("mgk,ngk->mng", xq.double(), qg)
    ref = (dots * dx.double()[:, None]).sum(-1) * lin.scale.double()
    scaled = (torch.einsum("mgk,ngk->mng", xq.double().abs(), qg.abs()) * dx.double()[:, None]).sum(-1)
    bound = (cols // 32 + 2) * U_FP32 * scaled * lin.scale.double() + 1e-30
    assert y.dtype == torch.float32 and bool(((y.double() - ref).abs() <= bound).all())
    # and against the exact product, each activation off by at most dx / 2
    quant_err = (dx.double()[:, None, :] / 2 * qg.abs().sum(-1)[None]).sum(-1) * lin.scale.double()
    exact = (x.double() @ q.double().T) * lin.scale.double()
    assert bool(((y.double() - exact).abs() <= quant_err + 2 * bound).all())
    single = torch.cat([lin(x[i:i + 1].float()) for i in range(40)])
    for m in (1, 3, 8, 9, 17, 40):
        assert torch.equal(lin(x[:m].float()), single[:m]), m
    assert lin(x).dtype == torch.bfloat16 and torch.equal(lin(x), single.bfloat16())


@needs_kernel
def test_int8_linear_rows_and_fallback_agree(kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    w, _ = _int8_table(64, 96, seed=5)
    packed = Int8Linear.quantize(w.shape, [w])
    monkeypatch.setattr(Int8Linear, "native_int8", staticmethod(lambda shape, dtype=torch.bfloat16: False))
    plain = Int8Linear.quantize(w.shape, [w])
    assert packed.native and not plain.native
    tokens = torch.tensor([[0, 17, 63], [5, 5, 40]])
    assert torch.equal(packed.rows(tokens), plain.rows(tokens))     # embedding lookups: same values
    x = torch.randn(3, 96).bfloat16()
    # int8 activations (kernel) against bf16 ones (torch): a few per cent of the output scale apart
    ref = plain(x).float()
    torch.testing.assert_close(packed(x).float(), ref, rtol=0.0, atol=0.05 * float(ref.abs().max()))


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, slots: list[int], lengths: list[int],
           visible: torch.Tensor | None) -> torch.Tensor:
    rows = kernels.KernelRows(torch.tensor(slots), torch.tensor(lengths), visible)
    return kernels.decode_attention(q, keys, values, rows, 0.125)


@needs_kernel
def test_decode_attention_matches_sdpa_and_ignores_the_rest_of_the_batch(kernel) -> None:
    g = torch.Generator().manual_seed(0)
    slots, capacity, kv_heads, head_dim, q_heads = 3, 64, 3, 64, 9
    keys = torch.randn(slots, capacity, kv_heads, head_dim, generator=g).bfloat16()
    values = torch.randn(slots, capacity, kv_heads, head_dim, generator=g).bfloat16()
    q = torch.randn(2, q_heads, head_dim, generator=g).bfloat16()
    rows_slots, lengths = [2, 0], [40, 7]
    visible = torch.ones(2, 40, dtype=torch.bool)
    visible[0, :5] = False                      # e.g. a sliding window
    out = attend(q, keys, values, rows_slots, lengths, visible)
    for b, (s, n) in enumerate(zip(rows_slots, lengths)):
        k = keys[s, :n].float().repeat_interleave(3, dim=1).transpose(0, 1)
        v = values[s, :n].float().repeat_interleave(3, dim=1).transpose(0, 1)
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[b].float()[:, None], k, v, attn_mask=visible[b, :n][None, None], scale=0.125)[:, 0]
        torch.testing.assert_close(out[b].float(), ref, atol=8e-3, rtol=8e-3)   # bf16 output rounding
    # a row's result is the same alone, in another batch, and with another thread count
    alone = attend(q[1:], keys, values, rows_slots[1:], lengths[1:], visible[1:, :7])
    assert torch.equal(alone[0], out[1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert torch.equal(attend(q, keys, values, rows_slots, lengths, visible), out)
    finally:
        torch.set_num_threads(threads)


@needs_kernel
def test_decode_attention_depends_only_on_the_visible_keys(kernel) -> None:
    """A draft-tree node sees the prefix and its ancestors, with rejected siblings between them; its
    result must be bit-identical to a decode step over the same keys stored contiguously (which is
    what the cache holds once the accepted path is compacted), and to a step that sees all keys."""
    g = torch.Generator().manual_seed(5)
    kv_heads, head_dim, q_heads, n = 3, 64, 9, 53
    keys = torch.randn(1, n, kv_heads, head_dim, generator=g).bfloat16()
    values = torch.randn(1, n, kv_heads, head_dim, generator=g).bfloat16()
    q = torch.randn(1, q_heads, head_dim, generator=g).bfloat16()
    visible = torch.rand(1, n, generator=g) < 0.6
    visible[0, -1] = True
    kept = visible[0].nonzero().flatten()
    tree = attend(q, keys, values, [0], [n], visible)
    contiguous = attend(q, keys[:, kept].contiguous(), values[:, kept].contiguous(), [0], [len(kept)], None)
    assert torch.equal(tree, contiguous)
    # rows longer than needed, whose extra keys are hidden (a prompt chunk's causal rows), agree too
    padded = torch.cat([visible, torch.zeros(1, 11, dtype=torch.bool)], dim=1)
    longer_k = torch.cat([keys, torch.randn(1, 11, kv_heads, head_dim, generator=g).bfloat16()], dim=1)
    longer_v = torch.cat([values, torch.randn(1, 11, kv_heads, head_dim, generator=g).bfloat16()], dim=1)
    assert torch.equal(attend(q, longer_k, longer_v, [0], [n + 11], padded), tree)


@needs_kernel
def test_rms_norm_matches_torch_and_rows_are_batch_independent(kernel) -> None:
    x = torch.randn(9, 576) * 3
    w = torch.rand(576) + 0.5
    y = kernels.rms_norm(x, w, 1e-5)
    torch.testing.assert_close(y, torch.nn.functional.rms_norm(x, (576,), w, 1e-5), rtol=1e-5, atol=1e-6)
    assert all(torch.equal(kernels.rms_norm(x[i:i + 1], w, 1e-5), y[i:i + 1]) for i in range(9))


@needs_kernel
def test_silu_mul_matches_torch_and_rows_are_batch_independent(kernel) -> None:
    gate_up = torch.randn(7, 2 * 1536, generator=torch.Generator().manual_seed(8)) * 4
    gate_up[0, :4] = torch.tensor([-120.0, -90.0, 90.0, 0.0])      # exp over- and underflow stay finite
    y = kernels.silu_mul(gate_up)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(y, torch.nn.functional.silu(gate) * up, rtol=1e-5, atol=1e-6)
    assert torch.equal(kernels.silu_mul(gate_up[3:4]), y[3:4])
    assert torch.equal(kernels.silu_mul(gate_up.view(7, 1, -1)), y.view(7, 1, -1))


@needs_kernel
def test_argmax_rows_matches_torch_including_ties_infinities_and_nan(kernel) -> None:
    logits = torch.randn(9, 49152, generator=torch.Generator().manual_seed(3))
    assert torch.equal(kernels.argmax_rows(logits), logits.argmax(-1))
    odd = torch.full((6, 37), -float("inf"))            # 37: a partial last vector
    odd[1, 5] = odd[1, 30] = 2.0                         # a tie: the first index wins
    odd[2, 36] = 1.0                                     # in the tail lanes
    odd[3, 3] = odd[3, 7] = float("nan")                 # NaN counts as the largest, as in torch
    odd[3, 9] = float("inf")
    odd[4] = 0.5
    odd[5, 17] = odd[5, 33] = float("inf")
    assert kernels.argmax_rows(odd).tolist() == odd.argmax(-1).tolist() == [0, 5, 36, 3, 0, 17]


@needs_kernel
def test_topk_rows_matches_torch_and_orders_ties_by_index(kernel) -> None:
    logits = torch.randn(5, 49152, generator=torch.Generator().manual_seed(4))
    for k in (1, 8, 64):
        assert torch.equal(kernels.topk_rows(logits, k), logits.topk(k, dim=-1).indices)
    odd = torch.full((3, 37), -float("inf"))            # 37: a partial last vector
    odd[0, [30, 2, 36, 9]] = torch.tensor([1.0, 1.0, 3.0, 1.0])   # ties: lower index first
    odd[1, 4] = float("nan")                             # never chosen
    odd[1, 20] = 0.0
    odd[2] = torch.arange(37.0)
    assert kernels.topk_rows(odd, 4).tolist() == [[36, 2, 9, 30], [20, -1, -1, -1], [36, 35, 34, 33]]
    with pytest.raises(RuntimeError, match="k must be"):
        kernels.topk_rows(odd, 65)


@needs_kernel
def test_decode_attention_rows_of_one_slot_share_a_task_and_match_each_row_alone(kernel) -> None:
    """A prompt chunk's or a draft tree's rows read one slot's keys together (one task widens them
    once); each row's result must still be bit-identical to the row computed alone."""
    g = torch.Generator().manual_seed(6)
    kv_heads, head_dim, q_heads, capacity = 3, 64, 9, 90
    keys = torch.randn(2, capacity, kv_heads, head_dim, generator=g).bfloat16()
    values = torch.randn(2, capacity, kv_heads, head_dim, generator=g).bfloat16()
    # 23 rows of slot 1 with growing lengths (causal), some with hidden keys (tree), then 2 of slot 0
    lengths = [50 + i for i in range(23)] + [17, 18]
    row_slots = [1] * 23 + [0, 0]
    visible = torch.rand(25, capacity, generator=g) < 0.7
    for r, n in enumerate(lengths):
        visible[r, n - 1] = True                 # a row always sees itself
    visible[::3] = True                          # and some see all their keys
    q = torch.randn(25, q_heads, head_dim, generator=g).bfloat16()
    together = attend(q, keys, values, row_slots, lengths, visible)
    for r in range(25):
        alone = attend(q[r:r + 1], keys, values, row_slots[r:r + 1], lengths[r:r + 1], visible[r:r + 1])
        assert torch.equal(together[r], alone[0]), r
    unmasked = attend(q, keys, values, row_slots, lengths, None)
    for r in (0, 11, 22, 24):
        alone = attend(q[r:r + 1], keys, values, row_slots[r:r + 1], lengths[r:r + 1], None)
        assert torch.equal(unmasked[r], alone[0]), r
