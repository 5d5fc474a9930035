"""KV cache: a dense preallocated cache addressed by slot and index, with trim/keep."""
from .cache import KVCache

__all__ = ["KVCache"]
