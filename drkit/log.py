"""Console output shared by every stage: one rich console on stderr, a verbosity level,
and progress bars that switch themselves off for batch jobs (no terminal) or --quiet."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)
VERBOSITY = 1  # 0 quiet, 1 normal, 2 verbose


def set_verbosity(level: int) -> None:
    global VERBOSITY
    VERBOSITY = level


def info(msg: str) -> None:
    if VERBOSITY >= 1:
        console.print(msg, soft_wrap=True)


def debug(msg: str) -> None:
    if VERBOSITY >= 2:
        console.print(f"[dim]{msg}[/dim]")


def warn(msg: str) -> None:
    if VERBOSITY >= 1:
        console.print(f"[yellow]warning:[/yellow] {msg}", soft_wrap=True)


def progress(*extra_columns) -> Progress:
    """A Progress that renders only on an interactive terminal and when not quiet."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=VERBOSITY == 0 or not sys.stderr.isatty(),
        transient=False,
    )
