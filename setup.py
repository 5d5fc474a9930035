"""Builds hastelm's CPU kernels (hastelm/kernels/csrc) at install time as `hastelm.kernels._cpu_kernels`.

Everything else about the package is in pyproject.toml. torch is deliberately not a build
requirement: build isolation would fetch a torch (a CUDA build) just to compile against, so
scripts/setup.sh installs the CPU torch first and then builds with `pip install
--no-build-isolation`. When torch is not importable at build time (a plain `pip install .`), or
the compile fails, the package installs without the module and hastelm.kernels.cpu compiles
the same sources on first use instead.
"""
from __future__ import annotations

import hashlib
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = Path("hastelm", "kernels", "csrc")


def build_hash(torch_version: str) -> str:
    """Of the csrc/ files and torch's version, as hastelm.kernels.cpu.build_hash computes it."""
    digest = hashlib.sha256(torch_version.encode())
    for path in sorted((ROOT / CSRC).iterdir()):
        if path.suffix in (".cpp", ".h"):
            digest.update(b"\0" + path.name.encode() + b"\0" + path.read_bytes())
    return "h" + digest.hexdigest()[:16]


def say(message: str) -> None:
    print(f"hastelm: {message}", file=sys.stderr)


def kernels() -> dict:
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        say("torch is not importable at build time; the CPU kernels will compile on first use")
        return {}
    tag = build_hash(torch.__version__)

    class Build(BuildExtension):
        """Reuses the module an earlier editable install left in the tree when it was built from
        the same files for the same torch (the hash is in its data); a failed compile leaves the
        kernels to the run-time build instead of failing the install."""

        def build_extension(self, ext) -> None:
            built = Path(self.get_ext_fullpath(ext.name))
            previous = ROOT / CSRC.parent / built.name
            if previous.is_file() and previous.resolve() != built.resolve() and tag.encode() in previous.read_bytes():
                say(f"the CPU kernels are up to date ({previous.relative_to(ROOT)})")
                built.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(previous, built)
                return
            super().build_extension(ext)

        def build_extensions(self) -> None:
            # the compile line of the run-time build: without Python's own CFLAGS (-g, -fwrapv, -DNDEBUG, ...)
            python_cflags = set((sysconfig.get_config_var("CFLAGS") or "").split())
            for name in ("compiler_so", "compiler_so_cxx", "compiler_cxx", "linker_so", "linker_so_cxx"):
                if isinstance(getattr(self.compiler, name, None), list):
                    setattr(self.compiler, name, [a for a in getattr(self.compiler, name) if a not in python_cflags])
            super().build_extensions()

        def run(self) -> None:
            try:
                super().run()
            except Exception as exc:  # no compiler, a compile error
                say(f"the CPU kernels did not build ({exc}); they will compile on first use")
                self.extensions = []

        def get_outputs(self) -> list[str]:
            return super().get_outputs() if self.extensions else []

    # The flags of the run-time build (kernels._compile): -O3, and -fopenmp, without which
    # at::parallel_for silently runs on one thread. depends: a changed header rebuilds too.
    ext = CppExtension("hastelm.kernels._cpu_kernels", [str(CSRC / "cpu_kernels.cpp")],
                       depends=[str(p) for p in sorted(CSRC.glob("*.h"))],
                       define_macros=[("HASTELM_BUILD_HASH", tag)],
                       extra_compile_args=["-O3", "-fopenmp"], extra_link_args=["-fopenmp"])
    # one source file: ninja adds nothing, and it may not be on PATH in an unactivated venv
    return {"ext_modules": [ext], "cmdclass": {"build_ext": Build.with_options(use_ninja=False)}}


setup(**kernels())
