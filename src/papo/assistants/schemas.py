"""API shapes for assistants. The provider key is write-only: responses only say whether one is set."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, HttpUrl, Tag, field_validator


class Parameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1, le=200_000)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)


ENV_NAME = r"^[A-Z_][A-Z0-9_]{0,127}$"


class AssistantCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    instructions: str = Field(default="", max_length=32_000)
    provider: Literal["openai", "demo"] = "openai"
    model: str = Field(min_length=1, max_length=200)
    base_url: HttpUrl | None = None
    api_key: str | None = Field(
        default=None, min_length=1, max_length=1000, description="Stored encrypted; never returned."
    )
    api_key_env: str | None = Field(
        default=None, pattern=ENV_NAME, description="Or: the server environment variable holding the key."
    )
    parameters: Parameters = Field(default_factory=Parameters)
    context_token_budget: int = Field(default=8000, ge=256, le=2_000_000)
    is_default: bool = False
    accepts_images: bool = Field(
        default=False, description="The model takes images (vision): photos in a chat are sent to it as image parts"
    )


class AssistantPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=100)
    instructions: str | None = Field(default=None, max_length=32_000)
    provider: Literal["openai", "demo"] | None = None
    model: str | None = Field(default=None, min_length=1, max_length=200)
    base_url: HttpUrl | None = None
    api_key: str | None = Field(default=None, max_length=1000, description="Empty string removes the stored key.")
    api_key_env: str | None = Field(default=None, pattern=ENV_NAME)
    parameters: Parameters | None = None
    context_token_budget: int | None = Field(default=None, ge=256, le=2_000_000)
    is_default: bool | None = None
    accepts_images: bool | None = None


class AssistantOut(BaseModel):
    id: uuid.UUID
    name: str
    instructions: str
    provider: str
    model: str
    base_url: str | None
    api_key_env: str | None
    has_api_key: bool
    parameters: dict[str, float | int]
    context_token_budget: int
    is_default: bool
    accepts_images: bool
    created_at: datetime
    updated_at: datetime


BUILTIN_TOOLS = ("hand_over_to_person", "earlier_conversations")


class HttpToolCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["http"] = "http"
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The function name the model calls")
    description: str = Field(default="", max_length=2000)
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}},
        description="JSON Schema of the arguments (an object)",
    )
    url: str = Field(min_length=8, max_length=2000, description="Where papo POSTs each call (signed)")
    timeout_seconds: int = Field(default=10, ge=1, le=60)
    enabled: bool = True

    @field_validator("parameters")
    @classmethod
    def _object_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        if value.get("type") != "object":
            raise ValueError('parameters is a JSON Schema with "type": "object"')
        if len(json.dumps(value)) > 16_000:
            raise ValueError("parameters is limited to 16,000 characters of JSON")
        return value


class McpToolCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["mcp"]
    name: str = Field(
        pattern=r"^[A-Za-z0-9]{1,24}$",
        description="Prefix of the server's tools: the model sees `<name>__<tool>`",
    )
    description: str = Field(default="", max_length=2000)
    url: str = Field(min_length=8, max_length=2000, description="The MCP server's streamable HTTP endpoint")
    authorization: str | None = Field(
        default=None,
        min_length=1,
        max_length=4000,
        description="Sent as the Authorization header (e.g. `Bearer …`); stored encrypted, never returned",
    )
    timeout_seconds: int = Field(default=10, ge=1, le=60)
    enabled: bool = True


class BuiltinToolCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["builtin"]
    name: Literal["hand_over_to_person", "earlier_conversations"] = Field(
        description="hand_over_to_person (WhatsApp conversations: a person takes over) or "
        "earlier_conversations (the customer's other conversations, optionally searched)"
    )
    enabled: bool = True


def _tool_kind(value: Any) -> str:
    kind = value.get("kind", "http") if isinstance(value, dict) else getattr(value, "kind", "http")
    return str(kind)


ToolCreate = Annotated[
    Annotated[HttpToolCreate, Tag("http")]
    | Annotated[McpToolCreate, Tag("mcp")]
    | Annotated[BuiltinToolCreate, Tag("builtin")],
    Discriminator(_tool_kind),
]


class ToolOut(BaseModel):
    id: uuid.UUID
    assistant_id: uuid.UUID
    kind: Literal["http", "mcp", "builtin"]
    name: str
    description: str
    parameters: dict[str, Any]
    url: str | None
    has_authorization: bool
    timeout_seconds: int
    enabled: bool
    created_at: datetime
    updated_at: datetime


class ToolCreated(ToolOut):
    secret: str | None = Field(
        description="HTTP tools: verifies papo's signature on each call (Standard Webhooks); shown once"
    )
