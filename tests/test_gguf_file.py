"""hastelm's GGUF parser: same metadata and tensor bytes as gguf.GGUFReader on the real files, every
value type, and a one-line ModelLoadError (never a huge allocation) on damaged files."""
from __future__ import annotations

import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter

from gguf_factory import write_tiny_gguf
from hastelm.errors import ModelLoadError
from hastelm.formats.gguf_file import open_gguf


def _assert_same_as_gguf_reader(path: Path) -> None:
    ours = open_gguf(path)
    reader = GGUFReader(str(path))
    expected = {key: field.contents() for key, field in reader.fields.items()}
    assert list(ours.metadata) == list(expected)
    for key, value in expected.items():
        assert ours.metadata[key] == value and type(ours.metadata[key]) is type(value), key
    assert list(ours.tensors) == [t.name for t in reader.tensors]
    for t in reader.tensors:
        mine = ours.tensors[t.name]
        assert mine.ggml_type == int(t.tensor_type)
        assert mine.shape == tuple(reversed(t.shape.tolist()))
        assert (mine.data.dtype, mine.data.shape) == (t.data.dtype, t.data.shape), t.name
        assert np.array_equal(mine.data.view(np.uint8), t.data.view(np.uint8)), t.name


def test_matches_gguf_reader_on_smollm(smollm_path: Path) -> None:
    _assert_same_as_gguf_reader(smollm_path)


def test_matches_gguf_reader_on_gemma(gemma_path: Path) -> None:
    _assert_same_as_gguf_reader(gemma_path)   # GGUFReader itself takes ~12 s on this vocabulary


