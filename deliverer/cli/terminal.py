"""What the ``deliverer`` command draws only for a person at a terminal: progress bars.

A long operation (a recovery's replays, retention, rebuilding the projection, a migration) reports
its steps through ``deliverer.ops.progress``; here each step is a bar with its count, elapsed time
and ETA, then what it works on now (the statement a migration runs), drawn on stderr so stdout keeps
only the result (a table, a report or ``--json``). When stderr is not a terminal (a pipe, a CI log,
a Kubernetes job) nothing is drawn.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bars
from rich.table import Column
from rich.text import Text

from deliverer.ops.progress import Progress, quiet


class _Detail(ProgressColumn):
    """What the step works on now, on one line: a long one is cut short, not wrapped under the others."""

    def render(self, task: Task) -> Text:
        return Text(task.fields.get("detail", ""), no_wrap=True, overflow="ellipsis")


@contextmanager
def progress_bars() -> Iterator[Progress]:
    """A ``Progress`` that draws one bar per step on stderr while the block runs, if stderr is a terminal."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield quiet
        return
    # On a line too wide, rich narrows the columns that may wrap: the bar and the detail, never the step's
    # name, its count or its times.
    columns = (TextColumn("{task.description}", table_column=Column(no_wrap=True)), BarColumn(),
               MofNCompleteColumn(table_column=Column(no_wrap=True)), TextColumn("elapsed"),
               TimeElapsedColumn(table_column=Column(no_wrap=True)), TextColumn("ETA"),
               TimeRemainingColumn(table_column=Column(no_wrap=True)), _Detail())
    with Bars(*columns, console=console, transient=False) as bars:
        tasks: dict[str, TaskID] = {}

        def report(step: str, done: int, total: int | None, detail: str = "") -> None:
            if step not in tasks:
                tasks[step] = bars.add_task(step, total=total)
            bars.update(tasks[step], completed=done, total=total, detail=detail)

        yield report
