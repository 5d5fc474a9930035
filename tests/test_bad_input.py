"""User mistakes through `hastelm generate`: each gives exactly one `error: ...` line on stderr naming
the problem and a non-zero exit, never a traceback."""
from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import Result
from gguf import GGMLQuantizationType
from typer.testing import CliRunner

from gguf_factory import write_tiny_gguf
from hastelm.cli import app
from hastelm.errors import ContextOverflowError, InvalidParameterError
from hastelm.kernels.cpu import COMPILING_NOTICE

runner = CliRunner()


def generate(*args: str, stdin: str | None = None) -> Result:
    return runner.invoke(app, ["generate", "--no-stats", "--raw", "--temp", "0", *args], input=stdin)


def assert_one_line_error(result: Result, *fragments: str) -> str:
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bad")
    write_tiny_gguf(folder / "tiny.gguf")
    write_tiny_gguf(folder / "neox.gguf", arch="gptneox")
    write_tiny_gguf(folder / "iq2.gguf", ffn_down_type=GGMLQuantizationType.IQ2_XXS)
    return folder


def test_the_tiny_file_itself_runs(files: Path) -> None:
    """The damaged variants below fail for their one defect, not because the base file is bad."""
    result = generate("-m", str(files / "tiny.gguf"), "-p", "a a", "-n", "3")
    assert result.exit_code == 0, result.stderr
    # nothing on stderr but, in a fresh cache, the one-time kernel build notice
    assert result.stderr.replace(COMPILING_NOTICE + "\n", "") == ""


def test_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(generate("-m", str(tmp_path / "nope.gguf"), "-p", "hi"), "model not found", "nope.gguf")


def test_missing_file_long_path_stays_one_line(tmp_path: Path) -> None:
    deep = tmp_path / ("a-very-long-directory-name-" * 6) / "model.gguf"
    assert_one_line_error(generate("-m", str(deep), "-p", "hi"), str(deep))


def test_truncated_gguf(smollm_path: Path, tmp_path: Path) -> None:
    head = tmp_path / "head.gguf"
    with open(smollm_path, "rb") as f:
        head.write_bytes(f.read(300_000))
    assert_one_line_error(generate("-m", str(head), "-p", "hi"), "truncated", "head.gguf")


def test_tensor_past_end_of_file(files: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    data = (files / "tiny.gguf").read_bytes()
    cut.write_bytes(data[:-1000])
    assert_one_line_error(generate("-m", str(cut), "-p", "hi"), "truncated: tensor", "cut.gguf")


def test_garbage_after_magic(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<I", 3) + bytes(range(256)) * 8)
    assert_one_line_error(generate("-m", str(bad), "-p", "hi"), "corrupt GGUF")
    bad.write_bytes(b"GGUF" + bytes(range(7, 200)))
    assert_one_line_error(generate("-m", str(bad), "-p", "hi"), "unsupported GGUF version")


def test_flipped_metadata_length(files: Path, tmp_path: Path) -> None:
    data = bytearray((files / "tiny.gguf").read_bytes())
    key = data.find(b"tokenizer.ggml.tokens")
    struct.pack_into("<Q", data, key + len(b"tokenizer.ggml.tokens") + 8, 2**61)   # the array's count
    bad = tmp_path / "flipped.gguf"
    bad.write_bytes(bytes(data))
    assert_one_line_error(generate("-m", str(bad), "-p", "hi"), "corrupt", "tokenizer.ggml.tokens")


def test_not_a_gguf(tmp_path: Path) -> None:
    (tmp_path / "notes.gguf").write_text("just text")
    assert_one_line_error(generate("-m", str(tmp_path / "notes.gguf"), "-p", "hi"), "not a GGUF file")
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 64)
    assert_one_line_error(generate("-m", str(tmp_path / "weights.bin"), "-p", "hi"),
                          "expected a .gguf file or a Hugging Face folder")


def test_unsupported_architecture(files: Path) -> None:
    assert_one_line_error(generate("-m", str(files / "neox.gguf"), "-p", "hi"),
                          "unsupported architecture 'gptneox'", "llama, qwen2, gemma3")


def test_unsupported_tensor_type(files: Path) -> None:
    assert_one_line_error(generate("-m", str(files / "iq2.gguf"), "-p", "hi"),
                          "blk.0.ffn_down.weight", "unsupported GGUF tensor type IQ2_XXS", "Q4_K")


@pytest.mark.parametrize("config,fragment", [
    (None, "has no config.json"),
    ("{not json", "bad config.json"),
    (json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}), "unsupported architecture"),
])
def test_bad_hf_folders(tmp_path: Path, config: str | None, fragment: str) -> None:
    if config is not None:
        (tmp_path / "config.json").write_text(config)
    assert_one_line_error(generate("-m", str(tmp_path), "-p", "hi"), fragment)


@pytest.mark.parametrize("args,fragment", [
    (["--temp", "-1"], "temperature must be >= 0"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--top-p", "1.5"], "top_p must be in (0, 1]"),
    (["--max-tokens", "0"], "max_tokens must be an integer >= 1"),
    (["--top-k", "-3"], "top_k must be an integer >= 0"),
    (["--min-p", "2"], "min_p must be in [0, 1]"),
    (["--repeat-penalty", "0"], "repetition_penalty must be > 0"),
    (["--dtype", "float16"], "unknown dtype 'float16'"),
    (["--ctx-size", "-5"], "context_length must be >= 1"),
])
def test_invalid_parameters(files: Path, args: list[str], fragment: str) -> None:
    assert_one_line_error(generate("-m", str(files / "tiny.gguf"), "-p", "hi", *args), fragment)


def test_prompt_longer_than_context_python_api(files: Path) -> None:
    from hastelm import LLM

    llm = LLM(str(files / "tiny.gguf"), dtype="float32", context_length=64)
    with pytest.raises(ContextOverflowError, match="the prompt has 100 tokens but the context holds 64"):
        llm.generate("a" * 100)
    with pytest.raises(InvalidParameterError, match="empty"):
        llm.generate("")


def test_prompt_longer_than_context_cli(files: Path) -> None:
    result = generate("-m", str(files / "tiny.gguf"), "-c", "64", "-p", "-", stdin="word " * 200)
    assert_one_line_error(result, "the prompt has 1000 tokens but the context holds 64")


def test_long_stdin_prompt_over_model_context(files: Path) -> None:
    # without --ctx-size the model's own limit (128 in this file's metadata) applies
    result = generate("-m", str(files / "tiny.gguf"), "-p", "-", stdin="b" * 500)
    assert_one_line_error(result, "the prompt has 500 tokens but the context holds 128")


def test_console_script_in_a_subprocess(tmp_path: Path) -> None:
    """The installed entry point, outside the test runner's captured streams."""
    proc = subprocess.run([sys.executable, "-m", "hastelm.cli", "generate", "-m", str(tmp_path / "x.gguf"),
                           "-p", "hi"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model not found" in lines[0]
