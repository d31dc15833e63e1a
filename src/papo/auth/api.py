"""Identity endpoints: built-in sign-in, papo's JWKS, the caller, tenant API keys, Clerk webhooks."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Depends, Request, Response, status

from papo.auth import clerk, service, tenant_settings
from papo.auth.deps import AdminPrincipal, CurrentPrincipal, DbSession, State
from papo.auth.models import Role
from papo.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    Me,
    MemberOut,
    MemberPatch,
    TenantSettingsPatch,
    TokenRequest,
    TokenResponse,
)
from papo.auth.tokens import issue_token
from papo.errors import Unauthorized
from papo.ops.ratelimit import RateLimited, client_address, webhook_allowance

router = APIRouter(tags=["identity"])


@router.get("/.well-known/jwks.json", include_in_schema=True)
async def jwks(state: State) -> dict[str, Any]:
    return state.signing_key.jwks()


@router.post("/api/v1/auth/token", response_model=TokenResponse)
async def sign_in(body: TokenRequest, request: Request, session: DbSession, state: State) -> TokenResponse:
    """Exchange a built-in account's e-mail and password for a bearer token. Repeated failures from
    one address or for one account are refused with 429 for a while."""
    address = client_address(request)
    if refusal := await state.limiter.sign_in_refusal(address, body.email):
        raise RateLimited(refusal, "too many failed sign-ins; wait before trying again")
    try:
        principal = await service.login(session, body.email, body.password, body.tenant_id)
    except Unauthorized:
        await state.limiter.sign_in_failed(address, body.email)
        raise
    assert principal.user_id is not None
    token, ttl = issue_token(
        state.settings,
        state.signing_key,
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        role=principal.role,
    )
    return TokenResponse(access_token=token, expires_in=ttl, tenant_id=principal.tenant_id, user_id=principal.user_id)


@router.get("/api/v1/me", response_model=Me)
async def me(principal: CurrentPrincipal, session: DbSession) -> Me:
    profile = Me(
        tenant_id=principal.tenant_id,
        user_id=principal.user_id,
        role=principal.role,
        api_key_id=principal.api_key_id,
    )
    if principal.user_id is not None:
        user = await service.get_user(session, principal.user_id)
        profile.email, profile.name = user.email, user.name
    return profile


@router.post("/api/v1/api-keys", status_code=status.HTTP_201_CREATED, response_model=ApiKeyCreated)
async def create_api_key(body: ApiKeyCreate, principal: AdminPrincipal, session: DbSession) -> ApiKeyCreated:
    key, plaintext = await service.create_api_key(session, principal.tenant_id, body.name, principal.user_id)
    return ApiKeyCreated(**ApiKeyOut.model_validate(key).model_dump(), key=plaintext)


@router.get("/api/v1/api-keys", response_model=list[ApiKeyOut])
async def list_api_keys(principal: AdminPrincipal, session: DbSession) -> list[ApiKeyOut]:
    return [ApiKeyOut.model_validate(key) for key in await service.list_api_keys(session)]


@router.delete("/api/v1/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
async def revoke_api_key(key_id: uuid.UUID, principal: AdminPrincipal, session: DbSession) -> Response:
    await service.revoke_api_key(session, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/api/v1/members", response_model=list[MemberOut], tags=["admin"])
async def list_members(principal: AdminPrincipal, session: DbSession) -> list[MemberOut]:
    rows = await tenant_settings.members(session, principal)
    return [MemberOut(user_id=r.user_id, email=r.email, name=r.name, role=Role(r.role)) for r in rows]


@router.patch("/api/v1/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["admin"])
async def change_role(user_id: str, body: MemberPatch, principal: AdminPrincipal, session: DbSession) -> Response:
    await tenant_settings.set_role(session, principal, user_id, body.role)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.patch("/api/v1/tenant/settings", status_code=status.HTTP_204_NO_CONTENT, tags=["admin"])
async def update_tenant_settings(
    body: TenantSettingsPatch, principal: AdminPrincipal, session: DbSession, state: State
) -> Response:
    """Brand (name, logo, primary and accent colours) and whether people may sign themselves up."""
    brand = body.brand.model_dump(exclude_none=True) if body.brand is not None else None
    await tenant_settings.update(session, principal, state.tenants, brand=brand, signup_open=body.signup_open)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/api/v1/webhooks/clerk",
    status_code=status.HTTP_204_NO_CONTENT,
    tags=["webhooks"],
    dependencies=[Depends(webhook_allowance)],
)
async def clerk_webhook(request: Request, session: DbSession, state: State) -> Response:
    """Clerk user and organization events, verified with the Svix signature."""
    event = clerk.verify_event(state.settings, await request.body(), dict(request.headers))
    await clerk.apply_event(session, event)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
