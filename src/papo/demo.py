"""`make run`'s demo tenant and user, created once and remembered in data_dir/demo.json."""

from __future__ import annotations

import json
import secrets
import uuid
from dataclasses import asdict, dataclass

import structlog

from papo.auth import service as auth_service
from papo.auth.models import Role
from papo.auth.tokens import SigningKey, issue_token
from papo.db.engine import Database, RlsContext
from papo.errors import NotFound
from papo.private_files import write_private_file
from papo.settings import Settings
from papo.state import AppState

log = structlog.get_logger(__name__)


@dataclass
class DemoAccount:
    tenant_id: str
    user_id: str
    email: str
    password: str


async def ensure_demo(settings: Settings, db: Database) -> DemoAccount:
    path = settings.data_dir / "demo.json"
    if path.exists():
        account = DemoAccount(**json.loads(path.read_text()))
        try:
            context = RlsContext(uuid.UUID(account.tenant_id), account.user_id, None)
            async with db.transaction(context) as session:
                await auth_service.find_member(session, account.user_id)
            return account
        except NotFound:
            log.warning("demo account in demo.json no longer exists; creating a new one")
    password = secrets.token_urlsafe(12)
    # Sign-in e-mails are unique across the server; a fresh suffix survives a lost demo.json.
    email = f"demo+{secrets.token_hex(3)}@papo.local"
    async with db.transaction() as session:
        tenant = await auth_service.create_tenant(session, "Demo company")
        tenant.settings = {"signup_open": True}  # so a newcomer can also try signing up in the browser
        user_id, _ = await auth_service.add_member(
            session, email=email, name="Demo User", password=password, role=Role.owner
        )
        account = DemoAccount(str(tenant.id), user_id, email, password)
    write_private_file(path, json.dumps(asdict(account)).encode())  # it holds the demo password
    return account


def format_banner(settings: Settings, account: DemoAccount) -> str:
    token, ttl = issue_token(
        settings,
        SigningKey.load(settings),
        tenant_id=uuid.UUID(account.tenant_id),
        user_id=account.user_id,
        role=Role.owner.value,
        ttl_seconds=24 * 3600,
    )
    url = f"http://{settings.host}:{settings.port}"
    return "\n".join(
        [
            "",
            "papo is running",
            f"  URL        {url}   (API docs: {url}/docs)",
            f"  tenant     {account.tenant_id}",
            f"  user       {account.user_id}",
            f"  sign in    {account.email} / {account.password}   ({url}/login)",
            f"  sign up    {url}/signup?tenant={account.tenant_id}",
            f"  token      {token}",
            f"             (valid {ttl // 3600} h; try: curl -H 'Authorization: Bearer <token>' {url}/api/v1/me)",
            "",
        ]
    )


async def print_banner(state: AppState) -> None:
    account = await ensure_demo(state.settings, state.db)
    # The banner is for the person at the terminal, printed once the server is about to listen.
    print(format_banner(state.settings, account), flush=True)
