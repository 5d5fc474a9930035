"""Process-level settings the engine makes when it loads a model."""
from __future__ import annotations

import platform
import resource

import pytest

from hastelm.engine.runner import ModelRunner, Row

PROMPT = Row(0, [i % 1000 for i in range(256)], 0)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_prefill_reuses_freed_activations_instead_of_faulting_pages_in(llm_fast) -> None:
    """torch frees every activation after use; with glibc's defaults the next forward page-faults
    them all back in (~25k faults for a 256-token prefill of the default model). Loading a model on
    the CPU keeps freed blocks for reuse (`system.keep_freed_memory`)."""
    if llm_fast.device.type != "cpu":
        pytest.skip("CPU models only")
    model = llm_fast.model

    def faults_of_one_prefill() -> int:
        runner = ModelRunner(model, 300)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        runner.forward([PROMPT], last_only=True)
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults_of_one_prefill()            # the first one grows the heap
    assert min(faults_of_one_prefill() for _ in range(3)) < 2000


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_loading_another_model_keeps_the_running_memory_regime(llm_fast, smollm_path) -> None:
    """A draft model loading later (load-time settings: small mmap threshold, trimming) must not
    leave the engine's forwards page-faulting: the load ends in the running regime again."""
    from hastelm.models.loader import load_model

    if llm_fast.device.type != "cpu":
        pytest.skip("CPU models only")
    load_model(smollm_path, "fast")        # what `draft:MODEL` does
    model = llm_fast.model
    ModelRunner(model, 300).forward([PROMPT], last_only=True)
    faults = []
    for _ in range(3):
        runner = ModelRunner(model, 300)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        runner.forward([PROMPT], last_only=True)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    assert min(faults) < 2000
