"""Linear layers over the weight representations hastelm keeps: dense, packed int4, int8 rows.

GGUF Q4_0/Q4_1/Q4_K blocks are exactly `w = q * scale + offset` on groups of 32, so those weights
stay packed with no requantization. They run through hastelm's own AVX512-BF16 kernel
(quant/kernels.py) where it is available: bf16 products with fp32 accumulation, every output row
bit-identical whatever the batch size. Elsewhere torch's CPU int4 op runs them. Prefill chunks
(`dense_matmuls`) unpack the weight to bf16 on the fly and run one dense GEMM instead.
"""
from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .ggml_blocks import int4_matmul, pack_int4_for_cpu
from .kernels import BLOCK_COLS, int4_gemm, int4_unpack, int8_gemm, native, pack_int4, pack_int8, unpack_int8_rows


class _Policy(threading.local):
    dense = False


_policy = _Policy()


@contextmanager
def dense_matmuls(enabled: bool = True) -> Iterator[None]:
    """Within this block (on this thread), packed int4 layers unpack their weight and run one dense
    bf16 GEMM: prefill chunks, where that is 2x the int4 tiles (2-core AVX-512 CPU, 3072x576
    weight at 256 rows: tiles 5.1 ms, unpack 0.5 + GEMM 2.6 ms). Outside, decode and verification
    rows keep the kernel's batch-size-independent numerics. The dense GEMM's rows do not depend on
    the number of rows either, so a prompt prefilled alone or in a batch gets the same cache."""
    before = _policy.dense
    _policy.dense = enabled
    try:
        yield
    finally:
        _policy.dense = before


class _Scratch(threading.local):
    """One reused buffer per thread for unpacked weights: a fresh multi-MB tensor per matmul
    would fault in new pages every time (as long as the unpack itself)."""
    buffer: torch.Tensor | None = None

    def take(self, rows: int, cols: int) -> torch.Tensor:
        n = rows * cols
        if self.buffer is None or self.buffer.numel() < n:
            self.buffer = torch.empty(n, dtype=torch.bfloat16)
        return self.buffer[:n].view(rows, cols)


_scratch = _Scratch()


class DenseLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.out_features = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias)

    def rows(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight)


class Int4Linear(nn.Module):
    """Groupwise-int4 weight `[out, in]` (groups of 32 along `in`), bf16 activations."""

    group_size = 32

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                 bias: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        # hastelm's kernel multiplies in bf16; other activation dtypes keep torch's op
        self.native = dtype == torch.bfloat16 and native() is not None
        if self.native:
            self.register_buffer("packed", pack_int4(q, scale, offset), persistent=False)
        else:
            packed, sz = pack_int4_for_cpu(q, scale, offset, dtype)
            self.register_buffer("packed", packed, persistent=False)
            self.register_buffer("scales_and_zeros", sz, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        self.dtype = dtype
        self.can_unpack = not self.native and self.out_features % 64 == 0

    def unpack(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """The dense weight `[out, in]` in the activation dtype (the native path writes it into
        `out` when given).

        torch's CPU packing stores, per block of 64 output rows and per input column, 32 bytes whose
        low nibbles are rows 0-31 and high nibbles rows 32-63 of the block.
        """
        n, k = self.out_features, self.in_features
        if self.native:
            return int4_unpack(self.packed, k, out)
        blocks = self.packed.view(n // 64, k, 32)
        q = torch.cat([blocks & 15, blocks >> 4], dim=2).transpose(1, 2).reshape(n, k // 32, 32)
        sz = self.scales_and_zeros.transpose(0, 1)          # [out, groups, 2]
        w = (q.to(self.dtype) - 8) * sz[..., :1] + sz[..., 1:]
        return w.view(n, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dense = _policy.dense and (self.native or self.can_unpack)
        if self.native and not dense:
            # float32 inputs are rounded to bf16 inside the kernel, which then returns float32
            out = int4_gemm(x if x.dtype == torch.float32 else x.to(self.dtype), self.packed)
        elif dense:
            weight = self.unpack(_scratch.take(self.out_features, self.in_features) if self.native else None)
            out = F.linear(x.to(self.dtype), weight)
        else:
            out = int4_matmul(x.to(self.dtype), self.packed, self.scales_and_zeros, self.group_size)
        return out if self.bias is None else out + self.bias


class Int8Linear(nn.Module):
    """Int8 weight with one scale per output row; also serves as the embedding table when input
    and output embeddings are tied. hastelm's W8A16 kernel runs it where available (bf16 products
    with fp32 accumulation, rows bit-identical for any batch size), else `_weight_int8pack_mm`."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                 bias: torch.Tensor | None = None, packed: bool = False) -> None:
        """`q` `[N, K]`, or already `pack_int8`-ed when `packed` (see `native_int8`)."""
        super().__init__()
        self.native = packed
        self.register_buffer("q", q, persistent=False)
        self.register_buffer("scale", scale.to(dtype), persistent=False)
        if packed:   # the kernel scales in fp32 by the same (bf16-rounded) values
            self.register_buffer("scale32", self.scale.float(), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        self.dtype = dtype
        self.out_features = scale.shape[0]

    @staticmethod
    def native_int8(shape: tuple[int, int], dtype: torch.dtype = torch.bfloat16) -> bool:
        return dtype == torch.bfloat16 and shape[0] % BLOCK_COLS == 0 and shape[1] % 2 == 0 and native() is not None

    @classmethod
    def quantize(cls, shape: tuple[int, int], chunks: Iterable[torch.Tensor], dtype: torch.dtype = torch.bfloat16,
                 bias: torch.Tensor | None = None) -> "Int8Linear":
        """Symmetric per-row int8 from consecutive float row chunks, written in place (packed for the
        kernel as they come) so a 262k-row table never exists in float32 or twice in int8 at once."""
        packed = cls.native_int8(shape, dtype)
        n, k = shape
        q = (torch.empty(n // BLOCK_COLS, k // 2, 2 * BLOCK_COLS, dtype=torch.int8) if packed
             else torch.empty(shape, dtype=torch.int8))
        scale = torch.empty(n, dtype=torch.float32)
        row = 0
        for w in chunks:
            rows = w.shape[0]
            s = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0
            chunk = torch.round(w / s[:, None]).clamp_(-127, 127).to(torch.int8)
            if packed:   # pack_int8 rejects a chunk that is not whole 16-row blocks
                q[row // BLOCK_COLS:(row + rows) // BLOCK_COLS] = pack_int8(chunk)
            else:
                q[row:row + rows] = chunk
            scale[row:row + rows] = s
            row += rows
        return cls(q, scale, dtype, bias, packed=packed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native:    # float32 inputs give float32 outputs, like Int4Linear
            out = int8_gemm(x, self.q, self.scale32)
        else:
            shape = x.shape
            out = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, shape[-1]).to(self.dtype), self.q, self.scale)
            out = out.view(*shape[:-1], self.out_features)
        return out if self.bias is None else out + self.bias

    def rows(self, tokens: torch.Tensor) -> torch.Tensor:
        q = unpack_int8_rows(self.q, tokens) if self.native else F.embedding(tokens, self.q)
        return q.to(self.dtype) * F.embedding(tokens, self.scale[:, None])
