"""`papo migrate`: create the database and roles if needed, then apply Alembic migrations as the owner."""

from __future__ import annotations

from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from sqlalchemy import text
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import create_async_engine

log = structlog.get_logger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def ensure_database(owner_url: URL) -> None:
    """Create the target database when the owner can (the embedded server, a fresh test server)."""
    engine = create_async_engine(owner_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
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


async def migrate(owner_url: URL, app_url: URL, *, revision: str = "head", create_app_role: bool) -> None:
    """Upgrade the schema and make sure the runtime login role exists and is bound by RLS."""
    engine = create_async_engine(owner_url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))
            await connection.commit()
            role = app_url.username or ""
            if create_app_role:
                exists = await connection.scalar(text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
                verb = "ALTER" if exists else "CREATE"
                password = (app_url.password or "").replace("'", "''")
                await connection.execute(
                    text(
                        f"{verb} ROLE {_quote_ident(role)} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB "
                        f"NOCREATEROLE INHERIT PASSWORD '{password}'"
                    )
                )
            await connection.execute(text(f"GRANT papo_runtime TO {_quote_ident(role)}"))
            # Lets a starting server tell "run papo migrate" apart from a broken database.
            await connection.execute(text("GRANT SELECT ON alembic_version TO papo_runtime"))
            await connection.commit()
    finally:
        await engine.dispose()
    log.info("migrations applied", revision=revision, app_role=app_url.username)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


async def downgrade(owner_url: URL, revision: str) -> None:
    engine = create_async_engine(owner_url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), revision))
            await connection.commit()
    finally:
        await engine.dispose()


async def current_revision(owner_url: URL) -> str | None:
    engine = create_async_engine(owner_url)
    try:
        async with engine.connect() as connection:
            has_table = await connection.scalar(text("SELECT to_regclass('alembic_version') IS NOT NULL"))
            if not has_table:
                return None
            value = await connection.scalar(text("SELECT version_num FROM alembic_version"))
            return str(value) if value is not None else None
    finally:
        await engine.dispose()
