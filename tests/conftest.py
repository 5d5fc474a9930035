"""Shared fixtures: the real default model, loaded once per session in each numeric mode."""
from __future__ import annotations

import os

import pytest

from hastelm.errors import ModelLoadError
from hastelm.models.registry import resolve_model


def _path_or_skip(alias: str):
    try:
        return resolve_model(alias)
    except ModelLoadError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm_path():
    return _path_or_skip("smollm2-135m")


@pytest.fixture(scope="session")
def gemma_path():
    return _path_or_skip("gemma3-270m")


# HASTELM_TEST_DEVICE=cuda runs the model-level tests (exactness, speculative identity) on a GPU
TEST_DEVICE = os.environ.get("HASTELM_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def llm_f32(smollm_path):
    """The default model in float32: the exactness reference (2k context keeps the cache small)."""
    from hastelm import LLM
    return LLM(str(smollm_path), dtype="float32", device=TEST_DEVICE, context_length=2048)


@pytest.fixture(scope="session")
def llm_fast(smollm_path):
    """The default model in its default mode (CPU: packed int4 + bf16; GPU: bf16)."""
    from hastelm import LLM
    return LLM(str(smollm_path), dtype="auto", device=TEST_DEVICE, context_length=2048)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Engines under test set torch's thread count for themselves; later tests get it back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
