from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import uvicorn

from tests.fake_openai import FakeOpenAI


@pytest.fixture(scope="session")
async def fake_openai() -> AsyncIterator[tuple[FakeOpenAI, str]]:
    """The fake provider on a real port; yields it and its base URL (…/v1)."""
    fake = FakeOpenAI()
    server = uvicorn.Server(uvicorn.Config(fake.app, host="127.0.0.1", port=0, log_config=None, access_log=False))
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield fake, f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    await task
