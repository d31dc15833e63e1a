"""SECURITY DEFINER functions cannot be pointed at the caller's own tables.

A definer function runs with its owner's rights (papo_auth sees across tenants). With
`search_path = pg_catalog, public` PostgreSQL still searches the session's temporary schema first,
so a runtime role that creates `TEMP TABLE users` would feed papo_login_candidates its own rows."""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import asyncpg

from tests.conftest import ProvisionedDatabase, plain_dsn

ATTACKER_HASH = "$argon2id$v=19$m=65536,t=3,p=4$attacker$attacker"


async def _shadow_identity_tables(connection: asyncpg.Connection, email: str) -> None:
    """What a runtime role can do in its own session: temp tables named like papo's, holding a row
    that claims `email` with a password hash the attacker knows."""
    await connection.execute(
        "CREATE TEMP TABLE users (id text, email text, name text, password_hash text, "
        "created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now())"
    )
    await connection.execute(
        "CREATE TEMP TABLE memberships (tenant_id uuid, user_id text, role text, "
        "created_at timestamptz DEFAULT now(), updated_at timestamptz DEFAULT now())"
    )
    # Readable by the definer functions' owner, so they would use these rows rather than fail.
    await connection.execute("GRANT SELECT, INSERT ON pg_temp.users, pg_temp.memberships TO PUBLIC")
    await connection.execute(
        "INSERT INTO pg_temp.users (id, email, password_hash) VALUES ('attacker', $1, $2)", email, ATTACKER_HASH
    )
    await connection.execute(
        "INSERT INTO pg_temp.memberships (tenant_id, user_id, role) VALUES ($1, 'attacker', 'owner')", uuid.uuid4()
    )


async def test_login_candidates_ignore_the_callers_temp_tables(database: ProvisionedDatabase, make_tenant: Any) -> None:
    tenant = await make_tenant()
    victim = await tenant.member()
    ghost = f"ghost-{secrets.token_hex(4)}@example.com"
    connection = await asyncpg.connect(plain_dsn(database.app_url))  # the runtime role, as the server uses it
    try:
        assert await connection.fetchval("SELECT current_user") == database.app_url.username
        await _shadow_identity_tables(connection, ghost)
        await connection.execute(
            "INSERT INTO pg_temp.users (id, email, password_hash) VALUES ('attacker-2', $1, $2)",
            victim.email,
            ATTACKER_HASH,
        )
        # The runtime role itself sees its temp tables first: the shadowing is real.
        assert await connection.fetchval("SELECT count(*) FROM users WHERE email = $1", ghost) == 1

        assert await connection.fetch("SELECT * FROM papo_login_candidates($1)", ghost) == []
        rows = await connection.fetch("SELECT * FROM papo_login_candidates($1)", victim.email)
        assert rows, "the real account must still be found"
        assert all(row[0] == victim.user_id for row in rows)
        assert all(row[1] != ATTACKER_HASH for row in rows)
    finally:
        await connection.close()


async def test_every_definer_function_searches_pg_temp_last(database: ProvisionedDatabase) -> None:
    """Catches any future migration that writes a definer function without the safe search_path."""
    connection = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        rows = await connection.fetch(
            "SELECT p.oid::regprocedure::text AS name, p.proconfig FROM pg_proc p "
            "JOIN pg_namespace n ON n.oid = p.pronamespace "
            "WHERE p.prosecdef AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        )
    finally:
        await connection.close()
    assert len(rows) > 20  # papo has dozens; an empty result would mean the query looks elsewhere
    unsafe = []
    for row in rows:
        paths = [entry.split("=", 1)[1] for entry in row["proconfig"] or [] if entry.startswith("search_path=")]
        schemas = [schema.strip() for schema in paths[0].split(",")] if paths else []
        if not schemas or schemas[0] != "pg_catalog" or schemas[-1] != "pg_temp":
            unsafe.append((row["name"], row["proconfig"]))
    assert unsafe == []
