"""Wire shapes of the usage report."""

from __future__ import annotations

from datetime import date

from pydantic import BaseModel, Field


class DaySentiment(BaseModel):
    positive: int
    neutral: int
    negative: int
    average: float | None = Field(description="mean score (-1..1) of the day's scored messages")


class UsageDay(BaseModel):
    day: date
    messages: dict[str, int] = Field(description="messages written that day, by role (user, assistant, system)")
    messages_by_channel: dict[str, int]
    active_users: int = Field(description="members who wrote at least one message that day")
    sessions_created: int
    ai_tokens: int
    sentiment: DaySentiment


class ModelUsage(BaseModel):
    model: str
    prompt_tokens: int
    completion_tokens: int
    estimated_cost_usd: float | None = Field(description="null when no price is configured for the model")


class WhatsappNumberUsage(BaseModel):
    number: str = Field(description="the number's name and phone")
    in_: int = Field(alias="in")
    out: int


class UsageTotals(BaseModel):
    messages: int
    sessions_created: int
    ai_tokens: int
    estimated_cost_usd: float
    active_users: int = Field(description="distinct members who wrote in the period")


class UsageSummaryOut(BaseModel):
    since: date
    until: date
    totals: UsageTotals
    days: list[UsageDay]
    models: list[ModelUsage]
    whatsapp: list[WhatsappNumberUsage]
