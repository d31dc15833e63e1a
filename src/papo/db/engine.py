"""Engines, the row-level-security context and transactions."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol, cast

import asyncpg
import structlog
from sqlalchemy import CursorResult, Executable, event, text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from papo.db.errors import database_unreachable
from papo.db.server import (
    DatabaseLocation,
    app_role_password,
    async_url,
    default_app_role,
    derive_app_url,
    embedded_runs_as_another_user,
    start_embedded,
)
from papo.errors import UNSTORABLE_TEXT, DatabaseUnavailable, DomainError, InvalidInput, unstorable_text
from papo.private_files import ensure_private_dir
from papo.settings import Settings

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RlsContext:
    """What the policies see: the tenant, the acting user and the acting role."""

    tenant_id: uuid.UUID | None
    user_id: str | None
    role: str | None


# session.info key: builders of statements sent in the same round trip as the COMMIT (the outbox's
# publish): a publishing transaction then costs no more round trips than any other.
WITH_COMMIT = "with_commit"


def commit_with(session: AsyncSession, build: Callable[[AsyncSession], str | None]) -> None:
    """Have `build(session)` called once the unit's work is done; the SQL it returns (or None) goes to
    the server with the COMMIT as one simple query. It takes no parameters, so it must quote every
    value itself (`sql_literal`). If it fails, the COMMIT is skipped and the unit rolls back."""
    builders: list[Callable[[AsyncSession], str | None]] = session.info.setdefault(WITH_COMMIT, [])
    if build not in builders:
        builders.append(build)


def sql_literal(text_value: str) -> str:
    """A string literal for a simple query. Only ASCII is accepted (JSON made with ensure_ascii), and
    every connection runs with standard_conforming_strings on (PostgreSQL's default since 9.1, and
    papo's connections set it), so doubling quotes is the whole of escaping."""
    if not text_value.isascii():
        raise ValueError("sql_literal takes ASCII text only")
    return "'" + text_value.replace("'", "''") + "'"


# session.info key: callbacks run once the transaction has committed (never after a rollback).
AFTER_COMMIT = "after_commit"


def after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    session.info.setdefault(AFTER_COMMIT, []).append(callback)


# session.info key: work to do once the transaction has committed and its connection is back in the
# pool (its own units of work may take connections); awaited before `transaction()` returns, and a
# failure is logged, never raised (what it follows has committed).
AFTER_COMMIT_WORK = "after_commit_work"


def after_commit_work(session: AsyncSession, work: Callable[[Database], Awaitable[object]]) -> None:
    queued: list[Callable[[Database], Awaitable[object]]] = session.info.setdefault(AFTER_COMMIT_WORK, [])
    if work not in queued:
        queued.append(work)


def driver(session: AsyncSession) -> asyncpg.Connection:
    """The asyncpg connection under a unit of work, inside the same transaction as the session.

    For the few statements every request runs (authentication, the message insert): asyncpg costs
    a tenth of the CPU of an ORM round trip on this path, which the benchmark shows directly."""
    connection: asyncpg.Connection = session.info["driver"]
    return connection


async def rows_changed(session: AsyncSession, statement: Executable) -> int:
    """Run an UPDATE or DELETE and say how many rows it changed."""
    result = cast(CursorResult[Any], await session.execute(statement))
    return result.rowcount


async def apply_context(session: AsyncSession, context: RlsContext) -> None:
    """Scope the current transaction; set_config(..., true) ends with it, so pooled connections stay clean."""
    await driver(session).execute(
        "SELECT papo_set_context($1, $2, $3)", context.tenant_id, context.user_id, context.role
    )


@dataclass(frozen=True)
class Resumption:
    """A principal remembered from an earlier authentication (papo.auth.principal_cache), for the
    database to confirm at BEGIN: papo_resume_context (migration 0032) sets `context` only if the
    membership still has its role, the API key is not revoked and the browser session is live."""

    context: RlsContext
    api_key_id: uuid.UUID | None
    web_session_id: uuid.UUID | None


# session.info key: the database refused the unit's Resumption; it runs with no context instead.
RESUMPTION_REFUSED = "resumption_refused"
REFUSED_SQLSTATE = "PAP01"


class ResumptionRefused(Exception):
    """A statement run on its own confirmed a Resumption first, and the database refused it."""


def begin_in(context: RlsContext | Resumption) -> str | None:
    """BEGIN and the context (or its resumption) as one simple query: one round trip instead of
    two. None when a value cannot be written as a literal here (a non-ASCII user id)."""
    base = context.context if isinstance(context, Resumption) else context
    values: list[object] = [base.tenant_id, base.user_id, base.role]
    if isinstance(context, Resumption):
        values += [context.api_key_id, context.web_session_id]
    try:
        literals = ["NULL" if value is None else sql_literal(str(value)) for value in values]
    except ValueError:
        return None
    if isinstance(context, Resumption):
        tenant, user, role, key, browser = literals
        return f"BEGIN;SELECT papo_resume_context({tenant}::uuid,{user},{role},{key}::uuid,{browser}::uuid)"
    tenant, user, role = literals
    return f"BEGIN;SELECT papo_set_context({tenant}::uuid,{user},{role})"


def application_name(role: str) -> str:
    """How this process's connections show in pg_stat_activity: what they are for, and whose."""
    return f"{role}:{os.getpid()}"


def locate_database(settings: Settings) -> DatabaseLocation:
    """Owner and runtime URLs; starts the embedded server when no external one is configured.

    Every command starts here, so this is also where the data directory is made private (0700)."""
    # an embedded server keeps its files inside (its system user must pass through), even when a
    # process reaches it by URL (benchmarks, tests)
    embedded_inside = not settings.database_url or (settings.data_dir / "pgdata").exists()
    ensure_private_dir(settings.data_dir, traversable=embedded_inside and embedded_runs_as_another_user())
    embedded = None
    if settings.database_url:
        owner_url = async_url(settings.database_url)
    else:
        embedded, server_url = start_embedded(settings.data_dir.resolve() / "pgdata")
        owner_url = server_url.set(database=settings.database_name)
    if settings.app_database_url:
        app_url = async_url(settings.app_database_url)
    else:
        role = settings.app_role or default_app_role(owner_url.database)
        app_url = derive_app_url(owner_url, role, app_role_password(settings.data_dir))
    return DatabaseLocation(owner_url=owner_url, app_url=app_url, embedded=embedded)


class DatabaseObserver(Protocol):
    """What the layer above watches (ops attaches its metrics here; the database imports no ops)."""

    def query(self, record: Any) -> None:
        """After every statement: an asyncpg LoggedQuery (elapsed time, exception)."""

    def pool(self, in_use: int, open_connections: int) -> None:
        """After every checkout and checkin."""


def _driver_of(connection: AsyncConnection) -> asyncpg.Connection:
    """The asyncpg connection under a connection just taken from the pool. It is already checked
    out, so reading it needs no trip into SQLAlchemy's greenlet (`get_raw_connection` takes one)."""
    assert connection.sync_connection is not None
    driver_connection: asyncpg.Connection = connection.sync_connection.connection.driver_connection
    return driver_connection


class Database:
    """The runtime role's connection pool. Every unit of work is one transaction."""

    def __init__(
        self,
        app_url: URL,
        *,
        pool_size: int = 10,
        observer: DatabaseObserver | None = None,
        read_only: bool = False,
    ) -> None:
        server_settings = {
            "application_name": application_name("papo-read" if read_only else "papo"),
            "standard_conforming_strings": "on",
            # pgvector (knowledge retrieval): an index scan filtered by tenant goes on until it has
            # found enough rows, instead of returning the few of the first candidates that pass
            "hnsw.iterative_scan": "relaxed_order",
        }
        if read_only:  # a replica refuses writes anyway; a primary used as one refuses them too
            server_settings["default_transaction_read_only"] = "on"
        # AUTOCOMMIT at the SQLAlchemy level: transactions are asyncpg's (see `transaction`).
        self.engine: AsyncEngine = create_async_engine(
            app_url,
            pool_size=pool_size,
            max_overflow=pool_size,
            isolation_level="AUTOCOMMIT",
            # Bound values (message text, e-mail addresses) stay out of error messages and so out of logs.
            hide_parameters=True,
            connect_args={"server_settings": server_settings},
        )
        # Two connections kept for the event path (numbering committed events, the relay's read).
        # Under load the pool above has a queue of borrowers; an event waiting behind them to be
        # numbered and handed out added up to a second to every subscriber's latency
        # (`make bench-realtime`, commit → relay). Both users run one statement at a time.
        self.event_path: AsyncEngine = create_async_engine(
            app_url,
            pool_size=2,
            max_overflow=0,
            isolation_level="AUTOCOMMIT",
            hide_parameters=True,
            connect_args={"server_settings": server_settings},
        )
        if observer is not None:
            self._instrument(observer)

    def _instrument(self, observer: DatabaseObserver) -> None:
        pool = self.engine.sync_engine.pool

        def on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.driver_connection.add_query_logger(observer.query)

        def on_checkout_or_in(*_: Any) -> None:
            in_use = pool.checkedout()  # type: ignore[attr-defined]
            observer.pool(in_use, in_use + pool.checkedin())  # type: ignore[attr-defined]

        event.listen(pool, "connect", on_connect)
        event.listen(self.event_path.sync_engine.pool, "connect", on_connect)
        event.listen(pool, "checkout", on_checkout_or_in)
        event.listen(pool, "checkin", on_checkout_or_in)

    @asynccontextmanager
    async def transaction(self, context: RlsContext | Resumption | None = None) -> AsyncIterator[AsyncSession]:
        """One unit of work: an ORM session and its asyncpg connection in one database transaction.

        asyncpg owns BEGIN/COMMIT; SQLAlchemy runs on the same connection in autocommit mode, so it
        never opens a transaction of its own and sees (and writes) exactly what this one does.
        Committed when the block ends, rolled back if it raises. A lost or refused connection comes
        out as DatabaseUnavailable (503, retry), text no column can hold as InvalidInput (422)."""
        try:
            async with self._unit(context) as session:
                yield session
        except (DatabaseUnavailable, InvalidInput):
            raise
        except Exception as exc:  # never a cancellation: that is not the database's failure
            if database_unreachable(exc):
                raise DatabaseUnavailable from exc
            if unstorable_text(exc):  # bad input, not a fault: a 4xx, and nothing was written
                raise InvalidInput(UNSTORABLE_TEXT) from exc
            raise
        for work in session.info.pop(AFTER_COMMIT_WORK, []):
            try:
                await work(self)
            except Exception as exc:
                log.warning("work after a commit failed", error=str(exc) or type(exc).__name__)

    @asynccontextmanager
    async def _unit(self, context: RlsContext | Resumption | None) -> AsyncIterator[AsyncSession]:
        async with self.engine.connect() as connection:
            asyncpg_connection = _driver_of(connection)
            # SQLAlchemy's pool cannot see transactions it did not open. A connection must never go
            # back to it with a transaction open, or with asyncpg unsure whether one is: the next
            # unit of work would nest a savepoint in it and never commit. So unless this unit ends
            # with a COMMIT or ROLLBACK that went through, the connection is discarded, whatever
            # interrupted it (a client leaving mid-stream cancels at any await, BEGIN included).
            ended_cleanly = False
            try:
                # BEGIN and COMMIT are sent as plain statements, not through asyncpg's Transaction,
                # so that the COMMIT can carry the statements registered with `commit_with`.
                if asyncpg_connection.is_in_transaction():
                    await asyncpg_connection.execute("ROLLBACK")
                opening = None if context is None else begin_in(context)
                # a resumption the database refuses (or that cannot be written as literals) leaves
                # the unit without a context: its caller authenticates from scratch
                refused = isinstance(context, Resumption) and opening is None
                try:
                    await asyncpg_connection.execute(opening or "BEGIN")
                except asyncpg.PostgresError as exc:
                    if getattr(exc, "sqlstate", None) != REFUSED_SQLSTATE:
                        raise
                    await asyncpg_connection.execute("ROLLBACK")
                    await asyncpg_connection.execute("BEGIN")
                    refused = True
                session = AsyncSession(bind=connection, expire_on_commit=False, autoflush=True)
                session.info["driver"] = asyncpg_connection
                session.info[RESUMPTION_REFUSED] = refused
                try:
                    if isinstance(context, RlsContext) and opening is None:
                        await apply_context(session, context)
                    yield session
                    # A unit that only used the driver (the message path) has no ORM state to flush
                    # or release: each of those steps crosses into SQLAlchemy's greenlet (~0.1 ms).
                    orm_used = bool(session.in_transaction() or session.new or session.deleted or session.identity_map)
                    if orm_used:
                        await session.flush()
                    final = [sql for build in session.info.get(WITH_COMMIT, ()) if (sql := build(session))]
                    callbacks: list[Callable[[], None]] = session.info.get(AFTER_COMMIT, [])
                    if orm_used:
                        await session.close()
                    # one simple query: if a statement before the COMMIT fails, the rest is skipped
                    # and the transaction is left aborted, which the rollback below ends
                    await asyncpg_connection.execute(";".join([*final, "COMMIT"]))
                except BaseException:
                    # a rollback that fails (the connection broke, say because the task was
                    # cancelled mid-query) must not hide what interrupted the unit: the connection is
                    # discarded below, and the caller sees the original exception (a cancellation
                    # stays a cancellation, so a worker being stopped does stop)
                    with suppress(Exception):
                        try:
                            await session.close()
                        finally:
                            if asyncpg_connection.is_in_transaction():
                                await asyncpg_connection.execute("ROLLBACK")
                            ended_cleanly = True
                    raise
                ended_cleanly = True
                for callback in callbacks:
                    callback()
            except Exception as exc:
                # asyncpg reports a connection the server dropped in several ways (even as a
                # protocol-state error on the next statement); a closed connection says it plainly.
                if not isinstance(exc, DomainError) and asyncpg_connection.is_closed():
                    raise DatabaseUnavailable from exc
                raise
            finally:
                if not ended_cleanly:
                    await connection.invalidate()

    async def verify_runtime_role(self) -> None:
        """Refuse to serve through a role that row-level security would not bind."""
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    text("SELECT rolname, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
                )
            ).one()
        if row.rolsuper or row.rolbypassrls:
            raise RuntimeError(
                f"database role {row.rolname!r} is superuser or has BYPASSRLS; papo must connect as "
                "an ordinary role (set PAPO_APP_DATABASE_URL, or leave it unset for the role papo migrate creates)"
            )

    async def verify_schema(self, expected: str) -> None:
        async with self.engine.connect() as connection:
            try:
                revision = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            except Exception as exc:  # missing table or no privilege: never migrated
                raise RuntimeError("the database has no papo schema yet: run `papo migrate`") from exc
        if revision != expected:
            raise RuntimeError(f"the database schema is at {revision}, papo needs {expected}: run `papo migrate`")

    async def call(self, statement: str, *args: Any, event_path: bool = False) -> Any:
        """One statement as its own transaction, outside any unit of work (a definer function's call
        whose result needs no context): one round trip. Its single value. `event_path`: on the
        connections kept for numbering and relaying events, never queued behind the pool."""
        return await self._alone("fetchval", statement, *args, event_path=event_path)

    async def rows(self, statement: str, *args: Any, event_path: bool = False) -> list[Any]:
        """Like `call`, for a statement's rows."""
        rows: list[Any] = await self._alone("fetch", statement, *args, event_path=event_path)
        return rows

    async def _alone(self, method: str, statement: str, *args: Any, event_path: bool) -> Any:
        try:
            async with (self.event_path if event_path else self.engine).connect() as connection:
                raw = _driver_of(connection)
                try:
                    return await getattr(raw, method)(statement, *args)
                except Exception:
                    if raw.is_closed():  # dropped by the server: not back into the pool
                        await connection.invalidate()
                    raise
        except Exception as exc:
            if database_unreachable(exc):
                raise DatabaseUnavailable from exc
            if unstorable_text(exc):
                raise InvalidInput(UNSTORABLE_TEXT) from exc
            if getattr(exc, "sqlstate", None) == REFUSED_SQLSTATE:
                raise ResumptionRefused from exc
            raise

    async def dispose(self) -> None:
        await self.engine.dispose()
        await self.event_path.dispose()
