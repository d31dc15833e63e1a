"""Waiting for a wake-up with a deadline, safely cancellable; and the loop every queue worker runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger(__name__)

RETRY_SECONDS = 1.0


async def wake_or_timeout(event: asyncio.Event, seconds: float) -> None:
    """Return when `event` is set or after `seconds`, whichever comes first.

    asyncio.timeout rather than asyncio.wait_for: on Python 3.11, wait_for swallows a cancellation
    that arrives just as the event is set, and a background task being shut down then runs on (the
    shutdown waits for it forever)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


async def work_when_woken(
    wake: asyncio.Event,
    poll_seconds: float,
    work: Callable[[], Awaitable[object]],
    *,
    name: str,
    retry_on: tuple[type[Exception], ...] = (Exception,),
) -> None:
    """Forever: wait until `wake` is set (a NOTIFY, a new row) or `poll_seconds` pass (one may be
    missed), then run `work` again for as long as it reports more to do (a truthy result).

    A failure of a kind in `retry_on` (the database away for a moment) is logged and the round tried
    again a second later; anything else ends the loop, for papo.background to restart with backoff."""
    while True:
        await wake_or_timeout(wake, poll_seconds)
        wake.clear()
        try:
            while await work():
                pass
        except retry_on as exc:
            log.warning("background work failed; retrying", worker=name, error=str(exc))
            await asyncio.sleep(RETRY_SECONDS)
