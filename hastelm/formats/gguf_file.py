"""Open a GGUF file (v2/v3) through the `gguf` package, with clear errors for bad files."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelLoadError


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    ggml_type: int            # gguf.GGMLQuantizationType value
    shape: tuple[int, ...]    # PyTorch order (rows first): the reverse of GGUF's ne[]
    data: np.ndarray          # raw bytes (uint8) or typed array, memory-mapped from the file


@dataclass
class GGUFFile:
    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


def _field_value(field: Any) -> Any:
    value = field.contents()
    return value


def open_gguf(path: str | Path) -> GGUFFile:
    import gguf

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (bad magic {magic!r})")
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as exc:  # the reader raises assorted errors on truncated/corrupt files
        raise ModelLoadError(f"corrupt or truncated GGUF file {path}: {exc}") from None
    metadata: dict[str, Any] = {}
    for key, field in reader.fields.items():
        try:
            metadata[key] = _field_value(field)
        except Exception as exc:
            raise ModelLoadError(f"corrupt GGUF metadata field {key!r} in {path}: {exc}") from None
    version = metadata.get("GGUF.version")
    if version not in (2, 3):
        raise ModelLoadError(f"unsupported GGUF version {version} in {path} (hastelm reads v2 and v3)")
    tensors: dict[str, GGUFTensor] = {}
    for t in reader.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[t.name] = GGUFTensor(t.name, int(t.tensor_type), shape, t.data)
    return GGUFFile(path, metadata, tensors)
