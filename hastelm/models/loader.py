"""Load a model and its tokenizer from a `.gguf` file, a Hugging Face folder, or an alias."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError
from ..formats.gguf_file import open_gguf
from ..formats.tokenizer import Tokenizer
from ..system import loading_memory, release_free_memory
from .build import build_transformer
from .config import ModelConfig
from .registry import resolve_model
from .transformer import Transformer
from .weights import GGUFWeights, SafetensorsWeights, WeightSource


@dataclass
class LoadedModel:
    model: Transformer
    tokenizer: Tokenizer
    config: ModelConfig
    path: Path
    name: str


def read_model_files(path: Path) -> tuple[ModelConfig, WeightSource, Tokenizer]:
    if path.is_dir():
        config = ModelConfig.from_hf_folder(path)
        return config, SafetensorsWeights(path, config.architecture), Tokenizer.from_hf_folder(path)
    if path.suffix != ".gguf":
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(f"{path}: expected a .gguf file or a Hugging Face folder")
    gguf = open_gguf(path)
    config = ModelConfig.from_gguf_metadata(gguf.metadata, set(gguf.tensors))
    return config, GGUFWeights(gguf), Tokenizer.from_gguf_metadata(gguf.metadata)


def load_model(model: str | Path, mode: str = "fast", device: str | torch.device = "cpu",
               progress: Callable[[int, int], None] | None = None) -> LoadedModel:
    path = resolve_model(model)
    with loading_memory():
        config, source, tokenizer = read_model_files(path)

        def on_layer(done: int, total: int) -> None:
            release_free_memory()     # after every layer: load-time temporaries never pile up into the peak
            if progress:
                progress(done, total)

        transformer = build_transformer(config, source, mode, device, on_layer)
        del source     # unmaps the file: its pages no longer count as resident
    return LoadedModel(transformer, tokenizer, config, path, str(model))
