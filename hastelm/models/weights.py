"""Named weight sources: a GGUF file or a safetensors folder, both addressed by GGUF tensor names."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

import torch

from ..errors import ModelLoadError
from ..formats.gguf_file import GGUFFile
from ..formats.ggml_blocks import check_supported, dequantize, int4_groups

Int4Groups = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class WeightSource(Protocol):
    rotate_half_layout: bool     # q/k rows in HF "rotate half" order (must be permuted to interleaved)
    norms_store_offset: bool     # gemma norms stored as w (multiply by 1 + w) rather than 1 + w

    def has(self, name: str) -> bool: ...
    def shape(self, name: str) -> tuple[int, ...]: ...
    def float(self, name: str, rows: slice | None = None) -> torch.Tensor: ...
    def int4(self, name: str) -> Int4Groups | None: ...


class GGUFWeights:
    def __init__(self, gguf: GGUFFile) -> None:
        self.file = gguf
        for t in gguf.tensors.values():   # fail before spending time converting the others
            check_supported(t.ggml_type, f"{gguf.path}: tensor {t.name!r}")
        # llama.cpp's converter already permuted llama q/k into interleaved pairs; others are NeoX
        self.rotate_half_layout = gguf.architecture != "llama"
        self.norms_store_offset = False

    def has(self, name: str) -> bool:
        return name in self.file.tensors

    def _get(self, name: str):
        try:
            return self.file.tensors[name]
        except KeyError:
            raise ModelLoadError(f"{self.file.path} lacks tensor {name!r}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._get(name).shape

    def float(self, name: str, rows: slice | None = None) -> torch.Tensor:
        t = self._get(name)
        data, shape = t.data, t.shape
        if rows is not None:   # quantized rows are whole blocks, so a row range is a byte range
            data = data[rows]
            shape = (data.shape[0], *shape[1:])
        try:
            out = dequantize(data, t.ggml_type, shape)
            self.file.release(name, rows)
            return out
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"corrupt tensor {name!r} in {self.file.path}: {exc}") from None

    def int4(self, name: str) -> Int4Groups | None:
        t = self._get(name)
        groups = int4_groups(t.data, t.ggml_type, t.shape)
        if groups is not None:
            self.file.release(name)
        return groups


_HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_HF_LAYER = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm", "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


class SafetensorsWeights:
    """A Hugging Face folder (`*.safetensors`, single or sharded), read lazily by GGUF name."""

    rotate_half_layout = True

    def __init__(self, folder: Path, architecture: str) -> None:
        from safetensors import safe_open

        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"{folder} has no *.safetensors files")
        self.norms_store_offset = architecture == "gemma3"
        self._ffn_norm_hf = "pre_feedforward_layernorm" if architecture == "gemma3" else "post_attention_layernorm"
        self._where: dict[str, object] = {}
        for f in files:
            try:
                handle = safe_open(str(f), framework="pt")
            except Exception as exc:
                raise ModelLoadError(f"corrupt safetensors file {f}: {exc}") from None
            for key in handle.keys():
                self._where[key] = handle

    def _hf_name(self, name: str) -> str:
        if name in _HF_NAMES:
            return _HF_NAMES[name]
        _, idx, part, kind = name.split(".")
        if part == "ffn_norm":
            return f"model.layers.{idx}.{self._ffn_norm_hf}.{kind}"
        if part == "post_attention_norm" and not self.norms_store_offset:
            raise KeyError(name)
        return f"model.layers.{idx}.{_HF_LAYER[part]}.{kind}"

    def has(self, name: str) -> bool:
        try:
            return self._hf_name(name) in self._where
        except KeyError:
            return False

    def _handle(self, name: str) -> tuple[str, object]:
        hf = self._hf_name(name)
        if hf not in self._where:
            raise ModelLoadError(f"safetensors folder lacks tensor {hf!r}")
        return hf, self._where[hf]

    def shape(self, name: str) -> tuple[int, ...]:
        hf, handle = self._handle(name)
        return tuple(handle.get_slice(hf).get_shape())  # type: ignore[attr-defined]

    def float(self, name: str, rows: slice | None = None) -> torch.Tensor:
        hf, handle = self._handle(name)
        if rows is None:
            return handle.get_tensor(hf).float()  # type: ignore[attr-defined]
        return handle.get_slice(hf)[rows].float()  # type: ignore[attr-defined]

    def int4(self, name: str) -> Int4Groups | None:
        return None


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"cannot read {path}: {exc}") from None
