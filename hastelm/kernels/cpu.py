"""Native CPU kernels, compiled on first use, with a clean "not available" answer otherwise.

`int4_gemm` multiplies activations, quantized per row to int8 in groups of 32, by a groupwise-int4
weight packed by `pack_int4` (csrc/int4_kernel.h: AVX512-VNNI `vpdpbusd`, exact integer sums,
rows bit-identical for any batch size); `int8_gemm` does the same for per-row int8 weights
packed by `pack_int8` (csrc/int8_kernel.h); `rms_norm` normalises float32 rows in one call (csrc/rms_norm.h);
`decode_attention` is one-token attention over each row's own cached keys
(csrc/decode_attention.h: a row's result does not depend on the rest of the batch).
The install builds the extension (setup.py) as `hastelm.kernels._cpu_kernels`; it is used when it
was built from the csrc/ files beside it. Otherwise (installed without torch at build time, no
compiler then, or csrc/ edited since) it is compiled on first use, once, into
~/.cache/hastelm/torch_extensions (or under $XDG_CACHE_HOME) and reused.
`native()` returns None when it cannot be used: HASTELM_NO_KERNELS=1, no compiler, a failed
build, or a CPU without AVX512-BF16 and AVX512-VNNI. Callers then use torch's own int4 op.
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

GROUP = 32          # k values per scale/offset group
BLOCK_COLS = 16     # output columns per packed block
_CSRC = Path(__file__).parent / "csrc"
_SOURCES = [_CSRC / "cpu_kernels.cpp"]   # includes the csrc/*.h kernels
_PREBUILT = "hastelm.kernels._cpu_kernels"   # setup.py's install-time build of _SOURCES


def build_dir() -> Path:
    tag = f"torch{torch.__version__.split('+')[0]}-py{sys.version_info.major}{sys.version_info.minor}"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "hastelm" / "torch_extensions" / f"cpu_kernels-{tag}"


def _ninja_on_path() -> None:
    """torch runs `ninja` from PATH; the PyPI wheel's binary may sit in an unactivated venv."""
    try:
        import ninja
    except ImportError:
        return
    path = os.environ.get("PATH", "")
    if ninja.BIN_DIR not in path.split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + path


def disabled() -> bool:
    return os.environ.get("HASTELM_NO_KERNELS", "") not in ("", "0")


COMPILING_NOTICE = "hastelm: compiling the CPU kernels (once; about a minute)"


def build_hash() -> str:
    """A hash of the csrc/ files and torch's version, as setup.py computes it and compiles it
    into the module it builds."""
    digest = hashlib.sha256(torch.__version__.encode())
    for path in sorted(_CSRC.iterdir()):
        if path.suffix in (".cpp", ".h"):
            digest.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
    return "h" + digest.hexdigest()[:16]


def _prebuilt() -> ModuleType | None:
    """The module the install built, if it was built from the csrc/ files here now, for this torch."""
    try:
        mod = importlib.import_module(_PREBUILT)
    except ImportError:   # not built at install, or built against another torch
        return None
    return mod if getattr(mod, "build_hash", None) == build_hash() else None


@functools.cache
def _load() -> ModuleType | None:
    mod = _prebuilt() or _compile()
    return mod if mod is not None and mod.cpu_supported() else None


def _compile() -> ModuleType | None:
    """The fallback: compile _SOURCES now (once per torch and Python version; later runs load it)."""
    try:
        from torch.utils.cpp_extension import load

        _ninja_on_path()
        path = build_dir()
        path.mkdir(parents=True, exist_ok=True)
        if not any(path.glob("*.so")):
            print(COMPILING_NOTICE, file=sys.stderr)
        # -fopenmp: at::parallel_for is an OpenMP region compiled into this module; without the
        # flag it silently runs on one thread. libgomp.so.1 resolves to the copy torch loaded.
        mod = load(name="hastelm_cpu_kernels", sources=[str(s) for s in _SOURCES],
                   extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"],
                   build_directory=str(path), verbose=False)
    except Exception as exc:  # no compiler, no ninja, build error: fall back, but say why once
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        warnings.warn(f"hastelm: int4 kernel not built ({first}); using torch's int4 op", stacklevel=2)
        return None
    return mod


def _kernels() -> ModuleType:
    """The compiled module for a direct call; callers decide with `native()`, this only guards."""
    mod = _load()
    if mod is None:
        raise RuntimeError("hastelm's CPU kernels are not available on this machine")
    return mod


def native() -> ModuleType | None:
    """The compiled kernel module, or None when the fallback must be used."""
    if disabled() or sys.platform != "linux" or not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return None
    return _load()


