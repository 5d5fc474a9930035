"""The engine core: `LLM` (the user's facade) drives the synchronous `Scheduler` (admit, prefill
chunks, decode and verify rows, retire), the same scheduler the server runs on its own thread; both
run the model through the `ModelRunner`, which owns the KV cache.

Names are imported on first use: the decoding strategies import `engine.runner`, and `engine.llm`
imports them."""
from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {"LLM": ".llm", "ModelRunner": ".runner", "Row": ".runner", "PREFILL_CHUNK": ".runner"}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'hastelm.engine' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value
