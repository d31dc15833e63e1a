"""The schema can be distributed by tenant (Citus): every key of a tenant table includes tenant_id.

Citus co-locates a distributed table's rows by its distribution column, and accepts a primary key,
unique constraint or foreign key only when it includes that column (a foreign key may also point at
a reference table, which every node holds whole). papo's tenant tables are distributed by
`tenant_id`; the tables without it are deliberately global and listed here with the reason."""

from __future__ import annotations

import asyncpg

from tests.conftest import ProvisionedDatabase, plain_dsn

# Tables without tenant_id, each on purpose. Under Citus the first two are reference tables
# (copied to every node: tenant tables' foreign keys point at them); the others belong to the
# installation, not to a tenant, and stay on the coordinator.
GLOBAL_TABLES = {
    "tenants": "reference: the tenants themselves, the distribution key's own table",
    "users": "reference: a person is one account across the companies they belong to",
    "user_identities": "reference: a person's sign-in identities (OIDC subjects), found before any tenant is known",
    "sign_in_guards": "installation: failed sign-ins per address and e-mail, checked before any tenant is known",
    "rate_limit_buckets": "installation: rate-limit counters keyed by a hash (of a tenant, key or address)",
    "blob_deletions": "installation: stored files waiting to be removed from the blob store",
    "ops_observations": "installation: the operator's metrics history",
    "alert_states": "installation: the operator's alerts",
    "alembic_version": "installation: the schema's revision",
    "events_retention": "installation: one row, the highest event id retention removed (the resume floor)",
    "outbox_cursors": "installation: one row per background consumer of the outbox",
}

# The one cross-tenant rule kept on purpose: a verified WhatsApp number belongs to one tenant only
# (an attacker's tenant must never route a company's number to itself). Under Citus it becomes a
# reference table of verified numbers written in the same transaction (docs/scaling.md).
CROSS_TENANT_KEYS = {"whatsapp_sessions.uq_whatsapp_sessions_verified_number"}

TENANT_TABLES_SQL = """
SELECT c.relname FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
   AND EXISTS (SELECT 1 FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)
"""

ALL_TABLES_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
"""

# primary keys, unique constraints and foreign keys, with their columns and what they point at
KEYS_SQL = """
SELECT c.conrelid::regclass::text AS table_name, c.conname, c.contype,
       c.confrelid::regclass::text AS referenced,
       ARRAY(SELECT a.attname FROM unnest(c.conkey) AS k
               JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k)::text[] AS columns
  FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
 WHERE n.nspname = 'public' AND c.contype IN ('p', 'u', 'f')
"""

UNIQUE_INDEXES_SQL = """
SELECT t.relname AS table_name, i.relname AS index_name,
       ARRAY(SELECT a.attname FROM unnest(x.indkey) AS k
               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k)::text[] AS columns
  FROM pg_index x
  JOIN pg_class i ON i.oid = x.indexrelid
  JOIN pg_class t ON t.oid = x.indrelid
  JOIN pg_namespace n ON n.oid = t.relnamespace
 WHERE n.nspname = 'public' AND x.indisunique
"""


async def test_every_key_of_a_tenant_table_includes_tenant_id(database: ProvisionedDatabase) -> None:
    connection = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        tenant_tables = {row["relname"] for row in await connection.fetch(TENANT_TABLES_SQL)}
        every_table = {row["relname"] for row in await connection.fetch(ALL_TABLES_SQL)}
        keys = await connection.fetch(KEYS_SQL)
        unique_indexes = await connection.fetch(UNIQUE_INDEXES_SQL)
    finally:
        await connection.close()

    assert every_table - tenant_tables == set(GLOBAL_TABLES), "a table without tenant_id must be listed, with why"
    assert len(tenant_tables) >= 15  # the check looked at the real schema

    offending = []
    for key in keys:
        if key["table_name"] not in tenant_tables or "tenant_id" in key["columns"]:
            continue
        if key["contype"] == b"f" and key["referenced"] in GLOBAL_TABLES:
            continue  # pointing at a reference table is what Citus allows
        offending.append(f"{key['table_name']}.{key['conname']} ({key['contype']}: {', '.join(key['columns'])})")
    for index in unique_indexes:
        name = f"{index['table_name']}.{index['index_name']}"
        if (
            index["table_name"] in tenant_tables
            and "tenant_id" not in index["columns"]
            and name not in CROSS_TENANT_KEYS
        ):
            offending.append(
                f"{index['table_name']}.{index['index_name']} (unique index: {', '.join(index['columns'])})"
            )
    assert offending == [], "keys a tenant-distributed schema cannot have:\n" + "\n".join(sorted(offending))


async def test_the_check_catches_a_key_without_tenant_id(database: ProvisionedDatabase) -> None:
    """The query above finds what it must: a throw-away tenant table with a bad unique key."""
    connection = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        async with connection.transaction():
            await connection.execute(
                "CREATE TABLE probe_bad_key (tenant_id uuid NOT NULL, code text NOT NULL, UNIQUE (code))"
            )
            keys = await connection.fetch(KEYS_SQL)
            found = [k for k in keys if k["table_name"] == "probe_bad_key" and "tenant_id" not in k["columns"]]
            assert [k["contype"] for k in found] == [b"u"]
            raise _RollBack
    except _RollBack:
        pass
    finally:
        await connection.close()


class _RollBack(Exception):
    pass
