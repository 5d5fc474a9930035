"""Shared fixtures: the real default model, loaded once per session in each numeric mode.

A test that uses one of the real-model fixtures (REAL_MODEL_FIXTURES, also through fixtures of
its own) is marked `real_model`: `pytest -m "not real_model"` runs the tiny-model tests alone.
A missing packaged model skips those tests on a developer's machine; in CI (the environment
variable CI is `true` or `1`) it fails them, so that a broken install cannot pass as a green run.
"""
from __future__ import annotations

import os

import pytest

from hastelm.errors import ModelLoadError
from hastelm.models.registry import resolve_model

REAL_MODEL_FIXTURES = frozenset({"smollm_path", "gemma_path", "llm_f32", "llm_fast"})


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def _path_or_skip(alias: str):
    """The packaged model's path; a missing model skips the test, or fails it in CI."""
    try:
        return resolve_model(alias)
    except ModelLoadError as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
    if in_ci():     # outside the except block: the report shows the reason, not a chained traceback
        pytest.fail(f"{reason} (CI={os.environ['CI']}: a missing model fails in CI)", pytrace=False)
    pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that needs a real packaged model (directly or through another fixture)."""
    for item in items:
        if REAL_MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.real_model)


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
    return LLM(str(smollm_path), dtype="float32", device=TEST_DEVICE, context_length=2048, max_batch=64)


@pytest.fixture(scope="session")
def llm_fast(smollm_path):
    """The default model in its default mode (CPU: packed int4 + bf16; GPU: bf16)."""
    from hastelm import LLM
    return LLM(str(smollm_path), dtype="auto", device=TEST_DEVICE, context_length=2048, max_batch=64)


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """Engines under test set torch's thread count for themselves; later tests get it back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
