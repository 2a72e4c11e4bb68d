"""What the ``deliverer`` command draws only for a person at a terminal: progress bars.

A long operation (a recovery's replays, retention, rebuilding the projection) reports its steps
through ``deliverer.ops.progress``; here each step is a bar with its count, elapsed time and ETA,
drawn on stderr so stdout keeps only the result (a table, a report or ``--json``). When stderr is
not a terminal (a pipe, a CI log, a Kubernetes job) nothing is drawn.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bars

from deliverer.ops.progress import Progress, quiet


@contextmanager
def progress_bars() -> Iterator[Progress]:
    """A ``Progress`` that draws one bar per step on stderr while the block runs, if stderr is a terminal."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield quiet
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("elapsed"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Bars(*columns, console=console, transient=False) as bars:
        tasks: dict[str, TaskID] = {}

        def report(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = bars.add_task(step, total=total)
            bars.update(tasks[step], completed=done, total=total)

        yield report
