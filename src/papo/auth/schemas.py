"""API shapes for identity: tokens, the caller, API keys."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from papo.auth.models import Role


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(max_length=320)
    password: str = Field(max_length=1024)
    tenant_id: uuid.UUID | None = None


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"  # noqa: S105  (the OAuth token type, not a secret)
    expires_in: int
    tenant_id: uuid.UUID
    user_id: str


class Me(BaseModel):
    tenant_id: uuid.UUID
    user_id: str | None
    role: str
    email: str | None = None
    name: str | None = None
    api_key_id: uuid.UUID | None = None


class ApiKeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)


class ApiKeyOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    name: str
    prefix: str
    created_by: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    key: str = Field(description="The secret itself. Shown only in this response; store it now.")


class MemberOut(BaseModel):
    user_id: str
    email: str | None
    name: str | None
    role: Role


class MemberPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role


class BrandIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=80)
    logo_url: str | None = Field(default=None, max_length=500)
    primary: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")
    accent: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")


class TenantSettingsPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    brand: BrandIn | None = None
    signup_open: bool | None = None


class InvitationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str = Field(min_length=3, max_length=320)
    role: Role = Role.member


class InvitationOut(BaseModel):
    id: uuid.UUID
    email: str
    role: Role
    user_id: str = Field(description="The account that chats opened for the invitee belong to until they accept.")
    expires_at: datetime
    invited_by: str | None = None
    created_at: datetime | None = None


class InvitationCreated(InvitationOut):
    emailed: bool = Field(description="The link went to the address by e-mail (SMTP configured).")
    url: str | None = Field(
        default=None,
        description="The link, only when it was not e-mailed: hand it to the person yourself. Such a link "
        "cannot verify the address or reset an existing account's password.",
    )


class InvitationAccept(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(min_length=10, max_length=200)
    password: str = Field(max_length=1024, description="A new password, or the existing account's password.")
    name: str | None = Field(default=None, max_length=200)
    reset: bool = Field(
        default=False,
        description="Set `password` as the new password of the existing account with this e-mail "
        "(only for a link that was e-mailed).",
    )
