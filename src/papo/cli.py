"""The `papo` command. Identifiers go to stdout alone (or as JSON with --json); logs go to stderr."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import papo.models  # noqa: F401  (every table, so cross-feature foreign keys resolve)
from papo.auth import service as auth_service
from papo.auth.invitations import Accounts, CreatedInvitation
from papo.auth.models import Role, Tenant
from papo.auth.service import Principal
from papo.auth.tokens import SigningKey, issue_token
from papo.chat.service import purge_deleted_sessions
from papo.crypto import KeyBox
from papo.db.engine import Database, RlsContext, locate_database
from papo.db.migrate import AppRoleConflict, ensure_database, migrate
from papo.errors import Conflict, DomainError
from papo.knowledge.repository import create_vector_index
from papo.ops.logging import configure_logging
from papo.ops.metrics import MULTIPROCESS_ENV, fresh_metrics_dir
from papo.realtime.service import prune_events
from papo.settings import Settings, get_settings
from papo.whatsapp.legacy_import import import_legacy_sessions, legacy_companies

T = TypeVar("T")

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="papo: multi-tenant chat platform"
)
tenant_app = typer.Typer(no_args_is_help=True, help="Tenants (companies, Clerk organizations)")
user_app = typer.Typer(no_args_is_help=True, help="Built-in user accounts")
apikey_app = typer.Typer(no_args_is_help=True, help="Tenant API keys for server-to-server calls")
app.add_typer(tenant_app, name="tenant")
app.add_typer(user_app, name="user")
whatsapp_app = typer.Typer(no_args_is_help=True, help="WhatsApp sessions")
app.add_typer(apikey_app, name="apikey")
app.add_typer(whatsapp_app, name="whatsapp")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print a JSON object instead of the bare value.")]


def _settings() -> Settings:
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return settings


def _emit(value: str, as_json: bool, **fields: Any) -> None:
    if as_json:
        typer.echo(json.dumps({k: (str(v) if isinstance(v, uuid.UUID) else v) for k, v in fields.items()}))
    else:
        typer.echo(value)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _run_in_tenant(settings: Settings, context: RlsContext | None, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one transaction as the runtime role, under row-level security."""

    async def runner() -> T:
        location = locate_database(settings)
        db = Database(location.app_url, pool_size=1)
        try:
            async with db.transaction(context) as session:
                return await work(session)
        finally:
            await db.dispose()
            location.stop()

    try:
        return asyncio.run(runner())
    except DomainError as exc:
        _fail(exc.detail)
        raise


async def apply_migrations(settings: Settings) -> None:
    location = locate_database(settings)
    try:
        if location.embedded is not None or settings.test_database_url:
            await ensure_database(location.owner_url)
        await migrate(
            location.owner_url,
            location.app_url,
            create_app_role=not settings.app_database_url,
            restrict_connect=settings.database_restrict_connect,
            vectors=settings.knowledge_vectors,
        )
        if settings.embedding_dimensions and settings.knowledge_vectors:
            owner_dsn = location.owner_url.set(drivername="postgresql").render_as_string(hide_password=False)
            await create_vector_index(owner_dsn, settings.embedding_model, settings.embedding_dimensions)
    finally:
        location.stop()


@app.command("migrate")
def migrate_command() -> None:
    """Apply database migrations (creates the embedded database and the runtime role if needed)."""
    try:
        asyncio.run(apply_migrations(_settings()))
    except AppRoleConflict as exc:
        _fail(str(exc))


