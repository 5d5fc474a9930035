"""hastelm: a PyTorch LLM inference engine with the published decoding accelerations built in."""
from __future__ import annotations

from importlib import import_module
from typing import Any

# Imported on first use, so torch-free tools (the CLI's help, the benchmark's peer processes,
# whose peak memory must not include torch) can import hastelm submodules cheaply.
_EXPORTS = {"LLM": ".engine", "SamplingParams": ".decoding.sampling", "Completion": ".decoding.step",
            "StepResult": ".decoding.step", "HastelmError": ".errors"}

__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hastelm' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
