"""Two papo installs on one PostgreSQL server (different databases, default settings) keep working
side by side: each has its own runtime role, `papo migrate` of one never changes the other's, and
one install's runtime credentials cannot open the other's database."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import URL

from papo.cli import apply_migrations
from papo.db.engine import locate_database
from papo.db.migrate import AppRoleConflict, ensure_database, role_marker
from papo.db.server import DEFAULT_APP_ROLE, MAX_IDENTIFIER, default_app_role
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, drop_database, plain_dsn


class Installs:
    """Installs made by one test on the test server; their databases and roles are dropped after."""

    def __init__(self, database: ProvisionedDatabase, root: Path) -> None:
        self.server = database.admin_url
        self.root = root
        self.made: list[tuple[str, str | None]] = []
        self.roles: list[str] = []

    async def install(self, name: str, **overrides: Any) -> Settings:
        settings = Settings(
            database_url=self.server.set(database=name).render_as_string(hide_password=False),
            data_dir=self.root / name,
            _env_file=None,  # type: ignore[call-arg]
            **overrides,
        )
        location = locate_database(settings)
        self.made.append((name, location.app_url.username))
        await ensure_database(location.owner_url)
        return settings

    def app_url(self, settings: Settings) -> URL:
        return locate_database(settings).app_url

    async def role(self, name: str, password: str, comment: str | None) -> None:
        admin = await asyncpg.connect(plain_dsn(self.server))
        try:
            await admin.execute(f"CREATE ROLE \"{name}\" LOGIN PASSWORD '{password}'")
            if comment is not None:
                await admin.execute(f"COMMENT ON ROLE \"{name}\" IS '{comment}'")
        finally:
            await admin.close()
        self.roles.append(name)

    async def password_hash(self, role: str) -> str | None:
        admin = await asyncpg.connect(plain_dsn(self.server))
        try:
            value: str | None = await admin.fetchval("SELECT rolpassword FROM pg_authid WHERE rolname = $1", role)
            return value
        finally:
            await admin.close()

    async def marker(self, role: str) -> str | None:
        admin = await asyncpg.connect(plain_dsn(self.server))
        try:
            value: str | None = await admin.fetchval(
                "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", role
            )
            return value
        finally:
            await admin.close()

    async def cleanup(self) -> None:
        for name, role in self.made:
            await drop_database(self.server, name, role)
        admin = await asyncpg.connect(plain_dsn(self.server))
        try:
            for role in self.roles:
                await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
        finally:
            await admin.close()


@pytest.fixture
async def installs(database: ProvisionedDatabase, tmp_path: Path) -> AsyncIterator[Installs]:
    made = Installs(database, tmp_path)
    yield made
    await made.cleanup()


async def _runs_as(app_url: URL) -> str:
    connection = await asyncpg.connect(plain_dsn(app_url))
    try:
        assert await connection.fetchval("SELECT count(*) FROM alembic_version") == 1
        user: str = await connection.fetchval("SELECT current_user")
        return user
    finally:
        await connection.close()


async def test_two_installs_on_one_server_keep_working(installs: Installs) -> None:
    prefix = "papo_twin_" + secrets.token_hex(3)
    first = await installs.install(prefix + "_a")
    second = await installs.install(prefix + "_b")
    first_url, second_url = installs.app_url(first), installs.app_url(second)
    assert first_url.username == default_app_role(prefix + "_a")
    assert second_url.username == default_app_role(prefix + "_b")
    assert first_url.username != second_url.username

    await apply_migrations(first)
    assert first_url.username is not None and second_url.username is not None
    first_password = await installs.password_hash(first_url.username)
    await apply_migrations(second)
    assert await installs.password_hash(first_url.username) == first_password
    second_password = await installs.password_hash(second_url.username)
    await apply_migrations(first)  # and once more: re-running touches only its own role
    assert await installs.password_hash(second_url.username) == second_password

    assert await _runs_as(first_url) == first_url.username
    assert await _runs_as(second_url) == second_url.username
    assert await installs.marker(first_url.username) == role_marker(prefix + "_a")
    assert await installs.marker(second_url.username) == role_marker(prefix + "_b")

    # Both roles are members of the shared papo_runtime, which has privileges in both databases:
    # CONNECT is what keeps each install's credentials out of the other's database.
    for app_url, other in ((first_url, prefix + "_b"), (second_url, prefix + "_a")):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await asyncpg.connect(plain_dsn(app_url.set(database=other)))


async def test_a_role_of_another_database_is_never_changed(installs: Installs) -> None:
    name = "papo_taken_" + secrets.token_hex(3)
    role = "papo_app_taken_" + secrets.token_hex(3)
    await installs.role(role, "theirs-" + secrets.token_hex(4), role_marker("someone_elses_db"))
    before = await installs.password_hash(role)
    settings = await installs.install(name, app_role=role)
    installs.made[-1] = (name, None)  # the role is not this install's to drop

    with pytest.raises(AppRoleConflict, match="someone_elses_db"):
        await apply_migrations(settings)
    assert await installs.password_hash(role) == before
    assert await installs.marker(role) == role_marker("someone_elses_db")


async def test_an_unmarked_role_is_adopted_without_a_new_password(installs: Installs) -> None:
    """An older papo made its role without a marker. papo adopts it only when it can already sign in
    as it with its own password (with trust authentication, as here, anyone can), and never sets one."""
    name = "papo_legacy_" + secrets.token_hex(3)
    role = "papo_app_legacy_" + secrets.token_hex(3)
    await installs.role(role, "legacy-" + secrets.token_hex(4), None)
    before = await installs.password_hash(role)
    settings = await installs.install(name, app_role=role)

    await apply_migrations(settings)
    assert await installs.password_hash(role) == before
    assert await installs.marker(role) == role_marker(name)
    assert await _runs_as(installs.app_url(settings)) == role


def test_default_role_names() -> None:
    assert default_app_role("papo") == DEFAULT_APP_ROLE
    assert default_app_role(None) == DEFAULT_APP_ROLE
    assert default_app_role("crm") == "papo_app_crm"
    long = default_app_role("x" * 80)
    assert len(long.encode()) <= MAX_IDENTIFIER and long.startswith("papo_app_x")
    assert default_app_role("x" * 80) != default_app_role("x" * 81)
    odd = default_app_role('Ação "Vendas"')
    assert odd.isascii() and odd == odd.lower() and len(odd) <= MAX_IDENTIFIER
    assert default_app_role("papo-x") != default_app_role("papo_x")
