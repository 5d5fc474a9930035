"""What attention needs for one forward, built once for all layers from its `ForwardBatch`: where
the new keys go, which cached and new entries every query row may see (full and sliding-window
layers), and the per-row description the native CPU kernels take."""
from __future__ import annotations

import torch

from ..kernels.cpu import KernelRows
from ..kv.cache import KVCache

Masks = dict[bool, torch.Tensor | None]      # keyed by "is a sliding-window layer"


def write_index(slots: list[int], starts: list[int], T: int,
                device: torch.device) -> tuple[int, int] | tuple[torch.Tensor, torch.Tensor]:
    """Where the new keys go: (slot, start) for one row, else index tensors `[B, T]`."""
    if len(slots) == 1:
        return (slots[0], starts[0])
    slot_idx = torch.tensor(slots, device=device)[:, None].expand(-1, T)
    idx = torch.tensor(starts, device=device)[:, None] + torch.arange(T, device=device)
    return (slot_idx, idx)


def attention_masks(window: int | None, cache: KVCache, slots: list[int], starts: list[int],
                    positions: torch.Tensor, T: int, L: int, tree_mask: torch.Tensor | None,
                    device: torch.device) -> Masks:
    """Boolean masks `[B, 1, T, L]` for full and sliding layers (None when all keys are visible):
    each row's cached prefix (entries whose recorded position is >= 0), then its new entries
    causally or by `tree_mask`; sliding layers also drop keys `window` or more positions back."""
    B = len(slots)
    if B == 1 and tree_mask is None and T == 1 and (window is None or L <= window):
        return {False: None, True: None}
    rel = torch.arange(L, device=device)[None, :] - torch.tensor(starts, device=device)[:, None]   # [B, L]
    q_idx = torch.arange(T, device=device)[None, :, None]
    mask = rel[:, None, :] <= q_idx                                    # prefix + causal new part
    if tree_mask is not None:
        tm = tree_mask if tree_mask.dim() == 3 else tree_mask.expand(B, T, T)
        in_new = (rel >= 0)[:, None, :].expand(B, T, L)
        cols = rel.clamp(0, T - 1)[:, None, :].expand(B, T, L)
        mask = torch.where(in_new, torch.gather(tm.to(device), 2, cols), mask)
    key_pos = cache.positions[torch.tensor(slots)][:, :L].to(device)   # [B, L] (kept on the host)
    mask = mask & (key_pos >= 0)[:, None, :]
    masks: Masks = {False: mask[:, None]}
    if window is not None:
        near = (positions[:, :, None] - key_pos[:, None, :]) < window
        masks[True] = (mask & near)[:, None]
    else:
        masks[True] = masks[False]
    return masks


def native_rows(slots: list[int], starts: list[int], T: int, masks: Masks,
                rot_g: torch.Tensor, rot_l: torch.Tensor) -> dict[bool, KernelRows]:
    """What the native kernels need for every query row: row (b, t) is written at index
    starts[b] + t of slot b, rotated for its position, and reads the slot's keys up to itself
    where the mask allows."""
    row_slots = torch.tensor([s for s in slots for _ in range(T)], dtype=torch.long)
    lengths = torch.tensor([st + t + 1 for st in starts for t in range(T)], dtype=torch.long)

    def rows(mask: torch.Tensor | None, rot: torch.Tensor) -> KernelRows:
        visible = None if mask is None else mask[:, 0].reshape(len(slots) * T, -1).contiguous()
        return KernelRows(row_slots, lengths, visible, torch.view_as_real(rot).contiguous())

    full = rows(masks[False], rot_g)
    same = masks[True] is masks[False] and rot_l is rot_g      # no sliding-window layers
    return {False: full, True: full if same else rows(masks[True], rot_l)}
