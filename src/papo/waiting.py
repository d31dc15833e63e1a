"""Waiting for a wake-up with a deadline, safely cancellable."""

from __future__ import annotations

import asyncio
import contextlib


async def wake_or_timeout(event: asyncio.Event, seconds: float) -> None:
    """Return when `event` is set or after `seconds`, whichever comes first.

    asyncio.timeout rather than asyncio.wait_for: on Python 3.11, wait_for swallows a cancellation
    that arrives just as the event is set, and a background task being shut down then runs on (the
    shutdown waits for it forever)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
