"""One decoder that covers llama (SmolLM2, TinyLlama, Llama 2/3, Mistral), qwen2 and gemma3.

Differences between the families are data (config flags and which weights exist), not forks:
qwen2 adds q/k/v biases; gemma3 adds q/k norms, sandwich norms, GeGLU, scaled embeddings and
sliding-window layers with their own RoPE base. Layer skipping is part of the batch description.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels.cpu import KernelRows, decode_attention, native, rms_norm, rope_qkv, silu_mul
from ..kv.cache import KVCache
from .attention_rows import attention_masks, native_rows, write_index
from .batch import ForwardBatch
from .config import ModelConfig
from .invariant import InvariantRows, attend, invariant_rows
from .invariant import rms_norm as invariant_norm
from .rope import apply_rope, rope_table


def residual_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The residual stream's dtype (norm weights are kept in it too)."""
    return torch.float32 if dtype == torch.bfloat16 and device.type == "cpu" else dtype


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor
    qkv: nn.Module                      # fused q, k, v projection
    o: nn.Module
    ffn_norm: torch.Tensor
    gate_up: nn.Module                  # fused gate and up projection
    down: nn.Module
    qk_norm: torch.Tensor | None = None     # gemma3: [H + Hkv, D] (q_norm per q head, k_norm per k head)
    post_attn_norm: torch.Tensor | None = None
    post_ffn_norm: torch.Tensor | None = None


class Layer(nn.Module):
    def __init__(self, w: LayerWeights) -> None:
        super().__init__()
        self.qkv, self.o, self.gate_up, self.down = w.qkv, w.o, w.gate_up, w.down
        for name in ("attn_norm", "ffn_norm", "qk_norm", "post_attn_norm", "post_ffn_norm"):
            t = getattr(w, name)
            self.register_buffer(name, t, persistent=False)
        # the decode step's hot path, in a plain attribute: nn.Module's attribute lookup and call
        # machinery cost ~0.4 ms per 30-layer step. Modules keep their identity when moved, so
        # these bound forwards stay valid; the norms are read from _buffers on each use.
        self.__dict__["linears"] = (self.qkv.forward, self.o.forward, self.gate_up.forward, self.down.forward)

    @property
    def norms(self) -> tuple[torch.Tensor | None, ...]:
        """attn_norm, ffn_norm, qk_norm, post_attn_norm, post_ffn_norm."""
        b = self._buffers
        return b["attn_norm"], b["ffn_norm"], b["qk_norm"], b["post_attn_norm"], b["post_ffn_norm"]