def test_all_value_types(tmp_path: Path) -> None:
    path = tmp_path / "kv.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_uint8("k.u8", 200)
    w.add_int8("k.i8", -5)
    w.add_uint16("k.u16", 60000)
    w.add_int16("k.i16", -300)
    w.add_uint32("k.u32", 4_000_000_000)
    w.add_int32("k.i32", -7)
    w.add_float32("k.f32", 0.1)
    w.add_uint64("k.u64", 2**63)
    w.add_int64("k.i64", -2**40)
    w.add_float64("k.f64", 0.1)
    w.add_bool("k.bool", True)
    w.add_string("k.str", "héllo")
    w.add_array("k.ints", [1, 2, 3])
    w.add_array("k.floats", [0.5, 1.5])
    w.add_array("k.strs", ["x", "", "ü"])
    w.add_array("k.bools", [True, False])
    w.add_array("k.nested", [[1, 2], [3]])
    w.add_tensor("f32", np.arange(6, dtype=np.float32).reshape(2, 3))
    w.add_tensor("f16", np.arange(64, dtype=np.float16).reshape(2, 32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    md = open_gguf(path).metadata
    assert md["k.nested"] == [[1, 2], [3]]   # GGUFReader flattens nested arrays; we keep them
    assert md["k.f32"] == np.float32(0.1) and md["k.f64"] == 0.1 and md["k.bool"] is True
    reader = GGUFReader(str(path))
    for key, field in reader.fields.items():
        if key != "k.nested":
            assert md[key] == field.contents(), key
    tensors = open_gguf(path).tensors
    assert tensors["f32"].data.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert tensors["f16"].data.dtype == np.float16 and tensors["f16"].shape == (2, 32)


def _patched(src: Path, dst: Path, offset: int, fmt: str, value: Any, keep: int | None = None) -> Path:
    data = bytearray(src.read_bytes()[:keep])
    struct.pack_into(fmt, data, offset, value)
    dst.write_bytes(bytes(data))
    return dst


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_gguf(tmp_path / "tiny.gguf")


def test_version_2_reads_like_3(tiny: Path, tmp_path: Path) -> None:
    v2 = _patched(tiny, tmp_path / "v2.gguf", 4, "<I", 2)
    assert open_gguf(v2).metadata["GGUF.version"] == 2
    assert open_gguf(v2).tensors.keys() == open_gguf(tiny).tensors.keys()


def test_alignment_is_honoured(tmp_path: Path) -> None:
    path = tmp_path / "aligned.gguf"
    w = GGUFWriter(str(path), "llama")
    w.data_alignment = 64
    w.add_uint32("general.alignment", 64)
    w.add_tensor("a", np.arange(3, dtype=np.float32))
    w.add_tensor("b", np.arange(5, dtype=np.float32) + 10)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tensors = open_gguf(path).tensors
    assert tensors["b"].data.tolist() == [10, 11, 12, 13, 14]


@pytest.mark.parametrize("fmt,value,match", [
    ("<I", 1, "unsupported GGUF version 1"),
    ("<I", 4, "unsupported GGUF version 4"),
    (">I", 3, "big-endian"),
])
def test_bad_versions(tiny: Path, tmp_path: Path, fmt: str, value: int, match: str) -> None:
    with pytest.raises(ModelLoadError, match=match):
        open_gguf(_patched(tiny, tmp_path / "v.gguf", 4, fmt, value))


def test_absurd_lengths_fail_without_allocating(tiny: Path, tmp_path: Path) -> None:
    data = tiny.read_bytes()
    key = data.find(b"tokenizer.ggml.tokens")
    # value type (u32) and item type (u32) follow the key; then the u64 element count
    cases = {"first key length": (24, 2**62), "tensor count": (8, 2**60),
             "array count": (key + len(b"tokenizer.ggml.tokens") + 8, 2**61)}
    for what, (offset, value) in cases.items():
        with pytest.raises(ModelLoadError, match="truncated or corrupt"):
            open_gguf(_patched(tiny, tmp_path / "bad.gguf", offset, "<Q", value))


def test_truncated_files(smollm_path: Path, tmp_path: Path) -> None:
    size = smollm_path.stat().st_size
    head = tmp_path / "head.gguf"
    with open(smollm_path, "rb") as f:
        head.write_bytes(f.read(200_000))            # cut inside the vocabulary
    with pytest.raises(ModelLoadError, match="truncated or corrupt.*tokenizer.ggml"):
        open_gguf(head)
    tail = tmp_path / "tail.gguf"
    shutil.copyfile(smollm_path, tail)
    with open(tail, "r+b") as f:
        f.truncate(size - 4096)                      # the last tensor runs past the end
    with pytest.raises(ModelLoadError, match="truncated: tensor .* ends at byte"):
        open_gguf(tail)


def test_other_bad_files(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        open_gguf(tmp_path / "missing.gguf")
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        open_gguf(tmp_path / "empty.gguf")
    (tmp_path / "text.gguf").write_text("hello, not a model")
    with pytest.raises(ModelLoadError, match="bad magic"):
        open_gguf(tmp_path / "text.gguf")
    garbage = b"GGUF" + struct.pack("<I", 3) + np.random.default_rng(0).bytes(4096)
    (tmp_path / "garbage.gguf").write_bytes(garbage)
    with pytest.raises(ModelLoadError, match="corrupt"):
        open_gguf(tmp_path / "garbage.gguf")
    data = bytearray(tiny.read_bytes())
    name = data.find(b"blk.0.ffn_down.weight")
    # tensor info: name, n_dims (u32), dims (u64 each), then the type (u32)
    struct.pack_into("<I", data, name + len(b"blk.0.ffn_down.weight") + 4 + 16, 250)
    (tmp_path / "type.gguf").write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="unknown tensor type 250"):
        open_gguf(tmp_path / "type.gguf")


def test_quantized_tensor_layout(tmp_path: Path) -> None:
    path = write_tiny_gguf(tmp_path / "q.gguf", ffn_down_type=GGMLQuantizationType.Q8_0)
    t = open_gguf(path).tensors["blk.0.ffn_down.weight"]
    assert t.shape == (32, 256) and t.data.dtype == np.uint8 and t.data.shape == (32, 256 // 32 * 34)
