"""Logs never carry what users wrote through a database error: PostgreSQL puts the failing row in
an error's DETAIL ("Failing row contains (…)"), SQLAlchemy the bound values in "[parameters: …]"."""

from __future__ import annotations

import io
import json
import logging
import secrets
from typing import Any

import asyncpg
import httpx
import pytest
import structlog
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from papo.auth.models import Role
from papo.db.engine import Database
from papo.ops.logging import ScrubbingFormatter, configure_logging
from tests.conftest import ProvisionedDatabase, papo_logs, plain_dsn
from tests.support import create_session


async def test_failing_inserts_do_not_log_what_the_user_wrote(
    app: FastAPI, database: ProvisionedDatabase, make_tenant: Any
) -> None:
    """A message (written through asyncpg) and a chat title (through the ORM) that the database
    refuses: the 500 is logged with the error, never with the text."""
    poison = "my card is 4111 1111 1111 " + secrets.token_hex(4)
    constraints = {
        "messages": "test_poison_" + secrets.token_hex(4),
        "chat_sessions": "test_poison_" + secrets.token_hex(4),
    }
    column = {"messages": "content", "chat_sessions": "title"}
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    # Only this one text fails to insert (NOT VALID: existing rows are not checked), so the inserts
    # fail the way an unforeseen database error would.
    for table, constraint in constraints.items():
        await owner.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT {constraint} CHECK ({column[table]} <> '{poison}') NOT VALID"
        )
    stream = io.StringIO()
    configure_logging("INFO", json=True, stream=stream)
    try:
        member = await (await make_tenant()).member(Role.member)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://papo.test") as http:
            chat = await create_session(http, member)
            message = await http.post(
                f"/api/v1/sessions/{chat['id']}/messages", json={"content": poison}, headers=member.headers
            )
            titled = await http.post(
                "/api/v1/sessions", json={"title": poison, "assistant_id": None}, headers=member.headers
            )
    finally:
        papo_logs()
        for table, constraint in constraints.items():
            await owner.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
        await owner.close()
    assert message.status_code == 500 and titled.status_code == 500
    logged = stream.getvalue()
    errors = [json.loads(line) for line in logged.splitlines() if json.loads(line)["event"] == "unhandled error"]
    expected = [constraints["messages"], constraints["chat_sessions"]]
    assert [name in error["exception"] for error, name in zip(errors, expected, strict=True)] == [True, True]
    assert poison not in logged
    assert poison.split()[-1] not in logged


async def test_bound_values_and_details_stay_out_of_every_log(db: Database, database: ProvisionedDatabase) -> None:
    poison = "secret-" + secrets.token_hex(8)

    async def insert_note() -> None:
        async with db.transaction() as session:
            await session.execute(text("CREATE TEMP TABLE notes (body text CHECK (length(body) < 5))"))
            await session.execute(text("INSERT INTO notes VALUES (:body)"), {"body": poison})

    # The runtime pool hides bound values from its error messages.
    with pytest.raises(DBAPIError) as runtime_error:
        await insert_note()
    assert "[SQL parameters hidden" in str(runtime_error.value)

    # An engine that does not hide them (someone else's, or a future one): the logs still do not show them.
    engine = create_async_engine(database.owner_url)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("CREATE TEMP TABLE notes (body text CHECK (length(body) < 5))"))
            with pytest.raises(DBAPIError) as owner_error:
                await connection.execute(text("INSERT INTO notes VALUES (:body)"), {"body": poison})
    finally:
        await engine.dispose()
    assert poison in str(owner_error.value)  # what would have been logged

    for failure in (runtime_error.value, owner_error.value):
        stream = io.StringIO()
        configure_logging("INFO", stream=stream)
        try:
            log = structlog.get_logger("papo.test")
            log.error("insert failed", exc_info=failure)
            log.warning("worker failed; retrying", error=str(failure))
        finally:
            papo_logs()
        assert poison not in stream.getvalue()
        assert "notes" in stream.getvalue()  # the statement and the error's message remain

        handler = logging.StreamHandler(plain := io.StringIO())
        handler.setFormatter(ScrubbingFormatter("%(levelname)s %(name)s: %(message)s"))
        stdlib = logging.getLogger("papo.test.stdlib")
        stdlib.addHandler(handler)
        try:
            stdlib.error("Exception in ASGI application", exc_info=failure)
            stdlib.error("failed: %s", failure)
        finally:
            stdlib.removeHandler(handler)
        assert poison not in plain.getvalue()
        assert "Exception in ASGI application" in plain.getvalue()
