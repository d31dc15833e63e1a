"""Sentiment scoring from the outbox, sentiment read back for staff, and the admins' usage report."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Uuid, any_, func, literal, select
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.db.engine import driver
from papo.errors import BadRequest
from papo.insights.models import MessageSentiment
from papo.insights.sentiment import ChildProcessScorer
from papo.realtime.service import Event

MAX_SCORED_CHARS = 2000  # the opening of a long message says enough, and scoring time stays bounded
MAX_REPORT_DAYS = 366


class SentimentWorker:
    """Outbox handler: every new user or customer message gets a score, off the sending path."""

    def __init__(self, scorer: ChildProcessScorer) -> None:
        self.scorer = scorer

    async def score(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        """The scores of the batch's new user and customer messages (worked out with no transaction open)."""
        wanted = [
            (event.tenant_id, str(event.data["id"]), str(event.data["content"])[:MAX_SCORED_CHARS])
            for event in events
            if event.type == "message.created"
            and event.data.get("role") == "user"
            and str(event.data.get("content") or "").strip()
        ]
        if not wanted:
            return []
        scores = await self.scorer.score_many([text for _, _, text in wanted])
        return [
            {
                "tenant_id": str(tenant_id),
                "message_id": message_id,
                "score": s.score,
                "label": s.label,
                "language": s.language,
            }
            for (tenant_id, message_id, _), s in zip(wanted, scores, strict=True)
        ]

    @staticmethod
    async def store(session: AsyncSession, scored: list[dict[str, Any]]) -> None:
        if scored:
            await driver(session).execute("SELECT papo_store_sentiments($1::jsonb)", json.dumps(scored))


@dataclass(frozen=True)
class SessionSentiment:
    average: float
    scored: int
    last_label: str


async def message_sentiments(session: AsyncSession, message_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """Scores of these messages that the caller may see (row-level security decides)."""
    if not message_ids:
        return {}
    rows = await session.execute(
        select(MessageSentiment.message_id, MessageSentiment.score, MessageSentiment.label, MessageSentiment.language)
        .where(MessageSentiment.tenant_id == func.papo_current_tenant())
        .where(MessageSentiment.message_id == any_(_uuid_array(message_ids)))
    )
    return {row.message_id: {"score": row.score, "label": row.label, "language": row.language} for row in rows}


async def session_sentiments(
    session: AsyncSession, session_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, SessionSentiment]:
    """Per conversation: the average score, how many messages were scored, and the latest mood."""
    if not session_ids:
        return {}
    latest_first = aggregate_order_by(
        MessageSentiment.label, MessageSentiment.scored_at.desc(), MessageSentiment.message_id.desc()
    )
    rows = await session.execute(
        select(
            MessageSentiment.session_id,
            func.avg(MessageSentiment.score).label("average"),
            func.count().label("scored"),
            func.array_agg(latest_first)[1].label("last_label"),
        )
        .where(MessageSentiment.tenant_id == func.papo_current_tenant())
        .where(MessageSentiment.session_id == any_(_uuid_array(session_ids)))
        .group_by(MessageSentiment.session_id)
    )
    return {
        row.session_id: SessionSentiment(round(float(row.average), 3), int(row.scored), row.last_label) for row in rows
    }


def _uuid_array(ids: Sequence[uuid.UUID]) -> ColumnElement[list[uuid.UUID]]:
    """One array parameter, not one parameter per id: a single statement whatever the list's length."""
    return literal(list(ids), ARRAY(Uuid))


@dataclass
class UsageSummary:
    since: date
    until: date
    days: list[dict[str, Any]] = field(default_factory=list)
    models: list[dict[str, Any]] = field(default_factory=list)
    whatsapp: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)


def report_window(since: date | None, until: date | None, today: date) -> tuple[date, date]:
    until = until or today
    since = since or until - timedelta(days=29)
    if since > until:
        raise BadRequest("`since` is after `until`")
    if (until - since).days >= MAX_REPORT_DAYS:
        raise BadRequest(f"a report covers at most {MAX_REPORT_DAYS} days")
    return since, until


