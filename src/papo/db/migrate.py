"""`papo migrate`: create the database and roles if needed, then apply Alembic migrations as the owner."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def ensure_database(owner_url: URL) -> None:
    """Create the target database when the owner can (the embedded server, a fresh test server)."""
    engine = create_async_engine(owner_url.set(database="postgres"), isolation_level="AUTOCOMMIT", hide_parameters=True)
    try:
        async with engine.connect() as connection:
            exists = await connection.scalar(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": owner_url.database}
            )
            if not exists:
                quoted = owner_url.database.replace('"', '""') if owner_url.database else ""
                await connection.execute(text(f'CREATE DATABASE "{quoted}"'))
                log.info("database created", database=owner_url.database)
    finally:
        await engine.dispose()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# COMMENT ON ROLE of a login role papo created: which database's runtime role it is. A role is only
# ever changed by the install whose database it names.
ROLE_MARKER_PREFIX = "papo runtime role of database "
RUNTIME_ATTRIBUTES = "LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE INHERIT"


class AppRoleConflict(RuntimeError):
    """The runtime role's name is taken by a role this install cannot prove is its own."""


def role_marker(database: str) -> str:
    return ROLE_MARKER_PREFIX + database


async def migrate(
    owner_url: URL,
    app_url: URL,
    *,
    revision: str = "head",
    create_app_role: bool,
    restrict_connect: bool = True,
    vectors: bool = True,
) -> None:
    """Upgrade the schema and make sure the runtime login role exists and is bound by RLS.

    restrict_connect: only this install's runtime role (and the owner, and superusers) may connect
    to the database. The NOLOGIN roles that carry papo's privileges (papo_runtime, papo_auth) are
    shared by every papo database on the server, so without this the runtime role of one install
    could open another install's database with those privileges.

    vectors: use the server's pgvector extension for knowledge retrieval where it has one (False:
    full text only, as on a server without it; migration 0031 reads this as `papo.vector`)."""
    engine = create_async_engine(owner_url, hide_parameters=True)
    try:
        async with engine.connect() as connection:
            if not vectors:
                await connection.execute(text("SELECT set_config('papo.vector', 'off', false)"))
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))
            await connection.commit()
            role = app_url.username or ""
            if create_app_role:
                await _provide_app_role(connection, owner_url.database or "", app_url)
            await connection.execute(text(f"GRANT papo_runtime TO {_quote_ident(role)}"))
            # Lets a starting server tell "run papo migrate" apart from a broken database.
            await connection.execute(text("GRANT SELECT ON alembic_version TO papo_runtime"))
            if restrict_connect and owner_url.database:
                database = _quote_ident(owner_url.database)
                # Without the privilege to (the migrator neither owns the database nor is superuser)
                # PostgreSQL only warns, and PUBLIC keeps CONNECT.
                await connection.execute(text(f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC"))
                await connection.execute(text(f"GRANT CONNECT ON DATABASE {database} TO {_quote_ident(role)}"))
            await connection.commit()
    finally:
        await engine.dispose()
    log.info("migrations applied", revision=revision, app_role=app_url.username)


async def _provide_app_role(connection: AsyncConnection, database: str, app_url: URL) -> None:
    """Create the runtime login role, or bring the one this install made up to date.

    Several installs may share one PostgreSQL server. A role marked as another database's is never
    touched; an unmarked one (made by an older papo, or by someone else) is adopted only when this
    install can already sign in as it with its own password, and its password is then left as it is."""
    role = app_url.username or ""
    marker = role_marker(database)
    password = _quote_literal(app_url.password or "")
    found = (
        await connection.execute(
            text("SELECT shobj_description(oid, 'pg_authid') AS marker FROM pg_roles WHERE rolname = :role"),
            {"role": role},
        )
    ).first()
    if found is None:
        await connection.execute(text(f"CREATE ROLE {_quote_ident(role)} {RUNTIME_ATTRIBUTES} PASSWORD {password}"))
    elif found.marker == marker:
        await connection.execute(text(f"ALTER ROLE {_quote_ident(role)} {RUNTIME_ATTRIBUTES} PASSWORD {password}"))
        return
    elif found.marker and found.marker.startswith(ROLE_MARKER_PREFIX):
        other = found.marker.removeprefix(ROLE_MARKER_PREFIX)
        raise AppRoleConflict(
            f"the database role {role!r} is the runtime role of the papo database {other!r} on this server, "
            f"not of {database!r}; papo leaves it alone. Give this install its own role: set PAPO_APP_ROLE "
            "to an unused name, or PAPO_APP_DATABASE_URL to a role you created for it"
        )
    elif not await _can_sign_in(app_url):
        raise AppRoleConflict(
            f"the database role {role!r} already exists on this server and papo cannot tell that it belongs "
            f"to the database {database!r} (signing in as it with this install's password failed), so it will "
            "not change its password. Set PAPO_APP_ROLE to an unused name, or PAPO_APP_DATABASE_URL to that "
            "role with its password; if it is this install's role from an older papo, mark it with "
            f"COMMENT ON ROLE {_quote_ident(role)} IS {_quote_literal(marker)} and run papo migrate again"
        )
    await connection.execute(text(f"COMMENT ON ROLE {_quote_ident(role)} IS {_quote_literal(marker)}"))
    log.info("runtime role ready", role=role, created=found is None)


async def _can_sign_in(app_url: URL) -> bool:
    dsn = app_url.set(drivername="postgresql").render_as_string(hide_password=False)
    try:
        connection = await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await connection.close()
    return True


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


async def downgrade(owner_url: URL, revision: str) -> None:
    engine = create_async_engine(owner_url, hide_parameters=True)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), revision))
            await connection.commit()
    finally:
        await engine.dispose()


async def current_revision(owner_url: URL) -> str | None:
    engine = create_async_engine(owner_url, hide_parameters=True)
    try:
        async with engine.connect() as connection:
            has_table = await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
            if not has_table:
                return None
            value = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            return str(value) if value is not None else None
    finally:
        await engine.dispose()
