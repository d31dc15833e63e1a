"""Migrations apply to an empty database, roll all the way back, and apply again."""

from __future__ import annotations

import secrets

import asyncpg

from papo.chat.search import FOLD_FROM, FOLD_TO, fold
from papo.db.migrate import current_revision, downgrade, ensure_database, head_revision, migrate
from papo.db.server import default_app_role
from tests.conftest import ProvisionedDatabase, drop_database, plain_dsn


async def test_upgrade_downgrade_upgrade(database: ProvisionedDatabase) -> None:
    owner_url = database.owner_url.set(database="papo_migrations_" + secrets.token_hex(4))
    app_url = database.app_url.set(database=owner_url.database, username=default_app_role(owner_url.database))
    await ensure_database(owner_url)
    try:
        assert await current_revision(owner_url) is None
        await migrate(owner_url, app_url, create_app_role=True)
        assert await current_revision(owner_url) == head_revision()
        await downgrade(owner_url, "base")
        connection = await asyncpg.connect(plain_dsn(owner_url))
        try:
            leftovers = await connection.fetch(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND relkind IN ('r', 'v', 'S') AND relname <> 'alembic_version'"
            )
            functions = await connection.fetch(
                "SELECT proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = 'public' AND proname LIKE 'papo%'"
            )
            types = await connection.fetch(
                "SELECT typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE n.nspname = 'public' AND typtype = 'e'"
            )
        finally:
            await connection.close()
        assert leftovers == []
        assert functions == []
        assert types == []
        await migrate(owner_url, app_url, create_app_role=True)
        assert await current_revision(owner_url) == head_revision()
    finally:
        await drop_database(database.admin_url, owner_url.database, app_url.username)


async def test_python_fold_matches_sql_fold(app_role_connection: asyncpg.Connection) -> None:
    sample = FOLD_FROM + FOLD_TO + "Integração ÇÃO façade naïve"
    assert await app_role_connection.fetchval("SELECT papo_fold($1)", sample) == fold(sample)
    assert len(FOLD_FROM) == len(FOLD_TO)
