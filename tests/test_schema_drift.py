"""The ORM classes describe the migrated schema exactly: every table has a class, and nothing drifts.

Two comparisons, because Alembic's autogenerate compares columns (types, nullability, server defaults),
foreign keys, unique constraints and indexes by their columns, but not check constraints, index
predicates (WHERE), primary and foreign key names, generated columns, enum labels or UNLOGGED. The
second builds the models' own schema (`create_all`) in a scratch database and compares PostgreSQL's
definitions of both, which covers those too. Row-level security, grants, triggers, functions and
sequences are the migrations' alone: neither comparison reads them."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import CheckConstraint, Column, Connection, MetaData, Text, inspect, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

import papo
from papo.db.base import Base
from papo.db.migrate import ensure_database
from papo.knowledge.models import EMBEDDINGS_TABLE
from papo.models import EVERY_FEATURE
from tests.conftest import ProvisionedDatabase, drop_database

VERSION_TABLE = "alembic_version"

# Every table, column, constraint, index and enum type of the public schema, as PostgreSQL defines it.
CATALOG_SQL = """
SELECT 'table', c.relname, '', CASE c.relpersistence WHEN 'u' THEN 'unlogged' ELSE 'logged' END
  FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
UNION ALL
SELECT 'column', c.relname, a.attname,
       concat_ws(' ', format_type(a.atttypid, a.atttypmod), CASE WHEN a.attnotnull THEN 'not null' END,
                 CASE a.attgenerated WHEN 's' THEN 'generated ' ELSE 'default ' END
                   || pg_get_expr(d.adbin, d.adrelid),
                 CASE a.attidentity WHEN 'a' THEN 'identity always' WHEN 'd' THEN 'identity by default' END)
  FROM pg_attribute a
  JOIN pg_class c ON c.oid = a.attrelid
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', c.relname, k.conname, pg_get_constraintdef(k.oid)
  FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
 WHERE k.connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'enum', t.typname, '', string_agg(e.enumlabel, ', ' ORDER BY e.enumsortorder)
  FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
 WHERE t.typnamespace = 'public'::regnamespace
 GROUP BY t.typname
"""

# messages.search_vector is generated through papo_fold(), which migration 0001 creates, and
# chat_sessions.activity_minute through papo_activity_minute() (0045); the scratch database needs
# functions of those signatures (their bodies are not compared).
GENERATING_STUBS_SQL = (
    "CREATE FUNCTION papo_fold(value text) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT value $$",
    "CREATE FUNCTION papo_activity_minute(at timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT 0 $$",
)

Catalog = set[tuple[str, ...]]


@pytest.fixture
async def migrated(database: ProvisionedDatabase) -> AsyncIterator[AsyncConnection]:
    engine = create_async_engine(database.owner_url)
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()


def alembic_diff(metadata: MetaData, absent: Collection[str] = ()) -> Callable[[Connection], Any]:
    def include(item: Any, name: str | None, kind: str, *_: Any) -> bool:
        table = name if kind == "table" else getattr(getattr(item, "table", None), "name", None)
        return table not in absent

    def compare(connection: Connection) -> Any:
        options = {"compare_type": True, "compare_server_default": True, "include_object": include}
        context = MigrationContext.configure(connection, opts=options)
        return compare_metadata(context, metadata)

    return compare


async def catalog(connection: AsyncConnection) -> Catalog:
    rows = (await connection.execute(text(CATALOG_SQL))).all()
    return {tuple(row) for row in rows if row[1] != VERSION_TABLE}


async def has_vectors(connection: AsyncConnection) -> bool:
    return bool(await connection.scalar(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": EMBEDDINGS_TABLE}))


async def absent_tables(connection: AsyncConnection) -> set[str]:
    """Model tables the migrations create only on some servers: the embeddings table without pgvector."""
    return set() if await has_vectors(connection) else {EMBEDDINGS_TABLE}


async def models_catalog(database: ProvisionedDatabase, metadata: MetaData, absent: Collection[str] = ()) -> Catalog:
    """The schema `metadata.create_all` builds, in a scratch database dropped afterwards."""
    name = "papo_models_" + secrets.token_hex(4)
    url = database.owner_url.set(database=name)
    await ensure_database(url)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            for stub in GENERATING_STUBS_SQL:
                await connection.execute(text(stub))
            if EMBEDDINGS_TABLE not in absent:
                await connection.execute(text("CREATE EXTENSION vector"))
            tables = [table for table in metadata.sorted_tables if table.name not in absent]
            await connection.run_sync(lambda sync: metadata.create_all(sync, tables=tables))
            return await catalog(connection)
    finally:
        await engine.dispose()
        await drop_database(database.admin_url, name)


def drifted_metadata() -> MetaData:
    """A copy of the models with a column added, a nullability changed and a check constraint loosened."""
    copy = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.tables.values():
        table.to_metadata(copy)
    contacts = copy.tables["contacts"]
    contacts.append_column(Column("nickname", Text))
    contacts.c.name.nullable = False
    assistants = copy.tables["assistants"]
    budget = next(c for c in assistants.constraints if c.name == "ck_assistants_budget")
    assert isinstance(budget, CheckConstraint)
    budget.sqltext = text("context_token_budget BETWEEN 1 AND 2000000")
    return copy


async def test_every_table_has_a_model(migrated: AsyncConnection) -> None:
    tables = await migrated.run_sync(lambda connection: set(inspect(connection).get_table_names()))
    expected = set(Base.metadata.tables) - await absent_tables(migrated)
    assert tables - {VERSION_TABLE} == expected, "a table needs its class in its feature's models"


async def test_models_match_the_migrated_schema(migrated: AsyncConnection) -> None:
    assert await migrated.run_sync(alembic_diff(Base.metadata, await absent_tables(migrated))) == []


async def test_models_build_the_migrated_schema(database: ProvisionedDatabase, migrated: AsyncConnection) -> None:
    expected = await catalog(migrated)
    built = await models_catalog(database, Base.metadata, await absent_tables(migrated))
    assert (sorted(expected - built), sorted(built - expected)) == ([], []), "(migrated only, models only)"


async def test_the_checks_see_drift(database: ProvisionedDatabase, migrated: AsyncConnection) -> None:
    drifted, absent = drifted_metadata(), await absent_tables(migrated)
    diff = await migrated.run_sync(alembic_diff(drifted, absent))
    # compare_metadata lists the attribute changes of one column in a list of their own
    operations = [operation for entry in diff for operation in (entry if isinstance(entry, list) else [entry])]
    assert ("add_column", None, "contacts", drifted.tables["contacts"].c.nickname) in operations
    assert any(operation[:4] == ("modify_nullable", None, "contacts", "name") for operation in operations)
    built = await models_catalog(database, drifted, absent)
    assert {
        ("column", "contacts", "nickname"),
        ("column", "contacts", "name"),
        ("constraint", "assistants", "ck_assistants_budget"),
    } <= {row[:3] for row in built - await catalog(migrated)}


def test_papo_models_loads_every_features_models() -> None:
    """An entry point that imports papo.models has every table (see its docstring)."""
    on_disk = {f"papo.{path.parent.name}.models" for path in Path(papo.__file__).parent.glob("*/models.py")}
    assert {module.__name__ for module in EVERY_FEATURE} == on_disk