async def usage_summary(
    session: AsyncSession,
    principal: Principal,
    since: date,
    until: date,
    prices: dict[str, tuple[float, float]],
) -> UsageSummary:
    """Per UTC day: messages (by who wrote them), active members, chats opened, AI tokens, sentiment;
    per model: tokens and their estimated cost (`prices`: USD per million input/output tokens);
    per WhatsApp number: messages in and out."""
    principal.require_admin()
    rows = await driver(session).fetch("SELECT * FROM papo_usage($1, $2)", since, until)
    days: dict[date, dict[str, Any]] = {}
    for offset in range((until - since).days + 1):
        day = since + timedelta(days=offset)
        days[day] = {
            "day": day,
            "messages": {"user": 0, "assistant": 0, "system": 0},
            "messages_by_channel": {},
            "active_users": 0,
            "sessions_created": 0,
            "ai_tokens": 0,
            "sentiment": {"positive": 0, "neutral": 0, "negative": 0, "average": None},
        }
    models: dict[str, dict[str, float]] = defaultdict(lambda: {"prompt_tokens": 0, "completion_tokens": 0})
    numbers: dict[str, dict[str, int]] = defaultdict(lambda: {"in": 0, "out": 0})
    sentiment_sums: dict[date, list[float]] = defaultdict(lambda: [0.0, 0.0])
    active_in_window = 0
    for row in rows:
        day_row, label, value = days[row["day"]], row["label"], float(row["value"])
        match row["metric"]:
            case "messages":
                channel, _, role = label.partition(":")
                day_row["messages"][role] = day_row["messages"].get(role, 0) + int(value)
                day_row["messages_by_channel"][channel] = day_row["messages_by_channel"].get(channel, 0) + int(value)
            case "active_users":
                day_row["active_users"] = int(value)
            case "active_users_window":
                active_in_window = int(value)
            case "sessions_created":
                day_row["sessions_created"] += int(value)
            case "ai_tokens":
                completion = float(row["extra"] or 0)
                models[label]["prompt_tokens"] += value
                models[label]["completion_tokens"] += completion
                day_row["ai_tokens"] += int(value + completion)
            case "whatsapp_messages":
                number, _, direction = label.rpartition(":")
                numbers[number][direction] += int(value)
            case "sentiment":
                day_row["sentiment"][label] = int(value)
                sums = sentiment_sums[row["day"]]
                sums[0] += float(row["extra"] or 0) * value
                sums[1] += value
    for day, (weighted, count) in sentiment_sums.items():
        days[day]["sentiment"]["average"] = round(weighted / count, 3) if count else None
    model_rows: list[dict[str, Any]] = []
    total_cost = 0.0
    for model, tokens in sorted(models.items()):
        price = prices.get(model)
        cost = (
            round((tokens["prompt_tokens"] * price[0] + tokens["completion_tokens"] * price[1]) / 1_000_000, 4)
            if price is not None
            else None
        )
        total_cost += cost or 0.0
        model_rows.append(
            {
                "model": model,
                "prompt_tokens": int(tokens["prompt_tokens"]),
                "completion_tokens": int(tokens["completion_tokens"]),
                "estimated_cost_usd": cost,
            }
        )
    day_rows = list(days.values())
    totals = {
        "messages": sum(sum(d["messages"].values()) for d in day_rows),
        "sessions_created": sum(d["sessions_created"] for d in day_rows),
        "ai_tokens": sum(d["ai_tokens"] for d in day_rows),
        "estimated_cost_usd": round(total_cost, 4),
        "active_users": active_in_window,
    }
    whatsapp = [{"number": number, **counts} for number, counts in sorted(numbers.items())]
    return UsageSummary(since, until, day_rows, model_rows, whatsapp, totals)
