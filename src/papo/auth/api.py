"""Identity endpoints: built-in sign-in, papo's JWKS, the caller, tenant API keys, Clerk webhooks."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status

from papo.auth import clerk, service, tenant_settings
from papo.auth.deps import AdminPrincipal, Auth, AuthRuntime, CurrentPrincipal, DbSession
from papo.auth.models import Role
from papo.auth.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    InvitationAccept,
    InvitationCreate,
    InvitationCreated,
    InvitationOut,
    Me,
    MemberOut,
    MemberPatch,
    TenantSettingsPatch,
    TokenRequest,
    TokenResponse,
)
from papo.auth.service import Principal
from papo.auth.tokens import issue_token
from papo.ops.ratelimit import client_address, webhook_allowance

router = APIRouter(tags=["identity"])


@router.get("/.well-known/jwks.json", include_in_schema=True)
async def jwks(state: Auth) -> dict[str, Any]:
    return state.signing_key.jwks()


@router.post("/api/v1/auth/token", response_model=TokenResponse)
async def sign_in(body: TokenRequest, request: Request, session: DbSession, state: Auth) -> TokenResponse:
    """Exchange a built-in account's e-mail and password for a bearer token. After repeated failures
    from one address or for one account, attempts are refused with 429 for a growing (capped) delay."""
    principal = await state.limiter.sign_in(
        client_address(request),
        body.email,
        lambda: service.login(session, body.email, body.password, body.tenant_id),
    )
    return _token_response(state, principal)


def _token_response(state: AuthRuntime, principal: Principal) -> TokenResponse:
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


@router.delete("/api/v1/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["admin"])
async def remove_member(user_id: str, principal: AdminPrincipal, session: DbSession) -> Response:
    await tenant_settings.remove_member(session, principal, user_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _inviter(principal: CurrentPrincipal) -> Principal:
    if not principal.is_service:
        principal.require_admin()
    return principal


Inviter = Annotated[Principal, Depends(_inviter)]


@router.post(
    "/api/v1/invitations", status_code=status.HTTP_201_CREATED, response_model=InvitationCreated, tags=["admin"]
)
async def invite(body: InvitationCreate, principal: Inviter, session: DbSession, state: Auth) -> InvitationCreated:
    """Invite an e-mail address to this tenant (admins and API keys). No membership exists until the
    person accepts; the link is e-mailed when SMTP is configured, otherwise returned once in `url`."""
    created = await state.accounts.invite(session, principal, body.email, body.role)
    return InvitationCreated(**vars(created))


@router.get("/api/v1/invitations", response_model=list[InvitationOut], tags=["admin"])
async def pending_invitations(principal: Inviter, session: DbSession, state: Auth) -> list[InvitationOut]:
    return [InvitationOut(**vars(p)) for p in await state.accounts.pending(session, principal)]


@router.delete("/api/v1/invitations/{invitation_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["admin"])
async def revoke_invitation(invitation_id: uuid.UUID, principal: Inviter, session: DbSession, state: Auth) -> Response:
    await state.accounts.revoke(session, principal, invitation_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/api/v1/invitations/accept", response_model=TokenResponse, tags=["identity"])
async def accept_invitation(body: InvitationAccept, request: Request, session: DbSession, state: Auth) -> TokenResponse:
    """Join the invitation's tenant: with a new password when the address has no account yet, with the
    existing account's password, or (`reset`, e-mailed links only) by choosing a new one for it.
    Password checks count as sign-in attempts for that address (the same throttle)."""
    invitation = await state.accounts.view(session, body.token)
    principal = await state.limiter.sign_in(
        client_address(request),
        invitation.email,
        lambda: state.accounts.accept(
            session, body.token, invitation, password=body.password, name=body.name, reset=body.reset
        ),
    )
    return _token_response(state, principal)


@router.patch("/api/v1/tenant/settings", status_code=status.HTTP_204_NO_CONTENT, tags=["admin"])
async def update_tenant_settings(
    body: TenantSettingsPatch, principal: AdminPrincipal, session: DbSession, state: Auth
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
async def clerk_webhook(request: Request, session: DbSession, state: Auth) -> Response:
    """Clerk user and organization events, verified with the Svix signature."""
    event = clerk.verify_event(state.settings, await request.body(), dict(request.headers))
    await clerk.apply_event(session, event)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
