"""A real PostgreSQL for the whole run: a throw-away embedded server, or a fresh database on the server
named by PAPO_TEST_DATABASE_URL. Each test builds its own tenants, so tests never see each other's rows."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import URL

import papo.models  # noqa: F401  (every table, so cross-feature foreign keys resolve)
from papo.app import create_app
from papo.auth import service as auth_service
from papo.auth.models import Role
from papo.db.engine import Database
from papo.db.migrate import ensure_database, migrate
from papo.db.server import (
    app_role_password,
    async_url,
    default_app_role,
    derive_app_url,
    remove_tree,
    start_embedded,
)
from papo.ops.logging import configure_logging
from papo.settings import Settings
from papo.whatsapp.transports.base import SessionKey
from tests.fake_openai import FakeOpenAI
from tests.fake_whatsapp import FakeTransport
from tests.support import (
    CLERK_WEBHOOK_SECRET,
    EXTERNAL_ISSUER,
    METRICS_TOKEN,
    WHATSAPP_APP_SECRET,
    WHATSAPP_VERIFY_TOKEN,
    FakeGraphApi,
    FakeIdentityProvider,
    FakeOidcProvider,
    Member,
    NatsServer,
    TenantHandle,
    create_whatsapp_session,
    free_port,
    start_server,
    wait_status,
)


@pytest.fixture(autouse=True, scope="session")
def papo_logging() -> None:
    """The logs `papo serve` writes. structlog's defaults (what an app built in-process would use)
    render each traceback with every frame's locals: seconds per logged failure on a busy machine,
    and not what runs in production."""
    papo_logs()


def papo_logs() -> None:
    """papo's logging on this run's stderr, not cached, so a test may point it at a stream and back."""
    configure_logging("INFO", stream=sys.stderr)


@dataclass
class ProvisionedDatabase:
    owner_url: URL
    app_url: URL
    admin_url: URL  # the server's maintenance database, to create/drop databases
    cleanup: Any = None


def plain_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


async def drop_database(admin_url: URL, name: str, role: str | None = None) -> None:
    """Drop a database a test made, and the runtime role papo migrate made for it."""
    admin = await asyncpg.connect(plain_dsn(admin_url))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if role:
            await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def tmp_data_dir() -> Iterator[Path]:
    """A private directory for this run (not pytest's numbered temp area, whose clean-up of older runs
    can delete a concurrent run's live database)."""
    root = Path(tempfile.mkdtemp(prefix="papo-test-"))
    data = root / "data"
    data.mkdir()
    yield data
    remove_tree(root)


async def provision(server_url: URL, tmp_data_dir: Path, *, vectors: bool = True) -> ProvisionedDatabase:
    """A new database on `server_url`, migrated, with its own runtime role (papo_app_<database>),
    which `drop_database` removes with it: a shared server's papo_app belongs to whoever installed
    papo there."""
    name = "papo_test_" + secrets.token_hex(4)
    owner_url = server_url.set(database=name)
    app_url = derive_app_url(owner_url, default_app_role(name), app_role_password(tmp_data_dir))
    await ensure_database(owner_url)
    await migrate(owner_url, app_url, create_app_role=True, vectors=vectors)
    return ProvisionedDatabase(owner_url, app_url, server_url.set(database="postgres"))


@pytest.fixture(scope="session")
async def database(tmp_data_dir: Path) -> AsyncIterator[ProvisionedDatabase]:
    configured = Settings(_env_file=None).test_database_url  # type: ignore[call-arg]
    embedded = None
    pgdata = None
    if configured:
        server_url = async_url(configured)
    else:
        pgdata = tmp_data_dir.parent / "pgdata"
        embedded, server_url = start_embedded(pgdata, throwaway=True)
    provisioned = await provision(server_url, tmp_data_dir)
    yield provisioned
    await drop_database(provisioned.admin_url, provisioned.owner_url.database, provisioned.app_url.username)
    if embedded is not None:
        embedded.cleanup()
    if pgdata is not None:
        remove_tree(pgdata)


@pytest.fixture(scope="session")
async def text_only_database(database: ProvisionedDatabase, tmp_data_dir: Path) -> AsyncIterator[ProvisionedDatabase]:
    """A second database on the same server, migrated as on a server without pgvector."""
    provisioned = await provision(database.owner_url.set(database=None), tmp_data_dir, vectors=False)
    yield provisioned
    await drop_database(provisioned.admin_url, provisioned.owner_url.database, provisioned.app_url.username)


@pytest.fixture(scope="session")
def identity_provider() -> Iterator[FakeIdentityProvider]:
    provider = FakeIdentityProvider()
    yield provider
    provider.close()


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[FakeOidcProvider]:
    provider = FakeOidcProvider()
    yield provider
    provider.close()


@pytest.fixture(scope="session")
def graph_api() -> Iterator[FakeGraphApi]:
    api = FakeGraphApi()
    yield api
    api.close()


@pytest.fixture(scope="session")
def settings(
    database: ProvisionedDatabase,
    tmp_data_dir: Path,
    identity_provider: FakeIdentityProvider,
    oidc_provider: FakeOidcProvider,
    graph_api: FakeGraphApi,
) -> Settings:
    return Settings(
        database_url=database.owner_url.render_as_string(hide_password=False),
        app_database_url=database.app_url.render_as_string(hide_password=False),
        data_dir=tmp_data_dir,
        public_url="http://papo.test",
        auth_jwks_url=identity_provider.jwks_url,
        auth_issuer=EXTERNAL_ISSUER,
        auth_authorized_parties=["https://app.example.com"],
        clerk_webhook_secret=CLERK_WEBHOOK_SECRET,
        oidc_issuer=oidc_provider.issuer,
        oidc_client_id=oidc_provider.client_id,
        oidc_client_secret=oidc_provider.client_secret,
        oidc_label="Acme SSO",
        whatsapp_transports=["fake=tests.fake_whatsapp:FakeTransport"],
        whatsapp_adopt_orphans=False,  # the server processes some tests start own their sessions
        whatsapp_app_secret=WHATSAPP_APP_SECRET,
        whatsapp_verify_token=WHATSAPP_VERIFY_TOKEN,
        whatsapp_graph_url=graph_api.url,
        max_message_bytes=32 * 1024,
        max_metadata_bytes=16 * 1024,
        metrics_token=METRICS_TOKEN,
        outbound_allowed_targets=["127.0.0.0/8"],  # fakes and receivers listen there: allowed explicitly
        webhook_first_retry_seconds=0.2,
        webhook_poll_seconds=0.2,
        media_poll_seconds=0.2,  # retried downloads come round quickly
        knowledge_poll_seconds=0.2,
        knowledge_retry_seconds=0.1,
        alert_interval_seconds=3600,  # tests evaluate alerts themselves
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://papo.test") as http:
        yield http


@pytest.fixture(scope="session")
async def live_url(app: FastAPI) -> AsyncIterator[str]:
    """The test app behind a real uvicorn socket, for WebSocket and streaming clients."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110  (uvicorn exposes a flag, not an event)
        await asyncio.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


@pytest.fixture(scope="session")
async def db(database: ProvisionedDatabase) -> AsyncIterator[Database]:
    pool = Database(database.app_url, pool_size=4)
    yield pool
    await pool.dispose()


@pytest.fixture
async def app_role_connection(database: ProvisionedDatabase) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection as the runtime role, for probing row-level security in plain SQL."""
    connection = await asyncpg.connect(plain_dsn(database.app_url))
    yield connection
    await connection.close()


@pytest.fixture
async def make_tenant(db: Database, settings: Settings) -> Any:
    async def factory(name: str = "Acme") -> TenantHandle:
        async with db.transaction() as session:
            tenant = await auth_service.create_tenant(session, f"{name} {secrets.token_hex(3)}")
        return TenantHandle(tenant.id, db, settings)

    return factory


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


@pytest.fixture
async def two_servers(settings: Settings) -> AsyncIterator[tuple[str, str, asyncio.subprocess.Process]]:
    port_a, port_b = free_port(), free_port()
    server_a = await start_server(settings, port_a)
    server_b = await start_server(settings, port_b)
    yield f"http://127.0.0.1:{port_a}", f"http://127.0.0.1:{port_b}", server_a
    for process in (server_a, server_b):
        if process.returncode is None:
            process.terminate()
            await asyncio.wait_for(process.wait(), 10)


@dataclass
class Isolated:
    """A database of a test's own, migrated, with settings pointing at it: for server processes that
    must see no other test's data (WhatsApp sessions an earlier test left running, say)."""

    settings: Settings
    db: Database

    async def tenant(self, name: str = "Acme") -> TenantHandle:
        async with self.db.transaction() as session:
            tenant = await auth_service.create_tenant(session, f"{name} {secrets.token_hex(3)}")
        return TenantHandle(tenant.id, self.db, self.settings)


@pytest.fixture
async def isolated(database: ProvisionedDatabase, settings: Settings, tmp_data_dir: Path) -> AsyncIterator[Isolated]:
    provisioned = await provision(database.owner_url, tmp_data_dir)
    own = settings.model_copy(
        update={
            "database_url": provisioned.owner_url.render_as_string(hide_password=False),
            "app_database_url": provisioned.app_url.render_as_string(hide_password=False),
        }
    )
    pool = Database(provisioned.app_url, pool_size=2)
    yield Isolated(own, pool)
    await pool.dispose()
    await drop_database(provisioned.admin_url, provisioned.owner_url.database, provisioned.app_url.username)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A NATS server with JetStream of the suite's own (stopped and started by some tests)."""
    server = NatsServer(tmp_path_factory.mktemp("nats"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """Where the NATS tests that need no restart connect: PAPO_TEST_NATS_URL (CI's second run uses
    the machine's server) or the suite's own. Each test names its subjects apart (nats_prefix)."""
    return os.environ.get("PAPO_TEST_NATS_URL") or nats_server.url


@pytest.fixture
def fake(app: FastAPI) -> FakeTransport:
    transport = app.state.papo.whatsapp.transports["fake"]
    assert isinstance(transport, FakeTransport)
    return transport


@pytest.fixture
async def number(
    client: httpx.AsyncClient, make_tenant: Any, fake: FakeTransport
) -> tuple[TenantHandle, Member, Member, SessionKey]:
    """A company with an admin, an agent and a WhatsApp number that is connected."""
    tenant: TenantHandle = await make_tenant("Inbox")
    admin, agent = await tenant.member(Role.admin), await tenant.member(Role.agent)
    created = await create_whatsapp_session(client, admin, "atendimento")
    key = SessionKey(tenant.id, uuid.UUID(created["id"]))
    await wait_status(client, admin, created["id"], "SCAN_QR_CODE")
    await fake.scan(key, "+5511955550000")
    await wait_status(client, admin, created["id"], "WORKING")
    return tenant, admin, agent, key


def _env_marker() -> None:
    # Tests must not inherit a developer's PAPO_DATABASE_URL: the suite builds its own database.
    os.environ.pop("PAPO_DATABASE_URL", None)
    os.environ.pop("PAPO_APP_DATABASE_URL", None)


_env_marker()