class Transformer(nn.Module):
    def __init__(self, config: ModelConfig, embedding: nn.Module, layers: list[LayerWeights],
                 final_norm: torch.Tensor, lm_head: nn.Module, dtype: torch.dtype, *,
                 invariant: bool = False) -> None:
        super().__init__()
        self.config = config
        self.dtype = dtype                     # KV-cache, attention and matmul-input dtype
        # the residual stream and its elementwise ops stay float32: CPU bf16 elementwise ops and
        # mixed-dtype norms are slower than float32 ones, and the sums keep their precision
        self.residual_dtype = residual_dtype(dtype, final_norm.device)
        self.embedding = embedding              # has .rows(tokens); may be lm_head itself (tied)
        self.layers = nn.ModuleList(Layer(w) for w in layers)
        self.__dict__["layer_list"] = list(self.layers)     # indexing a ModuleList costs ~4 us
        self.register_buffer("final_norm", final_norm, persistent=False)
        self.lm_head = lm_head
        c = config
        self.n_q, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.attn_scale = c.attn_scale or self.head_dim ** -0.5
        self.embed_scale = c.hidden_size ** 0.5 if c.is_gemma else None
        self.act = (lambda x: F.gelu(x, approximate="tanh")) if c.hidden_activation.startswith("gelu") else F.silu
        # bf16 CPU: every query row (decode, prefill, draft verification) through hastelm's one-token
        # attention kernel, so all three compute a token's row with the same arithmetic
        self.decode_kernel = (dtype == torch.bfloat16 and self.device.type == "cpu" and self.head_dim % 16 == 0
                              and self.head_dim <= 256 and native() is not None)
        # fast CPU mode: norms in one native call (torch runs six ops per norm here)
        self.norm_kernel = (dtype == torch.bfloat16 and self.residual_dtype == torch.float32
                            and self.device.type == "cpu" and c.hidden_size % 16 == 0 and native() is not None)
        # and SwiGLU's silu(gate) * up in one call too
        self.swiglu_kernel = (self.norm_kernel and not c.hidden_activation.startswith("gelu")
                              and c.intermediate_size % 16 == 0)
        # the "invariant" mode (CUDA): every query row through the batch-invariant Triton attention
        # over its visible keys compacted in cache order, as the CPU kernel above does
        self.invariant = invariant
        self._rope_global: torch.Tensor | None = None
        self._rope_local: torch.Tensor | None = None
        # when set, called with (layer index, rotated queries [B, T, Hq, D]) after the cache write:
        # KV eviction policies read the queries the fast attention kernel does not return
        self.query_hook: Callable[[int, torch.Tensor], None] | None = None

    @property
    def device(self) -> torch.device:
        return self.final_norm.device

    def new_cache(self, capacity: int | None = None, slots: int = 1) -> KVCache:
        capacity = min(capacity or self.config.max_position_embeddings, self.config.max_position_embeddings)
        return KVCache(self.config.num_hidden_layers, self.n_kv, self.head_dim, capacity, slots,
                       dtype=self.dtype, device=self.device)

    def _rope(self, local: bool, max_pos: int) -> torch.Tensor:
        # tables grow on demand so a short chat never builds a 128k-entry table
        c = self.config
        local = local and c.rope_local_base_freq is not None   # mistral: one RoPE for all layers
        cur = self._rope_local if local else self._rope_global
        if cur is None or cur.shape[0] < max_pos:
            size = max(2048, 1 << (max_pos - 1).bit_length())
            base = c.rope_local_base_freq if local else c.rope_theta
            cur = rope_table(self.head_dim, base, size, None if local else c.rope_scaling, self.device)
            if local:
                self._rope_local = cur
            else:
                self._rope_global = cur
        return cur

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embedding.rows(tokens).to(self.residual_dtype)
        if self.embed_scale is not None:
            x = x * torch.tensor(self.embed_scale, dtype=self.dtype).to(self.residual_dtype)
        return x

    def norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMS norm over the hidden size (residual-stream rows)."""
        if self.norm_kernel:
            return rms_norm(x, weight, self.config.rms_norm_eps)
        if self.invariant:
            return invariant_norm(x, weight, self.config.rms_norm_eps)
        return F.rms_norm(x, (x.shape[-1],), weight, self.config.rms_norm_eps)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.norm(hidden, self.final_norm)
        out = self.lm_head(x).float()
        cap = self.config.final_logit_softcapping
        return torch.tanh(out / cap) * cap if cap else out

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, cache: KVCache) -> torch.Tensor:
        """Run `batch` (see `ForwardBatch`), writing its keys and values into `cache` at each row's
        `starts` index; the cache's bookkeeping (lengths, positions) is the caller's.

        New entries see their slot's cached prefix; among themselves they attend causally, or by
        the tree mask. A padded batch with `valid` computes each row exactly as alone. Returns
        float32 logits `[B, T, V]` (`[B, 1, V]` at each row's last real token with `last_only`).
        """
        B, T = batch.shape
        tokens, positions = batch.tokens.to(self.device), batch.positions.to(self.device)   # no-ops when there
        slots, starts = batch.slots, batch.starts
        L = max(starts) + T
        write = write_index(slots, starts, T, self.device)
        masks = attention_masks(self.config.sliding_window, cache, slots, starts, positions, T, L,
                                batch.tree_mask, self.device)
        top = int(positions.max()) + 1
        rot_g = self._rope(False, top)[positions]
        rot_l = self._rope(True, top)[positions] if self.config.sliding_window else rot_g
        x = self.embed(tokens)
        run = range(len(self.layers)) if batch.layers is None else batch.layers
        rows = None if batch.valid is None else list(zip(starts, batch.valid))
        kernel_rows: dict[bool, KernelRows] | dict[bool, InvariantRows] | None = None
        if self.decode_kernel:
            kernel_rows = native_rows(slots, starts, T, masks, rot_g, rot_l)
        elif self.invariant:
            kernel_rows = invariant_rows(slots, starts, T, masks, self.device)
        for i in run:
            sliding = self.config.layer_is_sliding(i)
            x = self._layer(i, x, cache, slots, write, L, masks[sliding], rot_l if sliding else rot_g, rows,
                            None if kernel_rows is None else kernel_rows[sliding])
        if not batch.last_only:
            return self.logits(x)
        if batch.valid is None:
            return self.logits(x[:, -1:])
        last = torch.tensor(batch.valid, device=self.device) - 1
        return self.logits(x[torch.arange(B, device=self.device), last][:, None])

    # ---- pieces --------------------------------------------------------------------------
    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of `q` `[B, T, H, D]` over cached `k`, `v` `[B, L, Hkv, D]` -> `[B, H, T, D]`."""
        B, T, H, D = q.shape
        if T == 1 and H != self.n_kv and q.device.type == "cpu" and q.dtype != torch.float32:
            # decoding: the query heads sharing a KV head become that head's query rows; the CPU's
            # bf16 kernel runs this 4-6x faster than enable_gqa (0.02 vs 0.08 ms at 80 keys, 0.18
            # vs 1.0 ms at 1000) with the same per-row arithmetic
            out = F.scaled_dot_product_attention(
                q.view(B, self.n_kv, H // self.n_kv, D), k.transpose(1, 2), v.transpose(1, 2).to(q.dtype),
                attn_mask=mask if mask is None or mask.shape[1] == 1 else mask.reshape(B, self.n_kv, H // self.n_kv, -1),
                scale=self.config.attn_scale)
            return out.reshape(B, H, 1, D)
        return F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2).to(q.dtype),
            attn_mask=mask, scale=self.config.attn_scale, enable_gqa=self.n_kv != self.n_q)

    def _attention(self, qkv: torch.Tensor, layer: Layer, keys: torch.Tensor, values: torch.Tensor,
                   cache: KVCache, slots: list[int], write: tuple, L: int, mask: torch.Tensor | None,
                   rot: torch.Tensor, rows: list[tuple[int, int]] | None,
                   kernel_rows: KernelRows | InvariantRows | None) -> torch.Tensor:
        """RoPE, the cache write and attention of `qkv` `[B, T, nq + 2 nkv, D]` -> `[B, nq, T, D]`."""
        B, T = qkv.shape[:2]
        nq, nkv, hd = self.n_q, self.n_kv, self.head_dim
        qk, v = qkv[:, :, :nq + nkv], qkv[:, :, nq + nkv:].to(self.dtype)
        if layer.qk_norm is not None:
            eps = self.config.rms_norm_eps
            qk = (invariant_norm(qk, None, eps) if self.invariant else F.rms_norm(qk, (hd,), None, eps)) * layer.qk_norm
        qk = apply_rope(qk, rot).to(self.dtype)
        q, k = qk[:, :, :nq], qk[:, :, nq:]
        if isinstance(write[0], int):
            s, st = write
            keys[s, st:st + T] = k[0]
            values[s, st:st + T] = v[0]
        else:
            keys[write] = k
            values[write] = v
        if self.query_hook is not None:
            self.query_hook(self.layer_list.index(layer), q)
        if kernel_rows is not None:
            # every query row (decode, prompt chunk, draft-tree node) through the one-token kernel:
            # all three compute a token's row with the same arithmetic
            run = attend if isinstance(kernel_rows, InvariantRows) else decode_attention
            att = run(q.reshape(B * T, nq, hd), keys, values, kernel_rows, self.attn_scale)
            att = att.view(B, T, nq, hd).transpose(1, 2)
        elif isinstance(write[0], int):
            att = self._attend(q, keys[s:s + 1, :L], values[s:s + 1, :L], mask)
        elif T == 1:
            # a decode batch: each row attends over its own prefix only, exactly as it would alone
            # (padding rows to the longest one changes the kernel's summation order)
            att = torch.cat([self._attend(q[r:r + 1], keys[s:s + 1, :n], values[s:s + 1, :n],
                                          None if mask is None else mask[r:r + 1, ..., :n])
                             for r, (s, n) in enumerate((s, cache.lengths[s] + 1) for s in slots)])
        elif rows is None:
            sl = torch.tensor(slots, device=self.device)
            att = self._attend(q, keys[sl, :L], values[sl, :L], mask)
        else:   # a padded prefill batch: each row over its own prefix and tokens, as alone
            att = q.new_zeros(B, nq, T, hd)
            for r, (s, (start, n)) in enumerate(zip(slots, rows)):
                end = start + n
                att[r:r + 1, :, :n] = self._attend(q[r:r + 1, :n], keys[s:s + 1, :end], values[s:s + 1, :end],
                                                   None if mask is None else mask[r:r + 1, ..., :n, :end])
        return att

    def _head_mask(self, mask: torch.Tensor | None, hidden: torch.Tensor) -> torch.Tensor:
        """The layer's mask `[B, 1, T, L]` narrowed per query head by `hidden` `[B, Hkv, L]`."""
        visible = ~hidden.repeat_interleave(self.n_q // self.n_kv, dim=1)[:, :, None, :]
        return visible if mask is None else mask & visible

    def _layer(self, i: int, x: torch.Tensor, cache: KVCache, slots: list[int], write: tuple,
               L: int, mask: torch.Tensor | None, rot: torch.Tensor,
               rows: list[tuple[int, int]] | None = None,
               kernel_rows: KernelRows | InvariantRows | None = None) -> torch.Tensor:
        layer = self.layer_list[i]
        qkv_proj, o_proj, gate_up_proj, down_proj = layer.linears
        attn_norm, ffn_norm, qk_norm, post_attn_norm, post_ffn_norm = layer.norms
        B, T, _ = x.shape
        nq, nkv, hd = self.n_q, self.n_kv, self.head_dim
        rd = self.residual_dtype
        h = self.norm(x, attn_norm)
        qkv = qkv_proj(h)
        keys, values = cache.keys[i], cache.values[i]
        hidden = cache.hidden_mask(i, slots, L)      # entries evicted from some heads only (kv/policies)
        if hidden is not None:      # the kernels' masks are per row, not per head: torch reads these
            mask, kernel_rows = self._head_mask(mask, hidden), None
        if isinstance(kernel_rows, KernelRows) and qk_norm is None and qkv.dtype == torch.float32:
            # fast CPU mode: RoPE and the cache write in one call, then every query row (decode,
            # prompt chunk, draft-tree node) through the one-token kernel: the same arithmetic
            q = rope_qkv(qkv, kernel_rows, keys, values, nq)
            if self.query_hook is not None:
                self.query_hook(i, q.view(B, T, nq, hd))
            att = decode_attention(q, keys, values, kernel_rows, self.attn_scale).view(B, T, nq * hd)
        else:
            att = self._attention(qkv.view(B, T, nq + 2 * nkv, hd), layer, keys, values, cache, slots, write,
                                  L, mask, rot, rows, kernel_rows).transpose(1, 2).reshape(B, T, nq * hd)
        att = o_proj(att)
        if att.dtype != rd:
            att = att.to(rd)
        if post_attn_norm is not None:
            att = self.norm(att, post_attn_norm)
        x = x + att
        h = self.norm(x, ffn_norm)
        gate_up = gate_up_proj(h)
        if self.swiglu_kernel and gate_up.dtype == torch.float32:
            f = down_proj(silu_mul(gate_up))
        else:
            gate, up = gate_up.chunk(2, dim=-1)
            f = down_proj(self.act(gate) * up)
        if f.dtype != rd:
            f = f.to(rd)
        if post_ffn_norm is not None:
            f = self.norm(f, post_ffn_norm)
        return x + f
