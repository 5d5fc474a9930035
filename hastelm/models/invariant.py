"""The batch-invariant bf16 mode ("invariant", CUDA): the model's pieces that route every row
through `kernels/triton_invariant.py`.

A token's row must come out bit for bit the same from a decode step, a prompt chunk or a draft-tree
verification, whatever else shares the forward: then greedy speculation equals plain decoding on
the GPU as it does in the CPU fast mode. RoPE, SiLU and the residual adds are elementwise; the
matmuls go through `InvariantLinear`, the norms through `rms_norm` and attention through `attend`,
which reads each query row's visible keys (`InvariantRows`, built once per forward from the masks
`models.attention_rows.attention_masks` makes) compacted in cache order.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidParameterError

KEY_ALIGN = 16      # key_index rows padded to a multiple: one compiled kernel variant for every width


@functools.cache
def _kernels() -> ModuleType:
    # triton is imported on first use: CPU builds of torch come without it
    from ..kernels import triton_invariant
    return triton_invariant


def check_available(device: torch.device) -> None:
    """Raise `InvalidParameterError` unless the invariant mode can run on `device`: CUDA with
    Triton, or the CPU through Triton's interpreter (TRITON_INTERPRET=1, for tests only)."""
    interpreted = device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"
    if device.type != "cuda" and not interpreted:
        raise InvalidParameterError(f"dtype 'invariant' (batch-invariant bf16) runs on CUDA only, not on "
                                    f"{device.type}; use dtype 'auto', 'bfloat16' or 'float32' here")
    try:
        _kernels()
    except ImportError as exc:
        raise InvalidParameterError(f"dtype 'invariant' needs Triton ({exc}); install a CUDA build of "
                                    "torch, which brings it") from None


def check_model(num_heads: int, kv_heads: int, head_dim: int) -> None:
    """The attention kernel's shape limits, checked before any weight is converted."""
    if num_heads % kv_heads or head_dim < 16 or head_dim & (head_dim - 1):
        raise InvalidParameterError(f"dtype 'invariant' needs a power-of-two head size >= 16 and query heads "
                                    f"in whole groups per KV head (this model: {num_heads} heads, {kv_heads} "
                                    f"KV heads of size {head_dim})")


class InvariantLinear(nn.Module):
    """A bf16 linear (or embedding/output table) whose rows do not depend on the batch."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None,
                 out_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.to(weight.dtype), requires_grad=False)
        self.out_features, self.in_features = weight.shape
        self.out_dtype = out_dtype        # float32 for the LM head: the kernel's fp32 sums, unrounded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features).to(self.weight.dtype)
        out = _kernels().invariant_linear(flat, self.weight, self.bias, self.out_dtype)
        return out.view(*lead, self.out_features)

    def rows(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight)


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None, eps: float) -> torch.Tensor:
    """RMS norm over the last dimension of `x` (any leading shape), one fixed sum per row."""
    n = x.shape[-1]
    return _kernels().invariant_rms_norm(x.reshape(-1, n), weight, eps).view(x.shape)


@dataclass(frozen=True)
class InvariantRows:
    """Every query row of one forward (row b * T + t is token t of batch row b): its cache slot,
    how many keys it sees and their cache indices in ascending order (padded past `lengths`)."""
    row_slots: torch.Tensor        # [R] int32
    lengths: torch.Tensor          # [R] int32
    key_index: torch.Tensor        # [R, W] int32, W a multiple of KEY_ALIGN


def _rows(slots: list[int], starts: list[int], T: int, mask: torch.Tensor | None,
          device: torch.device) -> InvariantRows:
    row_slots = torch.tensor(slots, dtype=torch.int32, device=device).repeat_interleave(T)
    if mask is None:        # one decode row (the mask's only None case): it sees its whole slot
        n = starts[0] + T
        visible = torch.ones(1, n, dtype=torch.bool, device=device)
    else:
        visible = mask[:, 0].reshape(len(slots) * T, -1)             # [R, L]
    width = -(-visible.shape[1] // KEY_ALIGN) * KEY_ALIGN
    visible = F.pad(visible, (0, width - visible.shape[1]))
    lengths = visible.sum(dim=1, dtype=torch.int32)
    # a stable sort puts each row's visible indices first, in cache order: the compaction that makes
    # a row's arithmetic independent of hidden entries (siblings in a tree, padding, old window keys)
    key_index = torch.sort((~visible).to(torch.uint8), dim=1, stable=True).indices.to(torch.int32)
    return InvariantRows(row_slots, lengths, key_index)


def invariant_rows(slots: list[int], starts: list[int], T: int, masks: dict[bool, torch.Tensor | None],
                   device: torch.device) -> dict[bool, InvariantRows]:
    """What `attend` needs for full (False) and sliding-window (True) layers, built once per forward
    from `attention_masks`' output."""
    full = _rows(slots, starts, T, masks[False], device)
    if masks[True] is masks[False]:
        return {False: full, True: full}
    return {False: full, True: _rows(slots, starts, T, masks[True], device)}


def attend(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: InvariantRows,
           scale: float) -> torch.Tensor:
    """Query rows `q` `[R, H, D]` over the cache layer `keys`/`values` `[S, C, Hkv, D]` -> `[R, H, D]`
    (the same call shape as the CPU's `decode_attention`)."""
    return _kernels().invariant_attention(q, keys, values, rows.key_index, rows.lengths, rows.row_slots, scale)
