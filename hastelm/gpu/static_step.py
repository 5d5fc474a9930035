"""One decode or verification step with static shapes: the function CUDA graphs capture (gpu/graphs.py).

`Transformer.forward` serves every batch shape (prefill, trees, padded rows) and decides what to
run from host-side lists, with host syncs such as `int(positions.max())`. This step computes `T`
new tokens for each of `B` rows (T = 1: a decode step; T > 1: a draft tree, or a chain, verified)
from device tensors alone: no `.item()`, no tensors built from lists, no shape that depends on
data. Its only Python-level choices are the shapes and `key_len`, the static key bucket every row
attends over (masked to what the row may see), so each (B, T, key_len) is one fixed sequence of
kernels. It reads the model's weights and writes the model's own `KVCache`, with the same layout
and arithmetic as the eager forward (llama/qwen2 families; see `supports`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..kv.cache import KVCache
from ..models.transformer import Transformer


def supports(model: Transformer) -> bool:
    """Whether the static step computes what `model.forward` does: no sliding-window layers, no
    q/k norms or sandwich norms, no scaled embeddings (gemma3 is declined), dense RoPE positions,
    and not the batch-invariant mode (its own kernels)."""
    c = model.config
    if c.is_gemma or model.embed_scale is not None or model.invariant:
        return False
    if any(c.layer_is_sliding(i) for i in range(c.num_hidden_layers)):
        return False
    return all(all(n is None for n in layer.norms[2:]) for layer in model.layer_list)


class StaticDecodeStep:
    """`step(tokens, positions, slot_ids, write_index, key_len, src, tree)` -> (float32 logits
    `[B, T, V]`, greedy ids `[B, T]`), all on the model's device.

    Row b embeds `tokens[b]` `[T]`, rotated for `positions[b]`, writes their keys and values at
    `write_index[b] + t` of slot `slot_ids[b]`; token t attends over the slot's entries before
    `write_index[b]` and, among the new ones, those `tree[b, t]` allows (None: causal; T = 1:
    itself). Keys `[0, key_len)` are read, the rest masked; they must hold finite values (see
    `KVCache.zero_to`). `src[b]` is the row whose keys and values row b writes: padding rows that
    duplicate row 0 set it to 0, so duplicate cache writes carry bitwise-equal values.
    """

    def __init__(self, model: Transformer, cache: KVCache, max_positions: int | None = None) -> None:
        if not supports(model):
            raise ValueError(f"the static decode step does not support {model.config.architecture} models "
                             "with sliding windows, q/k norms, sandwich norms or the invariant mode")
        self.model, self.cache = model, cache
        self.max_positions = max_positions or max(cache.capacity, model.config.max_position_embeddings)
        # RoPE as real cos/sin pairs: complex tensors do not fuse under torch.compile (inductor
        # falls back to eager for them); real arithmetic does, and on the same table values
        rot = torch.view_as_real(model._rope(False, self.max_positions)[:self.max_positions])
        self.cos, self.sin = rot[..., 0].contiguous(), rot[..., 1].contiguous()
        self.key_index = torch.arange(cache.capacity, device=model.device)

    def mask(self, write_index: torch.Tensor, key_len: int, T: int,
             tree: torch.Tensor | None) -> torch.Tensor:
        """Additive mask `[B, T, L]`: the slot's prefix, then the new entries the tree allows."""
        rel = self.key_index[:key_len][None, :] - write_index[:, None]            # [B, L]
        if T == 1:
            visible = (rel <= 0)[:, None, :]
        else:
            new = (rel >= 0) & (rel < T)
            if tree is None:
                among = rel[:, None, :] <= torch.arange(T, device=rel.device)[None, :, None]
            else:
                cols = rel.clamp(0, T - 1)[:, None, :].expand(-1, T, -1)
                among = torch.gather(tree, 2, cols)
            visible = (rel < 0)[:, None, :] | (new[:, None, :] & among)
        return torch.zeros(visible.shape, dtype=self.model.dtype, device=visible.device).masked_fill_(
            ~visible, float("-inf"))

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, slot_ids: torch.Tensor,
                 write_index: torch.Tensor, key_len: int, src: torch.Tensor | None = None,
                 tree: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        m, cache = self.model, self.cache
        if tokens.dim() == 1:                   # one token per row
            tokens, positions = tokens[:, None], positions[:, None]
        B, T = tokens.shape
        nq, nkv, hd = m.n_q, m.n_kv, m.head_dim
        g = nq // nkv
        rd, dt = m.residual_dtype, m.dtype
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]   # [B, T, 1, D/2]
        # one additive mask for all layers; the query heads sharing a KV head become that head's
        # query rows (g * T of them), so plain SDPA with a mask serves GQA without repeating keys
        mask = self.mask(write_index, key_len, T, tree)
        mask = mask[:, None, None].expand(B, 1, g, T, key_len).reshape(B, 1, g * T, key_len)
        write = (slot_ids[:, None].expand(B, T), write_index[:, None] + torch.arange(T, device=tokens.device))
        x = m.embed(tokens)                                                       # [B, T, hidden]
        for i, layer in enumerate(m.layer_list):
            qkv_proj, o_proj, gate_up_proj, down_proj = layer.linears
            attn_norm, ffn_norm = layer.norms[:2]
            qkv = qkv_proj(m.norm(x, attn_norm))
            if src is not None:
                qkv = qkv.index_select(0, src)
            qk = _rope(qkv[..., :(nq + nkv) * hd].view(B, T, nq + nkv, hd), cos, sin).to(dt)
            v = qkv[..., (nq + nkv) * hd:].view(B, T, nkv, hd).to(dt)
            keys, values = cache.keys[i], cache.values[i]
            keys.index_put_(write, qk[:, :, nq:])
            values.index_put_(write, v)
            k = keys[:, :key_len].index_select(0, slot_ids).transpose(1, 2)        # [B, nkv, L, D]
            vv = values[:, :key_len].index_select(0, slot_ids).transpose(1, 2)
            q = qk[:, :, :nq].reshape(B, T, nkv, g, hd).permute(0, 2, 3, 1, 4).reshape(B, nkv, g * T, hd)
            att = F.scaled_dot_product_attention(q, k, vv, attn_mask=mask, scale=m.config.attn_scale)
            att = att.view(B, nkv, g, T, hd).permute(0, 3, 1, 2, 4).reshape(B, T, nq * hd)
            x = x + o_proj(att).to(rd)
            gate, up = gate_up_proj(m.norm(x, ffn_norm)).chunk(2, dim=-1)
            x = x + down_proj(m.act(gate) * up).to(rd)
        logits = m.logits(x)
        return logits, logits.argmax(dim=-1)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`x` `[B, T, H, D]` in interleaved pairs (models/rope.py) rotated by `cos`/`sin`
    `[B, T, 1, D/2]`; float32 arithmetic, as `apply_rope`'s complex product."""
    pairs = x.float().unflatten(-1, (-1, 2))
    a, b = pairs[..., 0], pairs[..., 1]
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2)
