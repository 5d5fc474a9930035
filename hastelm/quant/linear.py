"""Linear layers over the weight representations hastelm keeps: dense, packed int4, int8 rows.

GGUF Q4_0/Q4_1/Q4_K blocks are exactly `w = q * scale + offset` on groups of 32, so those weights
stay packed with no requantization. They run through hastelm's own AVX512-VNNI kernel
(kernels/cpu.py) where it is available, for decode steps, draft verification and prefill alike:
activations quantized per row to int8, exact integer dot products, every output row bit-identical
whatever the batch size. Elsewhere torch's CPU int4 op runs them.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..formats.ggml_blocks import int4_matmul, pack_int4_for_cpu
from ..kernels.cpu import BLOCK_COLS, GROUP, int4_gemm, int8_gemm, native, pack_int4, pack_int8, unpack_int8_rows


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
    """Groupwise-int4 weight `[out, in]` (groups of 32 along `in`)."""

    group_size = 32

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor,
                 bias: torch.Tensor | None = None, dtype: torch.dtype = torch.bfloat16) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        # hastelm's kernel serves the bf16 mode; other activation dtypes keep torch's op
        self.native = dtype == torch.bfloat16 and native() is not None
        if self.native:
            self.register_buffer("packed", pack_int4(q, scale, offset), persistent=False)
        else:
            packed, sz = pack_int4_for_cpu(q, scale, offset, dtype)
            self.register_buffer("packed", packed, persistent=False)
            self.register_buffer("scales_and_zeros", sz, persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.native:
            out = int4_gemm(x, self.packed)     # float32 in, float32 out; otherwise bf16
        else:
            out = int4_matmul(x.to(self.dtype), self.packed, self.scales_and_zeros, self.group_size)
        return out if self.bias is None else out + self.bias


class Int8Linear(nn.Module):
    """Int8 weight with one scale per output row; also serves as the embedding table when input
    and output embeddings are tied. hastelm's W8A8 kernel runs it where available (int8 products
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
        return dtype == torch.bfloat16 and shape[0] % BLOCK_COLS == 0 and shape[1] % GROUP == 0 and native() is not None

    @classmethod
    def quantize(cls, shape: tuple[int, int], chunks: Iterable[torch.Tensor], dtype: torch.dtype = torch.bfloat16,
                 bias: torch.Tensor | None = None) -> "Int8Linear":
        """Symmetric per-row int8 from consecutive float row chunks, written in place (packed for the
        kernel as they come) so a 262k-row table never exists in float32 or twice in int8 at once."""
        packed = cls.native_int8(shape, dtype)
        n, k = shape
        q = (torch.empty(n // BLOCK_COLS, k // 4, 4 * BLOCK_COLS, dtype=torch.uint8) if packed
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
