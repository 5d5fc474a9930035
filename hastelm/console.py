"""Terminal helpers shared by every command: one-line errors and loading with a progress bar.

The command modules (`cli.py`, `server/cli.py`, `bench/cli.py`) import this; it imports none of
them, so the command line has no import cycle."""
from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from .engine import LLM

err = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """One line naming the problem, non-zero exit, no traceback. The message is text, not rich
    markup: "hastelm[bench]" or a path with brackets prints as is."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)  # never wrapped
    raise typer.Exit(2)


def load_llm(model: str, dtype: str = "auto", device: str = "auto", speculative: Optional[str] = None,
             context_length: Optional[int] = None, kv_policy: Optional[str] = None,
             kv_budget: Optional[str] = None) -> "LLM":
    """Load with a progress bar on stderr; user mistakes become one-line errors."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .engine import LLM

    with Progress(TextColumn("loading {task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err, transient=True, disable=not err.is_terminal) as progress:
        task = progress.add_task(model, total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        return LLM(model, dtype=dtype, device=device, speculative=speculative,
                   context_length=context_length, kv_policy=kv_policy, kv_budget=kv_budget, progress=report)
