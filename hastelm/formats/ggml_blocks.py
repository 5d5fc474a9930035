"""Vectorised torch decoders for GGML tensor types (the block formats of llama.cpp's ggml-quants.c).

`dequantize` turns the raw bytes GGUFReader exposes into float32 weights, bit-exact with
ggml's reference `dequantize_row_*` functions.  `int4_groups` / `pack_int4_for_cpu` /
`int4_matmul` keep 4-bit types (Q4_0, Q4_1, Q4_K) packed and run them through torch's CPU
int4 kernel instead of materialising float weights.

All work is done per row chunk in uint8 / int8 / float32, so even a 262144x640 embedding
table never needs more than a few tens of MiB of temporaries beyond the float32 output.
"""

from __future__ import annotations

import math
import sys
import warnings
from typing import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from hastelm.errors import ModelLoadError, UnsupportedError

T = GGMLQuantizationType
QK_K = 256

# Elements decoded per chunk: bounds float32 temporaries to ~16 MiB each.
_CHUNK_ELEMS = 1 << 22

_BIG_ENDIAN = sys.byteorder == "big"

# Shift amounts used to spread packed bit fields along a new dimension.
_SHIFT_2BIT = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_SHIFT_1BIT = torch.arange(8, dtype=torch.uint8)


# ----------------------------------------------------------------------------- byte helpers


