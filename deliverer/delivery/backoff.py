"""Capped exponential backoff for the worker's reconnecting loops."""

import asyncio
import contextlib


class Backoff:
    """0.1 s doubling up to 5 s; ``reset`` after a success."""

    def __init__(self, first: float = 0.1, cap: float = 5.0) -> None:
        self.first, self.cap, self.current = first, cap, first

    def reset(self) -> None:
        self.current = self.first

    async def sleep(self, interrupt: asyncio.Event | None = None) -> None:
        """Wait the current delay (cut short when ``interrupt`` is set), then double it up to the cap."""
        if interrupt is None:
            await asyncio.sleep(self.current)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(interrupt.wait(), self.current)
        self.current = min(self.current * 2, self.cap)
