"""The engine core: `LLM` (the user's facade) drives the synchronous `Scheduler` (admit, prefill
chunks, decode and verify rows, retire), the same scheduler the server runs on its own thread."""
from .llm import LLM, PREFILL_CHUNK

__all__ = ["LLM", "PREFILL_CHUNK"]