def _to_tensor(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Wrap `data` as a contiguous CPU tensor without copying when possible."""
    if isinstance(data, torch.Tensor):
        return data.contiguous()
    arr = np.ascontiguousarray(data)  # a contiguous memmap stays a zero-copy view
    with warnings.catch_warnings():
        # GGUFReader memmaps are read-only; we only ever read from the wrapped tensor.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _le_scalar(b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Interpret each row of little-endian bytes `b` [n, k] as one `dtype` value -> float32 [n, 1]."""
    b = b.contiguous()  # tiny copy (k bytes per block) that also guarantees alignment for .view
    if _BIG_ENDIAN:
        b = b.flip(-1).contiguous()
    return b.view(dtype).float()


def _f16(b: torch.Tensor, off: int) -> torch.Tensor:
    """The fp16 block scale stored at byte offset `off`, as float32 [n, 1]."""
    return _le_scalar(b[:, off : off + 2], torch.float16)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[..., m] bytes -> [..., 2, m]: all low nibbles, then all high nibbles (ggml's order)."""
    return torch.stack((qs & 0x0F, qs >> 4), dim=-2)


def _bits(b: torch.Tensor) -> torch.Tensor:
    """[n, m] bytes -> [n, 8, m] with [:, i, j] = bit i of byte j."""
    return (b.unsqueeze(1) >> _SHIFT_1BIT.view(1, 8, 1)) & 1


def _bits_le32(b: torch.Tensor) -> torch.Tensor:
    """[n, 4] little-endian uint32 bit masks -> [n, 32] with [:, j] = bit j (no uint32 math needed)."""
    return ((b.unsqueeze(-1) >> _SHIFT_1BIT) & 1).reshape(b.shape[0], 32)


def _scale_min_k4(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte 6-bit scales/mins of Q4_K/Q5_K (get_scale_min_k4) -> two float32 [n, 8]."""
    s0, s1, s2 = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat((s0 & 0x3F, (s2 & 0x0F) | ((s0 >> 6) << 4)), dim=1)
    mn = torch.cat((s1 & 0x3F, (s2 >> 4) | ((s1 >> 6) << 4)), dim=1)
    return sc.float(), mn.float()


# ----------------------------------------------------------------------------- block decoders
# Each takes uint8 blocks [n, type_size] and returns float32 [n, block_size], computing the
# same float32 operations in the same order as ggml so results are bit-identical.


def _deq_q4_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    q = _nibbles(b[:, 2:18]).reshape(-1, 32).to(torch.int8) - 8
    return q.float() * d


def _deq_q4_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    q = _nibbles(b[:, 4:20]).reshape(-1, 32)
    return q.float() * d + m


def _deq_q5_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    q = _nibbles(b[:, 6:22]).reshape(-1, 32) | (_bits_le32(b[:, 2:6]) << 4)
    return (q.to(torch.int8) - 16).float() * d


def _deq_q5_1(b: torch.Tensor) -> torch.Tensor:
    d, m = _f16(b, 0), _f16(b, 2)
    q = _nibbles(b[:, 8:24]).reshape(-1, 32) | (_bits_le32(b[:, 4:8]) << 4)
    return q.float() * d + m


def _deq_q8_0(b: torch.Tensor) -> torch.Tensor:
    d = _f16(b, 0)
    return b[:, 2:34].view(torch.int8).float() * d


def _deq_q2_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    sc = b[:, 0:16]
    d, dmin = _f16(b, 80), _f16(b, 82)
    # Two halves of 128 values; each half's 32 bytes hold four 2-bit planes of 32 values,
    # and every 16 consecutive values share one scale/min byte.
    q = (b[:, 16:80].reshape(n, 2, 1, 32) >> _SHIFT_2BIT.view(1, 1, 4, 1)) & 3
    q = q.reshape(n, 16, 16).float()
    dl = (d * (sc & 0x0F).float()).unsqueeze(-1)
    ml = (dmin * (sc >> 4).float()).unsqueeze(-1)
    return (dl * q - ml).reshape(n, QK_K)


def _deq_q3_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    hmask, qs, s = b[:, 0:32], b[:, 32:96], b[:, 96:108]
    d = _f16(b, 108)
    # 16 6-bit scales: low 4 bits are the nibbles of bytes 0..7 (low nibbles first), high 2 bits
    # of scale i are bits 2*(i//4) of byte 8 + i%4; stored with a +32 bias.
    low = torch.cat((s[:, 0:8] & 0x0F, s[:, 0:8] >> 4), dim=1)
    high = ((s[:, 8:12].unsqueeze(1) >> _SHIFT_2BIT.view(1, 4, 1)) & 3).reshape(n, 16)
    scales = ((low | (high << 4)).to(torch.int8) - 32).float()
    ql = ((qs.reshape(n, 2, 1, 32) >> _SHIFT_2BIT.view(1, 1, 4, 1)) & 3).to(torch.int8)
    hb = _bits(hmask).reshape(n, 2, 4, 32).to(torch.int8)
    q = ql - ((1 - hb) << 2)  # a *cleared* hmask bit subtracts 4
    dl = (d * scales).unsqueeze(-1)
    return (dl * q.reshape(n, 16, 16).float()).reshape(n, QK_K)


def _deq_q4_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    # 4 chunks of 32 bytes; each gives 32 values from low nibbles, then 32 from high nibbles.
    q = _nibbles(b[:, 16:144].reshape(n, 4, 32)).reshape(n, 8, 32).float()
    return ((d * sc).unsqueeze(-1) * q - (dmin * mn).unsqueeze(-1)).reshape(n, QK_K)


def _deq_q5_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    ql = _nibbles(b[:, 48:176].reshape(n, 4, 32)).reshape(n, 8, 32)
    q = (ql | (_bits(b[:, 16:48]) << 4)).float()  # sub-block s takes bit s of qh
    return ((d * sc).unsqueeze(-1) * q - (dmin * mn).unsqueeze(-1)).reshape(n, QK_K)


def _deq_q6_k(b: torch.Tensor) -> torch.Tensor:
    n = b.shape[0]
    d = _f16(b, 208)
    sc = b[:, 192:208].view(torch.int8).float()
    # Per half (128 values): ql is 64 bytes, value 32k+l takes nibble k//2 of byte 32*(k%2)+l
    # and 2-bit plane k of qh byte l.
    lo = b[:, 0:128].reshape(n, 2, 2, 32)  # [half, k % 2, l]
    ql = torch.stack((lo & 0x0F, lo >> 4), dim=2).reshape(n, 2, 4, 32)  # k = 2 * nibble + k % 2
    qh = (b[:, 128:192].reshape(n, 2, 1, 32) >> _SHIFT_2BIT.view(1, 1, 4, 1)) & 3
    q = ((ql | (qh << 4)).to(torch.int8) - 32).reshape(n, 16, 16).float()
    return ((d * sc).unsqueeze(-1) * q).reshape(n, QK_K)


def _deq_q8_k(b: torch.Tensor) -> torch.Tensor:
    d = _le_scalar(b[:, 0:4], torch.float32)  # Q8_K's scale is a float32; bsums are ignored
    return b[:, 4:260].view(torch.int8).float() * d


_DEQUANT: dict[int, Callable[[torch.Tensor], torch.Tensor]] = {
    T.Q4_0: _deq_q4_0,
    T.Q4_1: _deq_q4_1,
    T.Q5_0: _deq_q5_0,
    T.Q5_1: _deq_q5_1,
    T.Q8_0: _deq_q8_0,
    T.Q2_K: _deq_q2_k,
    T.Q3_K: _deq_q3_k,
    T.Q4_K: _deq_q4_k,
    T.Q5_K: _deq_q5_k,
    T.Q6_K: _deq_q6_k,
    T.Q8_K: _deq_q8_k,
}

_FLOAT_TYPES: dict[int, torch.dtype] = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}


# ----------------------------------------------------------------------------- public API


def _type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return str(ggml_type)


def check_supported(ggml_type: int, what: str = "tensor") -> None:
    """Raise UnsupportedError unless `dequantize` decodes this GGUF tensor type."""
    if ggml_type not in _FLOAT_TYPES and ggml_type not in _DEQUANT:
        names = ", ".join(_type_name(t) for t in [*_FLOAT_TYPES, *_DEQUANT])
        raise UnsupportedError(f"{what} has unsupported GGUF tensor type {_type_name(ggml_type)} "
                               f"(hastelm decodes {names})")


def _rows_cols(shape: tuple[int, ...]) -> tuple[int, int]:
    cols = int(shape[-1]) if len(shape) else 1
    rows = math.prod(int(s) for s in shape[:-1])
    return rows, cols


def _block_rows(data: np.ndarray | torch.Tensor, ggml_type: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, int, int]:
    """Raw bytes as uint8 [rows, bytes_per_row], after checking they match `shape`."""
    rows, cols = _rows_cols(shape)
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    name = _type_name(ggml_type)
    if cols % block_size:
        raise ModelLoadError(f"{name} tensor row of {cols} values is not a multiple of the block size {block_size}")
    raw = _to_tensor(data).reshape(-1)
    if raw.dtype != torch.uint8:
        raw = raw.view(torch.uint8)
    row_bytes = cols // block_size * type_size
    if raw.numel() != rows * row_bytes:
        raise ModelLoadError(f"{name} tensor of shape {tuple(shape)} needs {rows * row_bytes} bytes, got {raw.numel()}")
    return raw.view(rows, row_bytes), rows, cols


def _chunk_rows(cols: int) -> int:
    return max(1, _CHUNK_ELEMS // max(cols, 1))


def _dequantize_float(data: np.ndarray | torch.Tensor, ggml_type: int, shape: tuple[int, ...]) -> torch.Tensor:
    dtype = _FLOAT_TYPES[ggml_type]
    t = _to_tensor(data).reshape(-1)
    if t.dtype != dtype:
        if t.dtype == torch.uint8:
            raw = t
            if _BIG_ENDIAN:  # file bytes are little-endian
                raw = raw.view(-1, dtype.itemsize).flip(-1).reshape(-1)
            t = raw.view(dtype)
        else:
            t = t.view(dtype)  # e.g. BF16 handed over as a uint16/int16 array
    n = math.prod(int(s) for s in shape)
    if t.numel() != n:
        raise ModelLoadError(f"{_type_name(ggml_type)} tensor of shape {tuple(shape)} has {t.numel()} values")
    # Always copy: the source is usually a read-only memmap that must never be written.
    return t.to(torch.float32, copy=True).reshape(shape)


def dequantize(data: np.ndarray | torch.Tensor, ggml_type: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode a GGUF tensor to float32 of `shape` (torch order: last dim contiguous).

    `data` is what GGUFReader exposes (`tensor.data`): a uint8 array [rows, bytes_per_row]
    for block types, a typed array (or its raw bytes) for F32/F16/BF16.
    """
    shape = tuple(int(s) for s in shape)
    if ggml_type in _FLOAT_TYPES:
        return _dequantize_float(data, ggml_type, shape)
    check_supported(ggml_type)
    fn = _DEQUANT[ggml_type]
    raw, rows, cols = _block_rows(data, ggml_type, shape)
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    out = torch.empty(rows, cols, dtype=torch.float32)
    step = _chunk_rows(cols)
    for r in range(0, rows, step):  # row chunks bound the temporaries; blocks are vectorised
        blocks = raw[r : r + step].reshape(-1, type_size)
        out[r : r + step].view(-1, block_size).copy_(fn(blocks))
    return out.reshape(shape)


# ----------------------------------------------------------------------------- int4 path
# Each returns (q uint8 [n, bs] in 0..15, scale [n, bs//32], offset [n, bs//32]) such that
# w = q * scale + offset reproduces the block decoder exactly (all products are exact in fp32).


def _i4_q4_0(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    d = _f16(b, 0)
    return _nibbles(b[:, 2:18]).reshape(-1, 32), d, -8.0 * d


def _i4_q4_1(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _nibbles(b[:, 4:20]).reshape(-1, 32), _f16(b, 0), _f16(b, 2)


def _i4_q4_k(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = b.shape[0]
    d, dmin = _f16(b, 0), _f16(b, 2)
    sc, mn = _scale_min_k4(b[:, 4:16])
    q = _nibbles(b[:, 16:144].reshape(n, 4, 32)).reshape(n, QK_K)
    return q, d * sc, -(dmin * mn)


_INT4: dict[int, Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
    T.Q4_0: _i4_q4_0,
    T.Q4_1: _i4_q4_1,
    T.Q4_K: _i4_q4_k,
}


def int4_groups(
    data: np.ndarray | torch.Tensor, ggml_type: int, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Split a 4-bit tensor into `w = q * scale + offset` with groups of 32 along the last dim.

    Returns (q uint8 [rows, cols] in 0..15, scale float32 [rows, cols//32],
    offset float32 [rows, cols//32]) for Q4_0, Q4_1 and Q4_K; None for any other type.
    Leading dims of `shape` are flattened into rows.
    """
    fn = _INT4.get(ggml_type)
    if fn is None:
        return None
    shape = tuple(int(s) for s in shape)
    raw, rows, cols = _block_rows(data, ggml_type, shape)
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    q = torch.empty(rows, cols, dtype=torch.uint8)
    scale = torch.empty(rows, cols // 32, dtype=torch.float32)
    offset = torch.empty(rows, cols // 32, dtype=torch.float32)
    groups = block_size // 32
    step = _chunk_rows(cols)
    for r in range(0, rows, step):
        bq, bs, bo = fn(raw[r : r + step].reshape(-1, type_size))
        q[r : r + step].view(-1, block_size).copy_(bq)
        scale[r : r + step].view(-1, groups).copy_(bs)
        offset[r : r + step].view(-1, groups).copy_(bo)
    return q, scale, offset


def pack_int4_for_cpu(
    q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, dtype: torch.dtype = torch.bfloat16
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack `int4_groups` output for `torch.ops.aten._weight_int4pack_mm_for_cpu`.

    Returns (packed uint8 [rows, cols//2], scales_and_zeros `dtype` [cols//32, rows, 2]).
    The kernel decodes `(q - 8) * scale + zero`, hence zero = offset + 8 * scale.
    The CPU kernel requires rows % 16 == 0; `dtype` must match the activations later passed
    to `int4_matmul` (bfloat16, float16 and float32 all work on CPU).
    """
    rows, cols = q.shape
    if rows % 16 or cols % 32:
        raise ValueError(f"int4 packing needs rows % 16 == 0 and cols % 32 == 0, got {tuple(q.shape)}")
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
    zero = offset + 8.0 * scale  # computed in float32, rounded once to `dtype`
    scales_and_zeros = torch.stack((scale.t(), zero.t()), dim=-1).to(dtype).contiguous()
    return packed, scales_and_zeros


def int4_matmul(
    x: torch.Tensor, packed: torch.Tensor, scales_and_zeros: torch.Tensor, group_size: int = 32
) -> torch.Tensor:
    """`x @ w.T` with `w` packed by `pack_int4_for_cpu`; any leading dims, result in x.dtype.

    The kernel needs a contiguous 2-D input of the same dtype as `scales_and_zeros`.
    """
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1]).to(scales_and_zeros.dtype).contiguous()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, group_size, scales_and_zeros)
    return y.to(x.dtype).reshape(*lead, y.shape[-1])
