"""Progress for long jobs (feature extraction, predicting over folders and videos, data commands): a rich bar on
an interactive terminal, nothing in logs, pipes or with `--quiet`, so piped output stays clean."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class _Bar:
    """`advance(n)` moves the bar; a silent bar accepts the same calls and prints nothing."""

    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)


def shows_progress(quiet: bool = False) -> bool:
    """A bar is drawn only for a person watching: stderr is a terminal and the user did not ask for quiet."""
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(total: int | None, description: str, quiet: bool = False) -> Iterator[_Bar]:
    """A bar of `total` steps (None: unknown length) labelled `description`; it stays on
    the terminal when done so the user sees how long the job took."""
    if not shows_progress(quiet):
        yield _Bar(None, None)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True)) as bar:
        yield _Bar(bar, bar.add_task(description, total=total))


def track(items: Iterable[T], description: str, total: int | None = None, quiet: bool = False) -> Iterator[T]:
    """Yield `items`, advancing a bar by one for each (the length is taken from `items` when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_bar(total, description, quiet) as bar:
        for item in items:
            yield item
            bar.advance()
