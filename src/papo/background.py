"""The process's background workers, started and stopped in one place.

Each worker is a coroutine function that runs until cancelled (a wake-or-poll loop, a heartbeat).
One that returns is finished; one that raises is logged and started again after a pause that
doubles up to a minute (and is reset once it has run for a while), so a bug or an outage in one
worker never silently stops it for the life of the process. `/readyz` shows which are restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

FIRST_PAUSE_SECONDS = 1.0
LONGEST_PAUSE_SECONDS = 60.0
HEALTHY_AFTER_SECONDS = 60.0  # a run this long resets the pause


@dataclass
class WorkerState:
    restarts: int = 0
    last_error: str | None = None
    restarting: bool = False
    finished: bool = False


class Workers:
    def __init__(
        self, *, first_pause: float = FIRST_PAUSE_SECONDS, longest_pause: float = LONGEST_PAUSE_SECONDS
    ) -> None:
        self.first_pause = first_pause
        self.longest_pause = longest_pause
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.states: dict[str, WorkerState] = {}

    def start(self, name: str, run: Callable[[], Awaitable[object]]) -> None:
        self.states[name] = WorkerState()
        self.tasks[name] = asyncio.create_task(self._keep_running(name, run), name=f"papo-{name}")

    async def _keep_running(self, name: str, run: Callable[[], Awaitable[object]]) -> None:
        state = self.states[name]
        pause = self.first_pause
        while True:
            started = time.monotonic()
            try:
                await run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any crash: keep the worker alive, loudly
                if time.monotonic() - started > HEALTHY_AFTER_SECONDS:
                    pause = self.first_pause
                state.restarts += 1
                state.last_error = f"{type(exc).__name__}: {exc}"[:300]
                state.restarting = True
                log.error("background worker crashed; restarting", worker=name, pause_seconds=pause, exc_info=exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, self.longest_pause)
                state.restarting = False
                continue
            state.finished = True
            return

    def restarting(self) -> dict[str, str]:
        """Workers waiting to be started again after a crash: name -> the error."""
        return {name: state.last_error or "" for name, state in self.states.items() if state.restarting}

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        for task in self.tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
