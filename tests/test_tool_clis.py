"""The measurement tools' command lines (`python -m hastelm.bench.replay`, `hastelm.bench.step_cost`,
`hastelm.kernels.bench`): typer apps like `hastelm` itself; --help works, a bad value is a
usage error (exit 2), and the tools' own errors are one line."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from hastelm.bench import replay, step_cost
from hastelm.kernels import bench as bench_kernels

runner = CliRunner()

TOOLS = {
    "replay": (replay.app, ["--model", "--workload", "--limit", "--max-tokens", "--methods", "--overhead-ms"]),
    "step_cost": (step_cost.app, ["--model", "--prefix", "--repeats"]),
    "bench_kernels": (bench_kernels.app, ["--threads", "--rows", "--calls"]),
}
BAD_VALUES = {"replay": ["--limit", "forty"], "step_cost": ["--prefix", "x"], "bench_kernels": ["--threads", "two"]}


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help(tool: str) -> None:
    app, options = TOOLS[tool]
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in options:
        assert option in result.output, option


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_bad_option_value_is_a_usage_error(tool: str) -> None:
    result = runner.invoke(TOOLS[tool][0], BAD_VALUES[tool])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output


def one_line_error(result) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_replay_names_the_methods_it_covers_before_loading_a_model() -> None:
    line = one_line_error(runner.invoke(replay.app, ["--methods", "pld,eagle", "--model", "no-such-model"]))
    assert line == "error: replay covers free proposers only: pld, recycling, auto (not eagle)"


def test_bench_kernels_rows_take_several_values() -> None:
    # argparse's `--rows 1 8 512` (nargs="*") still works; figures for exactly those rows
    result = runner.invoke(bench_kernels.app, ["--threads", "1", "--calls", "1", "--rows", "1", "2"])
    assert result.exit_code == 0, result.output
    tables = result.stdout.split("\nweight ")[1:]
    assert len(tables) == len(bench_kernels.SHAPES)
    for table in tables:
        assert [line.split()[0] for line in table.splitlines()[2:]] == ["1", "2"]
    assert result.stdout.splitlines()[0].startswith("threads=1; median thread CPU time")
    assert one_line_error(runner.invoke(bench_kernels.app, ["--rows", "1", "x"])) == \
        "error: --rows takes whole numbers: 'x'"
    assert one_line_error(runner.invoke(bench_kernels.app, ["--calls", "0"])).startswith("error: --threads, --calls")