@tenant_app.command("create")
def tenant_create(
    name: str,
    external_id: Annotated[str | None, typer.Option(help="Identity-provider organization id")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a tenant; prints its id."""
    settings = _settings()
    tenant = _run_in_tenant(settings, None, lambda s: auth_service.create_tenant(s, name, external_id))
    _emit(str(tenant.id), as_json, id=tenant.id, name=tenant.name)


def _tenant_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        _fail(f"--tenant must be a tenant id (uuid), got {value!r}")
        raise


@user_app.command("create")
def user_create(
    tenant: Annotated[str, typer.Option(help="Tenant id")],
    email: Annotated[str, typer.Option(help="E-mail (the sign-in name)")],
    password: Annotated[str | None, typer.Option(help="Password for built-in sign-in")] = None,
    role: Annotated[Role, typer.Option(help="Role in the tenant")] = Role.member,
    name: Annotated[str | None, typer.Option(help="Display name")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a new account in a tenant; prints the user id. An address that an account already uses
    is not reused: an invitation is created instead, its link printed, and the exit status is 3."""
    settings = _settings()
    tenant_id = _tenant_id(tenant)
    context = RlsContext(tenant_id, None, Role.owner.value)

    async def work(session: AsyncSession) -> tuple[str, bool] | CreatedInvitation:
        await _require_tenant(session)
        try:
            return await auth_service.add_member(session, email=email, name=name, password=password, role=role)
        except Conflict:
            return await _invite(settings, session, tenant_id, email, role)

    outcome = _run_in_tenant(settings, context, work)
    if isinstance(outcome, CreatedInvitation):
        typer.echo(
            f"{outcome.email} already has an account, which joins only by accepting this invitation "
            f"(valid {settings.invitation_ttl_hours} h); send the link to that person:",
            err=True,
        )
        _emit_invitation(outcome, as_json)
        raise typer.Exit(3)
    user_id, created = outcome
    _emit(user_id, as_json, id=user_id, email=email.lower(), role=role.value, created=created)


@user_app.command("invite")
def user_invite(
    tenant: Annotated[str, typer.Option(help="Tenant id")],
    email: Annotated[str, typer.Option(help="E-mail of the person to invite")],
    role: Annotated[Role, typer.Option(help="Role in the tenant once accepted")] = Role.member,
    as_json: JsonFlag = False,
) -> None:
    """Invite an e-mail address to a tenant; prints the invitation link (one use, expires)."""
    settings = _settings()
    tenant_id = _tenant_id(tenant)

    async def work(session: AsyncSession) -> CreatedInvitation:
        await _require_tenant(session)
        return await _invite(settings, session, tenant_id, email, role)

    _emit_invitation(_run_in_tenant(settings, RlsContext(tenant_id, None, Role.owner.value), work), as_json)


async def _invite(
    settings: Settings, session: AsyncSession, tenant_id: uuid.UUID, email: str, role: Role
) -> CreatedInvitation:
    operator = Principal(tenant_id, None, Role.owner.value)
    return await Accounts(settings, KeyBox(settings).secret).invite(session, operator, email, role, by_operator=True)


def _emit_invitation(invitation: CreatedInvitation, as_json: bool) -> None:
    assert invitation.url is not None
    _emit(
        invitation.url,
        as_json,
        invitation_id=invitation.id,
        url=invitation.url,
        email=invitation.email,
        role=invitation.role.value,
        expires_at=invitation.expires_at.isoformat(),
    )


async def _require_tenant(session: AsyncSession) -> None:
    await auth_service.require_context_tenant(session)


@app.command("token")
def token_command(
    tenant: Annotated[str, typer.Option(help="Tenant id")],
    user: Annotated[str, typer.Option(help="User id")],
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds")] = 24 * 3600,
    as_json: JsonFlag = False,
) -> None:
    """Print a bearer token for a member (development and scripts)."""
    settings = _settings()
    tenant_id = _tenant_id(tenant)
    member = _run_in_tenant(settings, RlsContext(tenant_id, user, None), lambda s: auth_service.find_member(s, user))
    token, lifetime = issue_token(
        settings, SigningKey.load(settings), tenant_id=tenant_id, user_id=user, role=member.role.value, ttl_seconds=ttl
    )
    _emit(token, as_json, token=token, expires_in=lifetime, tenant_id=tenant_id, user_id=user)


@apikey_app.command("create")
def apikey_create(
    tenant: Annotated[str, typer.Option(help="Tenant id")],
    name: Annotated[str, typer.Option(help="A label to tell keys apart")] = "default",
    as_json: JsonFlag = False,
) -> None:
    """Create a tenant API key; prints the key (shown once)."""
    settings = _settings()
    tenant_id = _tenant_id(tenant)

    async def work(session: AsyncSession) -> tuple[Any, str]:
        await _require_tenant(session)
        return await auth_service.create_api_key(session, tenant_id, name, None)

    key, plaintext = _run_in_tenant(settings, RlsContext(tenant_id, None, Role.owner.value), work)
    _emit(plaintext, as_json, key=plaintext, id=key.id, name=key.name, tenant_id=tenant_id)


@apikey_app.command("revoke")
def apikey_revoke(key_id: str) -> None:
    """Revoke an API key by id; it stops working immediately."""
    settings = _settings()
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        _fail(f"not an API key id: {key_id!r}")
        raise

    async def runner() -> bool:
        # Operator action across tenants: runs as the database owner through a definer function.
        location = locate_database(settings)
        db = Database(location.owner_url, pool_size=1)
        try:
            async with db.transaction() as session:
                return bool(await session.scalar(text("SELECT papo_operator_revoke_api_key(:id)"), {"id": parsed}))
        finally:
            await db.dispose()
            location.stop()

    if not asyncio.run(runner()):
        _fail("no such API key")


def _run_as_operator(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Operator work across tenants: as the database owner, through papo_operator_* definer functions."""

    async def runner() -> T:
        location = locate_database(settings)
        db = Database(location.owner_url, pool_size=1)
        try:
            async with db.transaction() as session:
                return await work(session)
        finally:
            await db.dispose()
            location.stop()

    return asyncio.run(runner())


async def _companies_named(session: AsyncSession, refs: list[str]) -> dict[str, list[uuid.UUID]]:
    """The tenants each legacy companyId names (operator connection)."""
    found: dict[str, list[uuid.UUID]] = {}
    for ref in refs:
        rows = await session.execute(text("SELECT * FROM papo_operator_tenants_named(:ref)"), {"ref": ref})
        found[ref] = [row[0] for row in rows]
    return found


LEGACY_SESSIONS_FILE = "sessions.json"


async def import_legacy_sessions_file(settings: Settings) -> list[str]:
    """Seed 004's automatic migration: a `sessions.json` in the data directory is imported when the
    server starts, each entry into the company its companyId names (idempotent: a name already there
    is skipped, so every start may run it). A file without companyIds is left for
    `papo whatsapp import-sessions --tenant`. Returns what it has to say (logged by the caller)."""
    path = Path(settings.data_dir) / LEGACY_SESSIONS_FILE
    if not path.is_file():
        return []
    content = path.read_text(encoding="utf-8", errors="replace")
    try:
        refs = sorted(legacy_companies(content))
    except DomainError as exc:
        return [f"{path.name} not imported: {exc.detail}"]
    if not refs:
        return [f"{path.name} names no companyId: import it with `papo whatsapp import-sessions --tenant ID`"]
    location = locate_database(settings)
    owner = Database(location.owner_url, pool_size=1)
    runtime = Database(location.app_url, pool_size=1)
    notes: list[str] = []
    try:
        async with owner.transaction() as session:
            companies = await _companies_named(session, refs)
        unmatched = [ref for ref, tenants in companies.items() if len(tenants) != 1]
        notes += [f"{path.name}: companyId {ref!r} names no single company; not imported" for ref in unmatched]
        for tenant_id in sorted({tenants[0] for tenants in companies.values() if len(tenants) == 1}):
            principal = Principal(tenant_id, None, Role.owner.value)
            async with runtime.transaction(principal.context()) as session:
                tenant = await session.get(Tenant, tenant_id)
                # Unattended, only the company's id or its identity provider's id is proof: a name is
                # chosen by the company itself (another company could take it); the CLI, run by the
                # operator for one tenant, may go by name.
                proofs = (str(tenant_id), tenant.external_id if tenant is not None else None)
                mine = [ref for ref, tenants in companies.items() if tenants == [tenant_id]]
                proven = {ref: [tenant_id] for ref in mine if ref.strip().lower() in proofs or ref.strip() in proofs}
                notes += [
                    f"{path.name}: companyId {ref!r} matches {tenant_id} by name only; import it with "
                    f"`papo whatsapp import-sessions --tenant {tenant_id}`"
                    for ref in mine
                    if ref not in proven
                ]
                report = await import_legacy_sessions(
                    session, principal, content, transport="neonize", companies=proven
                )
            notes += [f"{path.name}: imported {name} into {tenant_id}" for name in report["imported"]]
    finally:
        await owner.dispose()
        await runtime.dispose()
        location.stop()
    return notes


@whatsapp_app.command("import-sessions")
def whatsapp_import(
    file: Annotated[Path, typer.Argument(help="The old system's sessions.json", exists=True, dir_okay=False)],
    tenant: Annotated[str, typer.Option(help="Tenant (company) id the sessions are imported into")],
    transport: Annotated[str, typer.Option(help="Transport of the imported sessions")] = "neonize",
    as_json: JsonFlag = False,
) -> None:
    """Import a legacy sessions.json into one tenant (idempotent); prints what was imported and what was
    skipped, and why. An entry's companyId (a tenant id, identity-provider organization id or name)
    must name this tenant, else it is skipped; a file without any companyId is this tenant's (in a file
    that names companies, an entry without one is skipped). Run once per company."""
    settings = _settings()
    tenant_id = _tenant_id(tenant)
    content = file.read_text(encoding="utf-8", errors="replace")
    principal = Principal(tenant_id, None, Role.owner.value)
    try:
        refs = sorted(legacy_companies(content))
    except DomainError as exc:
        _fail(exc.detail)
        raise

    companies = _run_as_operator(settings, lambda session: _companies_named(session, refs)) if refs else {}

    async def work(session: AsyncSession) -> dict[str, Any]:
        await _require_tenant(session)
        return await import_legacy_sessions(session, principal, content, transport=transport, companies=companies)

    report = _run_in_tenant(settings, principal.context(), work)
    lines = [f"imported {name}" for name in report["imported"]]
    lines += [f"skipped {item['entry']}: {item['reason']}" for item in report["skipped"]]
    _emit("\n".join(lines) or "nothing to import", as_json, **report)


@whatsapp_app.command("dead-letters")
def whatsapp_dead_letters(as_json: JsonFlag = False) -> None:
    """List webhook deliveries that failed PAPO_WHATSAPP_WEBHOOK_MAX_ATTEMPTS times (every tenant): one
    line each, id first (for `papo whatsapp replay ID`); nothing when there are none."""
    settings = _settings()

    async def work(session: AsyncSession) -> list[dict[str, Any]]:
        rows = await session.execute(text("SELECT * FROM papo_operator_whatsapp_dead_letters()"))
        return [
            {
                "id": row.delivery_id,
                "tenant_id": str(row.delivery_tenant_id),
                "session_id": str(row.delivery_session_id),
                "attempts": row.delivery_attempts,
                "received_at": row.delivery_received_at.isoformat(),
                "dead_at": row.delivery_dead_at.isoformat(),
                "last_error": row.delivery_last_error,
            }
            for row in rows
        ]

    letters = _run_as_operator(settings, work)
    if as_json:
        typer.echo(json.dumps({"dead_letters": letters}))
        return
    for letter in letters:
        typer.echo(
            f"{letter['id']}\ttenant {letter['tenant_id']}\tsession {letter['session_id']}\t"
            f"{letter['attempts']} attempts\tdead since {letter['dead_at']}\t{letter['last_error'] or ''}"
        )


@whatsapp_app.command("replay")
def whatsapp_replay(
    delivery_id: Annotated[int | None, typer.Argument(help="A dead letter's id (see dead-letters)")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every dead letter")] = False,
) -> None:
    """Queue dead letters again with a fresh set of attempts; prints how many. A running server works
    them off within seconds."""
    if (delivery_id is None) == (not replay_all):
        _fail("give a dead letter's id, or --all")
    settings = _settings()

    async def work(session: AsyncSession) -> int:
        replayed = await session.scalar(text("SELECT papo_operator_whatsapp_replay(:id)"), {"id": delivery_id})
        return int(replayed or 0)

    replayed = _run_as_operator(settings, work)
    if delivery_id is not None and not replayed:
        _fail(f"no dead letter with id {delivery_id}")
    typer.echo(str(replayed))


@app.command("purge-deleted")
def purge_deleted(
    older_than_days: Annotated[
        int | None, typer.Option(help="Retention in days (PAPO_DELETED_RETENTION_DAYS)", min=0)
    ] = None,
) -> None:
    """Remove sessions deleted longer ago than the retention period, with their messages; prints the count."""
    settings = _settings()
    days = settings.deleted_retention_days if older_than_days is None else older_than_days
    typer.echo(str(_run_in_tenant(settings, None, lambda s: purge_deleted_sessions(s, days))))


@app.command("prune-events")
def prune_events_command(
    older_than_days: Annotated[
        int | None, typer.Option(help="Replay window in days (PAPO_REALTIME_RETENTION_DAYS)", min=0)
    ] = None,
) -> None:
    """Drop realtime events older than the replay window; prints the count. Clients resuming from
    before it are told to resync."""
    settings = _settings()
    days = settings.realtime_retention_days if older_than_days is None else older_than_days
    typer.echo(str(_run_in_tenant(settings, None, lambda s: prune_events(s, days))))


@app.command("serve")
def serve(
    host: Annotated[str | None, typer.Option(help="Interface (PAPO_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="Port (PAPO_PORT)")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (PAPO_WORKERS)")] = None,
    demo: Annotated[bool, typer.Option(help="Create a demo tenant and user and print a token")] = False,
) -> None:
    """Serve the API (and, as features land, the web app)."""
    import uvicorn

    from papo.app import create_app
    from papo.demo import print_banner

    settings = _settings()
    updates: dict[str, Any] = {}
    if host:
        updates["host"] = host
    if port:
        updates["port"] = port
    if workers:
        updates["workers"] = workers
    settings = settings.model_copy(update=updates)
    for note in asyncio.run(import_legacy_sessions_file(settings)):
        typer.echo(note, err=True)
    if settings.workers > 1:
        location = locate_database(settings)
        # Worker processes build their settings from the environment: hand them the database the
        # parent started and the address given on the command line (the token issuer derives from it).
        os.environ["PAPO_DATABASE_URL"] = location.owner_url.render_as_string(hide_password=False)
        os.environ["PAPO_DATA_DIR"] = str(Path(settings.data_dir).resolve())
        os.environ["PAPO_HOST"] = settings.host
        os.environ["PAPO_PORT"] = str(settings.port)
        os.environ[MULTIPROCESS_ENV] = str(fresh_metrics_dir(settings))
        try:
            if demo:
                asyncio.run(_demo_banner_only(settings))
            uvicorn.run(
                "papo.app:create_worker_app",
                factory=True,
                host=settings.host,
                port=settings.port,
                workers=settings.workers,
                **_server_options(settings),
            )
        finally:
            location.stop()
        return
    application = create_app(settings, on_ready=print_banner if demo else None, owns_process=True)
    uvicorn.run(application, host=settings.host, port=settings.port, **_server_options(settings))


def _server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for one process or several. Logging is papo's own; no permessage-deflate:
    events are a few hundred bytes, and compressing each one again for every subscriber took more
    of the fan-out's CPU than framing and sending it (`make bench-realtime`)."""
    return {
        "log_config": None,
        "access_log": False,
        "ws_per_message_deflate": False,
        "timeout_keep_alive": settings.http_keep_alive_seconds,
    }


async def _demo_banner_only(settings: Settings) -> None:
    from papo.demo import ensure_demo, format_banner

    location = locate_database(settings)
    db = Database(location.app_url, pool_size=1)
    try:
        typer.echo(format_banner(settings, await ensure_demo(settings, db)), err=True)
    finally:
        await db.dispose()


def main() -> None:
    app()


if __name__ == "__main__":  # python -m papo.cli
    main()
