"""Assistants API (/api/v1/assistants): members list them, tenant admins manage them."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Response, status

from papo.assistants.schemas import AssistantCreate, AssistantOut, AssistantPatch
from papo.assistants.service import AssistantService, to_out
from papo.auth.deps import CurrentPrincipal, DbSession, State

router = APIRouter(prefix="/api/v1/assistants", tags=["assistants"])


async def assistant_service(session: DbSession, principal: CurrentPrincipal, state: State) -> AssistantService:
    return AssistantService(session, principal, state.settings, state.keys)


Assistants = Annotated[AssistantService, Depends(assistant_service)]


async def resolve_assistant(
    assistants: AssistantService, choice: uuid.UUID | Literal["default"] | None
) -> uuid.UUID | None:
    """An assistant of the caller's tenant (404 otherwise), the tenant's default, or none."""
    if choice is None:
        return None
    if choice == "default":
        return await assistants.default_id()
    return (await assistants.get(choice)).id


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
