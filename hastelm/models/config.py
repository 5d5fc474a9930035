"""Model hyper-parameters, named as in Hugging Face `config.json`, readable from GGUF metadata too."""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import ModelLoadError, UnsupportedError

SUPPORTED_ARCHITECTURES = ("llama", "qwen2", "gemma3")
_HF_ARCH = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2",
            "Gemma3ForCausalLM": "gemma3"}


def _hf_rope(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    """RoPE fields from transformers 4 names (rope_theta, rope_scaling, rope_local_base_freq) or
    transformers 5's `rope_parameters` (one dict, or one per layer type as gemma3 saves it)."""
    params = cfg.get("rope_parameters") or {}
    full = params.get("full_attention", params)
    local = params.get("sliding_attention", {})
    scaling = full if full.get("rope_type", "default") != "default" else cfg.get("rope_scaling")
    local_default = 10000.0 if arch == "gemma3" else None
    return {"rope_theta": full.get("rope_theta", cfg.get("rope_theta", 10000.0)), "rope_scaling": scaling,
            "rope_local_base_freq": local.get("rope_theta", cfg.get("rope_local_base_freq", local_default))}


@dataclass
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_local_base_freq: float | None = None     # gemma3: base of the sliding-window layers
    rope_scaling: dict[str, Any] | None = None     # llama3 / linear scaling
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False                   # qwen2 has q/k/v biases
    sliding_window: int | None = None
    layer_types: list[str] = field(default_factory=list)   # "full_attention" | "sliding_attention"
    query_pre_attn_scalar: float | None = None
    hidden_activation: str = "silu"                # "silu" (SwiGLU) or "gelu_pytorch_tanh" (GeGLU)
    final_logit_softcapping: float | None = None

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedError(f"unsupported architecture {self.architecture!r} "
                                   f"(hastelm runs {', '.join(SUPPORTED_ARCHITECTURES)})")
        if not self.layer_types:
            self.layer_types = ["full_attention"] * self.num_hidden_layers

    @property
    def is_gemma(self) -> bool:
        return self.architecture == "gemma3"

    @property
    def attn_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def layer_is_sliding(self, i: int) -> bool:
        return self.sliding_window is not None and self.layer_types[i] == "sliding_attention"

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> "ModelConfig":
        cfg = dict(cfg.get("text_config", cfg)) if "text_config" in cfg else dict(cfg)
        archs = cfg.get("architectures") or []
        arch = _HF_ARCH.get(archs[0]) if archs else None
        arch = arch or {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gemma3_text": "gemma3",
                        "gemma3": "gemma3"}.get(cfg.get("model_type", ""))
        if arch is None:
            raise UnsupportedError(f"unsupported architecture {archs or cfg.get('model_type')!r} "
                                   f"(hastelm runs {', '.join(SUPPORTED_ARCHITECTURES)})")
        n_heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_heads
        n_layers = cfg["num_hidden_layers"]
        layer_types = cfg.get("layer_types") or []
        sliding = cfg.get("sliding_window")
        if arch == "gemma3" and not layer_types:
            pattern = cfg.get("sliding_window_pattern", 6)
            layer_types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                           for i in range(n_layers)]
        if arch != "gemma3" and not cfg.get("use_sliding_window", arch == "llama"):
            sliding = None  # qwen2 declares a window but does not use it by default
        if arch == "llama" and sliding:
            layer_types = ["sliding_attention"] * n_layers  # mistral v0.1
        act = cfg.get("hidden_activation") or cfg.get("hidden_act") or "silu"
        return cls(
            architecture=arch, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"], num_hidden_layers=n_layers,
            num_attention_heads=n_heads, num_key_value_heads=cfg.get("num_key_value_heads", n_heads),
            head_dim=head_dim, rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            **_hf_rope(cfg, arch),
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            tie_word_embeddings=cfg.get("tie_word_embeddings", arch == "gemma3"),
            attention_bias=cfg.get("attention_bias", arch == "qwen2"),
            sliding_window=sliding, layer_types=layer_types,
            query_pre_attn_scalar=cfg.get("query_pre_attn_scalar"),
            hidden_activation=act, final_logit_softcapping=cfg.get("final_logit_softcapping"),
        )

    @classmethod
    def from_hf_folder(cls, folder: Path) -> "ModelConfig":
        path = folder / "config.json"
        if not path.is_file():
            raise ModelLoadError(f"{folder} has no config.json")
        try:
            return cls.from_hf_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelLoadError(f"bad config.json in {folder}: {exc}") from None

    @classmethod
    def from_gguf_metadata(cls, md: dict[str, Any], tensor_names: set[str]) -> "ModelConfig":
        arch = str(md.get("general.architecture", ""))
        if arch not in SUPPORTED_ARCHITECTURES:
            raise UnsupportedError(f"unsupported architecture {arch!r} "
                                   f"(hastelm runs {', '.join(SUPPORTED_ARCHITECTURES)})")

        def get(key: str, default: Any = None) -> Any:
            return md.get(f"{arch}.{key}", default)

        try:
            hidden = int(get("embedding_length"))
            n_heads = int(get("attention.head_count"))
            n_layers = int(get("block_count"))
            vocab = int(get("vocab_size") or len(md["tokenizer.ggml.tokens"]))
            n_kv = get("attention.head_count_kv", n_heads)
            ffn = int(get("feed_forward_length"))
        except (TypeError, KeyError) as exc:
            raise ModelLoadError(f"GGUF metadata lacks a required {arch} field: {exc}") from None
        head_dim = int(get("attention.key_length") or hidden // n_heads)
        sliding = get("attention.sliding_window")
        layer_types: list[str] = []
        if arch == "gemma3":
            layer_types = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                           for i in range(n_layers)]
        rope_scaling = None
        if get("rope.scaling.type") == "linear":
            rope_scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
        return cls(
            architecture=arch, vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
            num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=int(n_kv),
            head_dim=head_dim, rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(get("rope.freq_base", 10000.0)),
            rope_local_base_freq=10000.0 if arch == "gemma3" else None,
            rope_scaling=rope_scaling, max_position_embeddings=int(get("context_length", 2048)),
            tie_word_embeddings="output.weight" not in tensor_names,
            attention_bias="blk.0.attn_q.bias" in tensor_names,
            sliding_window=int(sliding) if sliding and arch == "gemma3" else None,
            layer_types=layer_types,
            query_pre_attn_scalar=None,
            hidden_activation="gelu_pytorch_tanh" if arch == "gemma3" else "silu",
        )

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