def pack_int4(q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Pack `w = q * scale + offset` (q uint8 [N, K] in 0..15; scale, offset [N, K/32]) for
    `int4_gemm`: uint8 [N/16, K/32, B], per 16 columns and group 256 nibble bytes, then 16
    scales and 16 offsets, in fp16 (B = 320) when that is exact, else in fp32 (B = 384).
    The layout is described in csrc/int4_kernel.h.
    """
    n, k = q.shape
    if n % BLOCK_COLS or k % GROUP:
        raise ValueError(f"int4 packing needs rows % 16 == 0 and cols % 32 == 0, got {tuple(q.shape)}")
    nb, g = n // BLOCK_COLS, k // GROUP
    # [block, col, group, chunk, half, i] -> byte [block, group, chunk, col, i]: low nibble half 0
    t = q.to(torch.uint8).reshape(nb, BLOCK_COLS, g, 4, 2, 4).permute(0, 2, 3, 1, 5, 4)
    nibbles = (t[..., 0] | (t[..., 1] << 4)).reshape(nb, g, 256)
    sz = torch.stack((scale, offset)).to(torch.float32)
    sz16 = sz.to(torch.float16)
    if torch.equal(sz16.float(), sz):   # Q4_0/Q4_1 scales are fp16 in the file: nothing is lost
        sz = sz16
    sz = sz.reshape(2, nb, BLOCK_COLS, g).permute(1, 3, 0, 2).contiguous().view(torch.uint8)
    return torch.cat((nibbles, sz.reshape(nb, g, -1)), dim=2).contiguous()


def _activations(x: torch.Tensor) -> torch.Tensor:
    """`x` as the kernels take it: contiguous float32 or bf16 (any leading dims)."""
    if x.dtype not in (torch.float32, torch.bfloat16):
        x = x.float()
    return x if x.is_contiguous() else x.contiguous()


def int4_gemm(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """`x @ w.T` for `w` packed by `pack_int4`; any leading dims. The kernel quantizes each row of
    the activations to int8 per group of 32; float32 inputs get float32 results, others bf16."""
    return _kernels().int4_gemm(_activations(x), packed)


def pack_int8(q: torch.Tensor) -> torch.Tensor:
    """Pack an int8 weight `[N, K]` for `int8_gemm`: uint8 `[N/16, K/4, 64]`, per 16 columns and
    k quad the 16 columns' 4 values, each offset by 128 (csrc/int8_kernel.h)."""
    n, k = q.shape
    if n % BLOCK_COLS or k % GROUP:
        raise ValueError(f"int8 packing needs rows % 16 == 0 and cols % 32 == 0, got {tuple(q.shape)}")
    u = (q.to(torch.int16) + 128).to(torch.uint8)
    return u.view(n // BLOCK_COLS, BLOCK_COLS, k // 4, 4).transpose(1, 2).reshape(n // BLOCK_COLS, k // 4, 4 * BLOCK_COLS)


def unpack_int8_rows(packed: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows `[..., K]` of the int8 weight that `pack_int8` packed (embedding lookups)."""
    blocks = packed.view(packed.shape[0], packed.shape[1], BLOCK_COLS, 4)
    out = blocks[rows // BLOCK_COLS, :, rows % BLOCK_COLS]          # [..., K/4, 4]
    return (out.reshape(*rows.shape, -1).to(torch.int16) - 128).to(torch.int8)


def int8_gemm(x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`(x @ q.T) * scale` for `q` packed by `pack_int8` and fp32 `scale` `[N]`; any leading dims.
    Rows of x are quantized to int8 per group of 32, as in `int4_gemm`; float32 inputs get float32
    results, others bf16."""
    return _kernels().int8_gemm(_activations(x), packed, scale)


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu(gate) * up` of float32 `[gate | up]` rows `[..., 2F]` in one native call (csrc/silu_mul.h)."""
    return _kernels().silu_mul(gate_up.contiguous())


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """`logits.argmax(-1)` of float32 rows `[R, V]` (csrc/argmax.h; torch's scan is ~10x slower)."""
    return _kernels().argmax_rows(logits.contiguous())


def topk_rows(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices `[R, k]` of each float32 row's k largest logits, largest first, lower index first
    among equals; -inf and NaN entries are never chosen (-1 fills a row short of others).
    One pass per row (csrc/argmax.h) instead of torch.topk's ~85 us per 49k-entry row."""
    return _kernels().topk_rows(logits.contiguous(), k)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`F.rms_norm(x, (D,), weight, eps)` for float32 rows in one native call (csrc/rms_norm.h)."""
    return _kernels().rms_norm(x.contiguous(), weight, eps)


class KernelRows(NamedTuple):
    """The token rows of one forward as the attention kernels take them: row r sits at index
    `lengths[r] - 1` of cache slot `slots[r]` (int64 `[R]`), reads the slot's positions
    `[0, lengths[r])` where `visible` `[R, >= max length]` allows (None: all of them), and is
    rotated by `rotations` `[R, D/2, 2]` (cos, sin; float32) for its position."""
    slots: torch.Tensor
    lengths: torch.Tensor
    visible: torch.Tensor | None
    rotations: torch.Tensor | None = None


_NO_MASK = torch.empty(0, dtype=torch.bool)


def decode_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, rows: KernelRows,
                     scale: float) -> torch.Tensor:
    """One-token attention: q `[R, Hq, D]` bf16, each row over its `rows` entry of the cache layer
    (tensors `[S, C, Hkv, D]`) -> `[R, Hq, D]`."""
    return _kernels().decode_attention(q.contiguous(), keys, values, rows.slots, rows.lengths,
                                _NO_MASK if rows.visible is None else rows.visible, scale)


def rope_qkv(qkv: torch.Tensor, rows: KernelRows, keys: torch.Tensor, values: torch.Tensor, n_q: int) -> torch.Tensor:
    """RoPE of the float32 q/k/v projection rows `[..., (n_q + 2 n_kv) D]`; k and v written (bf16) to
    each row's entry of the cache layer (csrc/rope_kv.h). Returns the rotated queries `[R, n_q, D]` bf16."""
    return _kernels().rope_qkv(qkv.contiguous(), rows.rotations, keys, values, rows.slots, rows.lengths, n_q)
