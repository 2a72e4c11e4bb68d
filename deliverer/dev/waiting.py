"""Waiting for something to happen, for the demo, the tests and the fault suite.

A fixed sleep is the wrong way to wait for another task, process or server: on
a loaded machine it is too short (a flaky failure that says nothing), and
everywhere else it is too long (a slow suite). ``eventually`` and
``aeventually`` check a condition until it holds, return as soon as it does,
and when it never does within the timeout they fail with an assertion that
names what was awaited. The timeout is an upper bound for a broken run, not a
pause: generous values cost nothing when things work.
"""

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
DEFAULT_INTERVAL = 0.05

What = str | Callable[[], str]


class NeverHappened(AssertionError):
    """The awaited condition did not hold within the timeout."""


def _failure(what: What, timeout: float, error: BaseException | None) -> NeverHappened:
    description = what() if callable(what) else what
    message = f"timed out after {timeout:g} s waiting for {description}"
    if error is not None:
        message += f" (last error: {type(error).__name__}: {error})"
    return NeverHappened(message)


def eventually(predicate: Callable[[], T | None], what: What, *, timeout: float = DEFAULT_TIMEOUT,
               interval: float = DEFAULT_INTERVAL, ignoring: tuple[type[BaseException], ...] = ()) -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    ``what`` names the condition for the failure message (a callable is asked at
    failure time, so it can describe the state it gave up on). Exceptions of the
    ``ignoring`` types count as "not yet"; any other exception propagates at once.
    """
    deadline = time.monotonic() + timeout
    error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except ignoring as exc:
            error = exc
        else:
            if value:
                return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failure(what, timeout, error)
        time.sleep(min(interval, remaining))  # the polling interval between two checks, not a wait for the event


@overload
async def aeventually(predicate: Callable[[], Awaitable[T | None]], what: What, *, timeout: float = ...,
                      interval: float = ..., ignoring: tuple[type[BaseException], ...] = ...,
                      wake: asyncio.Event | None = ...) -> T: ...
@overload
async def aeventually(predicate: Callable[[], T | None], what: What, *, timeout: float = ...,
                      interval: float = ..., ignoring: tuple[type[BaseException], ...] = ...,
                      wake: asyncio.Event | None = ...) -> T: ...
async def aeventually(predicate: Callable[[], object], what: What, *, timeout: float = DEFAULT_TIMEOUT,
                      interval: float = DEFAULT_INTERVAL, ignoring: tuple[type[BaseException], ...] = (),
                      wake: asyncio.Event | None = None) -> object:
    """``eventually`` for coroutines: ``predicate`` may be a plain function or return an awaitable.

    With ``wake``, the condition is checked again as soon as the event is set
    (a receiver sets one on every request), and at the latest every ``interval``.
    """
    deadline = time.monotonic() + timeout
    error: BaseException | None = None
    while True:
        if wake is not None:
            wake.clear()  # before the check: a change during it still cuts the wait below short
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except ignoring as exc:
            error = exc
        else:
            if value:
                return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _failure(what, timeout, error)
        if wake is None:
            await asyncio.sleep(min(interval, remaining))  # the polling interval, not a wait for the event
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), min(interval, remaining))
