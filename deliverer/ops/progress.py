"""How a long operation (a bulk replay, retention, rebuilding the projection, a migration) reports how far it is.

The operation calls its ``Progress`` after each step with the step's name, how many units are
done and how many there are (None while unknown), and optionally which unit it works on now; the
CLI draws a bar with a count and an ETA from that, everything else passes ``quiet``. Reporting
never changes what the operation does.
"""

from typing import Protocol


class Progress(Protocol):
    def __call__(self, step: str, done: int, total: int | None, detail: str = "") -> None: ...


def quiet(step: str, done: int, total: int | None, detail: str = "") -> None:
    """Report nowhere."""
