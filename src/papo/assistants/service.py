"""Assistants: CRUD for tenant admins and what a reply needs to reach its provider."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from papo.assistants.models import Assistant
from papo.assistants.schemas import AssistantCreate, AssistantOut, AssistantPatch
from papo.auth.service import Principal
from papo.crypto import KeyBox
from papo.db.base import new_id
from papo.db.engine import driver
from papo.errors import InvalidInput, NotFound
from papo.netguard import NetGuard, TargetRefused
from papo.settings import Settings

DEMO_MODEL = "papo-demo"
OPENAI_URL = "https://api.openai.com/v1"  # where the SDK goes when nothing else is configured
ASSISTANT_NOT_FOUND = "assistant not found"


@dataclass(frozen=True)
class ProviderTarget:
    """Everything a reply needs to call the model, resolved from the assistant and the server settings."""

    assistant_id: uuid.UUID
    name: str
    provider: str
    model: str
    instructions: str
    base_url: str | None
    api_key: str | None
    parameters: dict[str, Any]
    context_token_budget: int
    accepts_images: bool = False
    # Checks every connection to a URL the tenant chose; None for the operator's own endpoints.
    guard: NetGuard | None = None


def to_out(assistant: Assistant) -> AssistantOut:
    return AssistantOut(
        id=assistant.id,
        name=assistant.name,
        instructions=assistant.instructions,
        provider=assistant.provider,
        model=assistant.model,
        base_url=assistant.base_url,
        api_key_env=assistant.api_key_env,
        has_api_key=assistant.api_key_encrypted is not None,
        parameters=assistant.parameters,
        context_token_budget=assistant.context_token_budget,
        is_default=assistant.is_default,
        accepts_images=assistant.accepts_images,
        created_at=assistant.created_at,
        updated_at=assistant.updated_at,
    )


def _same_url(a: str | None, b: str | None) -> bool:
    return (a or "").rstrip("/") == (b or "").rstrip("/")


class AssistantService:
    def __init__(
        self, db: AsyncSession, principal: Principal, settings: Settings, keys: KeyBox, guard: NetGuard | None = None
    ) -> None:
        self.db = db
        self.principal = principal
        self.settings = settings
        self.keys = keys
        self.guard = guard or NetGuard.from_settings(settings)

    async def list(self) -> list[Assistant]:
        query = select(Assistant).where(Assistant.tenant_id == self.principal.tenant_id)
        return list((await self.db.scalars(query.order_by(Assistant.created_at))).all())

    async def get(self, assistant_id: uuid.UUID) -> Assistant:
        assistant = await self.db.scalar(
            select(Assistant).where(Assistant.tenant_id == self.principal.tenant_id, Assistant.id == assistant_id)
        )
        if assistant is None:
            raise NotFound(ASSISTANT_NOT_FOUND)
        return assistant

    async def _clear_default(self) -> None:
        await self.db.execute(
            update(Assistant)
            .where(Assistant.tenant_id == self.principal.tenant_id, Assistant.is_default.is_(True))
            .values(is_default=False)
            .execution_options(synchronize_session=False)
        )

    def key_env_url(self, api_key_env: str) -> str:
        """The only provider URL the server's key in `api_key_env` is ever sent to: the operator's."""
        return self.settings.assistant_key_env_urls.get(api_key_env) or self.settings.openai_base_url or OPENAI_URL

    async def _check_provider_settings(
        self, base_url: str | None, api_key_env: str | None, *, new_base_url: bool = True
    ) -> None:
        """Tenant admins must not reach into the server: provider URLs only to public addresses (or
        what the operator allowed) and to allowed hosts (when the operator lists them); keys only from
        environment variables the operator shared, and then only to the operator's URL for them."""
        if api_key_env and api_key_env not in self.settings.assistant_key_envs:
            raise InvalidInput(
                f"{api_key_env} is not an environment variable this server shares with assistants "
                "(PAPO_ASSISTANT_KEY_ENVS)",
                field="api_key_env",
            )
        if api_key_env and base_url:
            if not _same_url(base_url, self.key_env_url(api_key_env)):
                raise InvalidInput(
                    "a server-side key (api_key_env) is only sent to the provider the operator configured "
                    "for it: leave base_url out, or send your own api_key",
                    field="base_url",
                )
            return  # the operator's own URL
        if not base_url or not new_base_url:
            return
        allowed_hosts = [h.lower() for h in self.settings.assistant_allowed_hosts]
        if allowed_hosts:
            host = (urlsplit(base_url).hostname or "").lower()
            if not any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in allowed_hosts):
                raise InvalidInput(
                    f"provider host {host!r} is not allowed on this server (PAPO_ASSISTANT_ALLOWED_HOSTS)",
                    field="base_url",
                )
        try:
            await self.guard.check_url(base_url)
        except TargetRefused as exc:
            raise InvalidInput(exc.detail, field="base_url") from None

    async def create(self, body: AssistantCreate) -> Assistant:
        self.principal.require_admin()
        await self._check_provider_settings(str(body.base_url) if body.base_url else None, body.api_key_env)
        if body.is_default:
            await self._clear_default()
        assistant = Assistant(
            tenant_id=self.principal.tenant_id,
            id=new_id(),
            name=body.name.strip(),
            instructions=body.instructions,
            provider=body.provider,
            model=body.model,
            base_url=str(body.base_url) if body.base_url else None,
            api_key_encrypted=self.keys.seal(body.api_key) if body.api_key else None,
            api_key_env=body.api_key_env,
            parameters=body.parameters.model_dump(exclude_none=True),
            context_token_budget=body.context_token_budget,
            is_default=body.is_default,
            accepts_images=body.accepts_images,
        )
        self.db.add(assistant)
        await self.db.flush()
        await self.db.refresh(assistant)
        return assistant

    async def update(self, assistant_id: uuid.UUID, body: AssistantPatch) -> Assistant:
        self.principal.require_admin()
        assistant = await self.get(assistant_id)
        sent = body.model_fields_set
        if sent & {"base_url", "api_key_env"}:  # judged as they will be together, not field by field
            await self._check_provider_settings(
                (str(body.base_url) if body.base_url else None) if "base_url" in sent else assistant.base_url,
                body.api_key_env if "api_key_env" in sent else assistant.api_key_env,
                new_base_url="base_url" in sent,
            )
        if body.is_default:
            await self._clear_default()
        for field in (
            "name",
            "instructions",
            "provider",
            "model",
            "api_key_env",
            "context_token_budget",
            "is_default",
            "accepts_images",
        ):
            if field in sent:
                value = getattr(body, field)
                if value is None and field not in ("api_key_env",):
                    raise InvalidInput(f"{field} cannot be null", field=field)
                setattr(assistant, field, value)
        if "base_url" in sent:
            assistant.base_url = str(body.base_url) if body.base_url else None
        if "api_key" in sent:
            assistant.api_key_encrypted = self.keys.seal(body.api_key) if body.api_key else None
        if "parameters" in sent and body.parameters is not None:
            assistant.parameters = body.parameters.model_dump(exclude_none=True)
        await self.db.flush()
        await self.db.refresh(assistant)
        return assistant

    async def delete(self, assistant_id: uuid.UUID) -> None:
        self.principal.require_admin()
        assistant = await self.get(assistant_id)
        await self.db.delete(assistant)
        await self.db.flush()

    async def resolve(self, choice: uuid.UUID | Literal["default"] | None) -> uuid.UUID | None:
        """An assistant of the caller's tenant (404 otherwise), the tenant's default, or none."""
        if choice is None:
            return None
        if choice == "default":
            return await self.default_id()
        return (await self.get(choice)).id

    async def default_id(self) -> uuid.UUID:
        """The tenant's default assistant, created from the server settings on first use."""
        configured = bool(self.settings.openai_base_url or self.settings.openai_api_key)
        provider, model = ("openai", self.settings.openai_model) if configured else ("demo", DEMO_MODEL)
        found = await driver(self.db).fetchval("SELECT papo_default_assistant($1, $2, $3)", new_id(), provider, model)
        return uuid.UUID(str(found))

    async def target(self, assistant_id: uuid.UUID) -> ProviderTarget:
        assistant = await self.get(assistant_id)
        api_key = None
        base_url = assistant.base_url
        guard: NetGuard | None = self.guard
        if assistant.api_key_encrypted:
            api_key = self.keys.open(assistant.api_key_encrypted)
        elif assistant.api_key_env and assistant.api_key_env in self.settings.assistant_key_envs:
            # The server's key goes to the operator's URL for it, whatever an older row says.
            api_key = self.settings.environment_secret(assistant.api_key_env)
            base_url, guard = self.key_env_url(assistant.api_key_env), None
        if assistant.provider == "openai" and base_url is None and api_key is None:
            base_url, api_key, guard = self.settings.openai_base_url, self.settings.openai_api_key, None
        return ProviderTarget(
            assistant_id=assistant.id,
            name=assistant.name,
            provider=assistant.provider,
            model=assistant.model,
            instructions=assistant.instructions,
            base_url=base_url,
            api_key=api_key,
            parameters=dict(assistant.parameters),
            context_token_budget=assistant.context_token_budget,
            accepts_images=assistant.accepts_images,
            guard=guard,
        )
