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
