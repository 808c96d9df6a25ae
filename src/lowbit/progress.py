"""Progress bars for long steps (rich, on stderr). Off when LOWBIT_PROGRESS=0 or not a terminal."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Self, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    flag = os.environ.get("LOWBIT_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty()


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` with a progress bar when enabled."""
    if not enabled():
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with _progress() as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


def _progress(info: bool = False) -> Any:
    """A rich progress display on stderr: description, bar, done/total, (a live figure,) elapsed, remaining."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), transient=True)


class Steps:
    """A progress bar for a loop of known length that shows a live figure (e.g. the training loss)::

        with Steps(200, "qat") as bar:
            for i in range(200):
                bar.update(i + 1, f"loss {loss:.4f}")
    """

    def __init__(self, total: int, description: str, done: int = 0) -> None:
        self.total, self.description, self.done = total, description, done
        self._bar: Any = None

    def __enter__(self) -> Self:
        if enabled():
            self._bar = _progress(info=True)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total, completed=self.done, info="")
        return self

    def update(self, done: int, info: str = "") -> None:
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done, info=info)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
