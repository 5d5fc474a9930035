"""Vectorised torch decoders for GGML tensor types (the block formats of llama.cpp's ggml-quants.c).

`dequantize` turns the raw bytes GGUFReader exposes into float32 weights, bit-exact with
ggml's reference `dequantize_row_*` functions.  `int4_groups` / `pack_int4_for_cpu` /
`int4_matmul` keep 4-bit types (Q4_0, Q4_1, Q4_K) packed and run them through torch's CPU
int4 kernel instead of materialising float weights.

All work is done per row chunk in uint8 / int8 / float32, so even a 262144x640 embedding
table never needs more than a few tens of MiB of temporaries beyond the float32 output.
The per-block bit unpacking of each type is ggml_block_decoders.py's; this module drives it over
whole tensors.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from hastelm.errors import ModelLoadError, UnsupportedError

from .ggml_block_decoders import BIG_ENDIAN, BLOCK_DECODERS, INT4_SPLITTERS

# Elements decoded per chunk: bounds float32 temporaries to ~16 MiB each.
_CHUNK_ELEMS = 1 << 22

T = GGMLQuantizationType
_FLOAT_TYPES: dict[int, torch.dtype] = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}


# ----------------------------------------------------------------------------- raw bytes


def _to_tensor(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Wrap `data` as a contiguous CPU tensor without copying when possible."""
    if isinstance(data, torch.Tensor):
        return data.contiguous()
    arr = np.ascontiguousarray(data)  # a contiguous memmap stays a zero-copy view
    with warnings.catch_warnings():
        # GGUFReader memmaps are read-only; we only ever read from the wrapped tensor.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


# ----------------------------------------------------------------------------- dequantize


def _type_name(ggml_type: int) -> str:
    try:
        return GGMLQuantizationType(ggml_type).name
    except ValueError:
        return str(ggml_type)


def check_supported(ggml_type: int, what: str = "tensor") -> None:
    """Raise UnsupportedError unless `dequantize` decodes this GGUF tensor type."""
    if ggml_type not in _FLOAT_TYPES and ggml_type not in BLOCK_DECODERS:
        names = ", ".join(_type_name(t) for t in [*_FLOAT_TYPES, *BLOCK_DECODERS])
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
            if BIG_ENDIAN:  # file bytes are little-endian
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
    fn = BLOCK_DECODERS[ggml_type]
    raw, rows, cols = _block_rows(data, ggml_type, shape)
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    out = torch.empty(rows, cols, dtype=torch.float32)
    step = _chunk_rows(cols)
    for r in range(0, rows, step):  # row chunks bound the temporaries; blocks are vectorised
        blocks = raw[r : r + step].reshape(-1, type_size)
        out[r : r + step].view(-1, block_size).copy_(fn(blocks))
    return out.reshape(shape)


# ----------------------------------------------------------------------------- int4 path


def int4_groups(
    data: np.ndarray | torch.Tensor, ggml_type: int, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Split a 4-bit tensor into `w = q * scale + offset` with groups of 32 along the last dim.

    Returns (q uint8 [rows, cols] in 0..15, scale float32 [rows, cols//32],
    offset float32 [rows, cols//32]) for Q4_0, Q4_1 and Q4_K; None for any other type.
    Leading dims of `shape` are flattened into rows.
    """
    fn = INT4_SPLITTERS.get(ggml_type)
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
