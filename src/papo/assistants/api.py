"""Assistants API (/api/v1/assistants): members list them, tenant admins manage them."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import BaseModel, ConfigDict, Field

from papo.assistants import usage
from papo.assistants.schemas import AssistantCreate, AssistantOut, AssistantPatch, ToolCreate, ToolCreated, ToolOut
from papo.assistants.service import AssistantService, to_out
from papo.assistants.tools import ToolService, tool_view
from papo.auth.deps import CurrentPrincipal, DbSession
from papo.crypto import KeyBox
from papo.errors import BadRequest
from papo.knowledge.schemas import AssistantCollections
from papo.knowledge.service import KnowledgeService
from papo.netguard import NetGuard
from papo.runtime import current_runtime
from papo.settings import Settings


class AssistantsRuntime(Protocol):
    settings: Settings
    keys: KeyBox


State = Annotated[AssistantsRuntime, Depends(current_runtime)]

router = APIRouter(prefix="/api/v1/assistants", tags=["assistants"])
usage_router = APIRouter(prefix="/api/v1/usage", tags=["usage"])


async def assistant_service(session: DbSession, principal: CurrentPrincipal, state: State) -> AssistantService:
    return AssistantService(session, principal, state.settings, state.keys)


Assistants = Annotated[AssistantService, Depends(assistant_service)]


@router.get("", response_model=list[AssistantOut])
async def list_assistants(assistants: Assistants) -> list[AssistantOut]:
    return [to_out(a) for a in await assistants.list()]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=AssistantOut)
async def create_assistant(body: AssistantCreate, assistants: Assistants) -> AssistantOut:
    return to_out(await assistants.create(body))


@router.get("/{assistant_id}", response_model=AssistantOut)
async def get_assistant(assistant_id: uuid.UUID, assistants: Assistants) -> AssistantOut:
    return to_out(await assistants.get(assistant_id))


@router.patch("/{assistant_id}", response_model=AssistantOut)
async def update_assistant(assistant_id: uuid.UUID, body: AssistantPatch, assistants: Assistants) -> AssistantOut:
    return to_out(await assistants.update(assistant_id, body))


@router.delete("/{assistant_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_assistant(assistant_id: uuid.UUID, assistants: Assistants) -> Response:
    await assistants.delete(assistant_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{assistant_id}/collections", response_model=AssistantCollections, tags=["knowledge"])
async def assistant_collections(
    assistant_id: uuid.UUID, assistants: Assistants, session: DbSession, principal: CurrentPrincipal, state: State
) -> AssistantCollections:
    """The knowledge collections this assistant answers from."""
    await assistants.get(assistant_id)
    knowledge = KnowledgeService(session, principal, state.settings)
    return AssistantCollections(collection_ids=await knowledge.assistant_collections(assistant_id))


@router.put("/{assistant_id}/collections", response_model=AssistantCollections, tags=["knowledge"])
async def set_assistant_collections(
    assistant_id: uuid.UUID,
    body: AssistantCollections,
    assistants: Assistants,
    session: DbSession,
    principal: CurrentPrincipal,
    state: State,
) -> AssistantCollections:
    """Choose the collections this assistant answers from (replacing the list); admins and API keys."""
    await assistants.get(assistant_id)
    knowledge = KnowledgeService(session, principal, state.settings)
    await knowledge.set_assistant_collections(assistant_id, body.collection_ids)
    return AssistantCollections(collection_ids=await knowledge.assistant_collections(assistant_id))


def tool_service(session: DbSession, principal: CurrentPrincipal, state: State) -> ToolService:
    return ToolService(session, principal, state.keys, NetGuard.from_settings(state.settings))


Tools = Annotated[ToolService, Depends(tool_service)]


@router.get("/{assistant_id}/tools", response_model=list[ToolOut], tags=["tools"])
async def list_tools(assistant_id: uuid.UUID, assistants: Assistants, tools: Tools) -> list[dict[str, object]]:
    await assistants.get(assistant_id)
    return [tool_view(tool) for tool in await tools.list(assistant_id)]


@router.post("/{assistant_id}/tools", status_code=status.HTTP_201_CREATED, response_model=ToolCreated, tags=["tools"])
async def create_tool(
    assistant_id: uuid.UUID, body: ToolCreate, assistants: Assistants, tools: Tools
) -> dict[str, object]:
    """An HTTP tool the assistant may call: papo POSTs `{"tool", "call_id", "arguments", …}` as JSON to
    `url`, signed with the returned `secret` (Standard Webhooks headers), and gives the model the
    answer (at most 64 KB; an error status, a timeout or a larger answer is given as an error)."""
    await assistants.get(assistant_id)
    tool, secret = await tools.create(assistant_id, body.model_dump())
    return tool_view(tool) | {"secret": secret}


@router.delete("/{assistant_id}/tools/{tool_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["tools"])
async def delete_tool(assistant_id: uuid.UUID, tool_id: uuid.UUID, assistants: Assistants, tools: Tools) -> Response:
    await assistants.get(assistant_id)
    await tools.delete(assistant_id, tool_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


class UsageOut(BaseModel):
    user_id: str
    day: date
    replies: int
    prompt_tokens: int
    completion_tokens: int


class QuotaIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    daily_tokens_per_user: int | None = Field(ge=1, le=10**12, description="null removes the quota")


@usage_router.get("", response_model=list[UsageOut])
async def usage_report(
    session: DbSession,
    principal: CurrentPrincipal,
    since: Annotated[date | None, Query(alias="from")] = None,
    until: Annotated[date | None, Query(alias="to")] = None,
    user_id: str | None = None,
) -> list[UsageOut]:
    """Tokens per member and day (UTC). Admins see every member; members see themselves."""
    until = until or datetime.now(UTC).date()
    since = since or until - timedelta(days=30)
    if since > until:
        raise BadRequest("`from` is after `to`")
    rows = await usage.report(session, principal, since, until, user_id)
    return [UsageOut(**vars(row)) for row in rows]


@usage_router.put("/quota", status_code=status.HTTP_204_NO_CONTENT)
async def set_usage_quota(body: QuotaIn, session: DbSession, principal: CurrentPrincipal) -> Response:
    """Tenant admins: a daily token allowance per member; past it, new replies get 429 until 00:00 UTC."""
    await usage.set_quota(session, principal, body.daily_tokens_per_user)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
