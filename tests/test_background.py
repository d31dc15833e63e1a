"""Background workers: one that crashes is started again (and shows in /readyz while it waits), one
that finishes stays finished, and stopping cancels them all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI

from papo.background import Workers
from papo.waiting import work_when_woken


async def eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_a_crashing_worker_is_restarted_until_it_runs() -> None:
    runs = 0
    running = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError(f"crash number {runs}")
        running.set()
        await asyncio.Event().wait()  # a healthy worker runs until cancelled

    workers = Workers(first_pause=0.01, longest_pause=0.02)
    workers.start("flaky", flaky)
    await asyncio.wait_for(running.wait(), 10)
    assert runs == 3
    assert workers.states["flaky"].restarts == 2
    assert workers.states["flaky"].last_error == "RuntimeError: crash number 2"
    assert workers.restarting() == {}
    await workers.stop()
    assert workers.tasks == {}


async def test_a_finished_worker_is_not_started_again() -> None:
    calls = 0

    async def once() -> int:
        nonlocal calls
        calls += 1
        return calls

    workers = Workers(first_pause=0.01)
    workers.start("once", once)
    await eventually(lambda: workers.states["once"].finished, "the worker finished")
    await asyncio.sleep(0.05)
    assert calls == 1
    await workers.stop()


@pytest.fixture
def crashing_workers(app: FastAPI) -> Iterator[Workers]:
    state = app.state.papo
    original = state.workers
    replacement = Workers(first_pause=3600)  # waits (visibly) for the rest of the test
    state.workers = replacement
    yield replacement
    state.workers = original


async def test_readyz_shows_a_worker_waiting_to_restart(client: httpx.AsyncClient, crashing_workers: Workers) -> None:
    async def broken() -> None:
        raise ConnectionError("the queue's server went away")

    crashing_workers.start("queue", broken)
    await eventually(lambda: bool(crashing_workers.restarting()), "the worker crashed")
    ready = await client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["workers"] == "queue restarting after ConnectionError: the queue's server went away"
    await crashing_workers.stop()


async def test_the_wake_or_poll_loop_drains_retries_and_stops_on_the_unexpected() -> None:
    """One loop serves every queue worker: it drains while there is more, retries a passing failure,
    and lets anything else out (for the workers' restart)."""
    wake = asyncio.Event()
    rounds: list[str] = []
    script = iter([True, True, False, "passing", False, "fatal"])

    async def work() -> bool:
        step = next(script)
        rounds.append(str(step))
        if step == "passing":
            raise ConnectionResetError("database restarting")
        if step == "fatal":
            raise ValueError("a bug")
        return bool(step)

    loop = asyncio.create_task(work_when_woken(wake, 0.01, work, name="test", retry_on=(ConnectionResetError,)))
    wake.set()
    with pytest.raises(ValueError, match="a bug"):
        await asyncio.wait_for(loop, 10)
    assert rounds == ["True", "True", "False", "passing", "False", "fatal"]
