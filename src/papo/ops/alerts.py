"""Alerts for the operator: rules evaluated every `alert_interval_seconds`, notifications to a
Slack-compatible webhook and/or e-mail.

Each alert has a key (a rule, or a rule and a thing: one per WhatsApp number) and a remembered
state in `alert_states`. A notification goes out when an alert starts firing, again only as a
reminder every `alert_repeat_minutes` while it keeps firing, and once when it clears ("resolved").
One process evaluates at a time (a try-lock), so however many processes run and however long an
outage lasts, it is one alert and one resolution, not one per request or per process.

Rules: server errors (5xx) per minute, summed over the processes' recent reports; AI replies failed
in the window; each WhatsApp number FAILED or logged out; work waiting in a queue (too much, or for
too long); dead letters (work that gave up) in a queue."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
import structlog
from sqlalchemy import case, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from papo.db.engine import Database, driver
from papo.mail import Mailer
from papo.ops.metrics import ALERTS_SENT, OPERATIONAL_COUNTS_SQL
from papo.ops.models import AlertState, OpsObservation
from papo.settings import Settings

log = structlog.get_logger(__name__)
ALERTS_LOCK = 7070707072
ERROR_WINDOW_SECONDS = 60.0
_server_errors: deque[float] = deque(maxlen=100_000)


def record_server_error() -> None:
    """Called for every 5xx answer (by the request middleware)."""
    _server_errors.append(time.monotonic())


def recent_server_errors(now: float | None = None) -> int:
    now = time.monotonic() if now is None else now
    while _server_errors and _server_errors[0] < now - ERROR_WINDOW_SECONDS:
        _server_errors.popleft()
    return len(_server_errors)


@dataclass(frozen=True)
class Signal:
    key: str
    rule: str
    firing: bool
    value: float
    summary: str


@dataclass(frozen=True)
class Notice:
    key: str
    kind: str  # firing, reminder, resolved
    summary: str
    since: datetime

    def title(self) -> str:
        word = {"firing": "FIRING", "reminder": "STILL FIRING", "resolved": "RESOLVED"}[self.kind]
        return f"[papo] {word}: {self.summary}"

    def text(self) -> str:
        icon = {"firing": "🔴", "reminder": "🟠", "resolved": "✅"}[self.kind]
        lasted = datetime.now(UTC) - self.since
        minutes = max(1, round(lasted.total_seconds() / 60))
        tail = f" (after {minutes} min)" if self.kind == "resolved" else f" (since {self.since:%Y-%m-%d %H:%M} UTC)"
        return f"{icon} {self.title()}{tail}"


class Alerts:
    def __init__(self, db: Database, settings: Settings, http: httpx.AsyncClient) -> None:
        self.db = db
        self.settings = settings
        self.http = http
        self.mailer = Mailer(settings)
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self.clock = time.monotonic

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.alert_interval_seconds)
            try:
                await self.report()
                await self.evaluate()
            except Exception as exc:  # a failed round must not stop the loop
                log.warning("alert evaluation failed", error=str(exc))

    async def report(self) -> None:
        """This process's recent server errors, for whichever process evaluates."""
        async with self.db.transaction() as session:
            observation = insert(OpsObservation).values(
                process=self.process, name="server_errors", value=float(recent_server_errors(self.clock()))
            )
            await session.execute(
                observation.on_conflict_do_update(
                    index_elements=[OpsObservation.process, OpsObservation.name],
                    set_={"value": observation.excluded.value, "observed_at": func.now()},
                )
            )

    async def signals(self, session: AsyncSession) -> list[Signal]:
        s = self.settings
        connection = driver(session)
        window = timedelta(seconds=max(ERROR_WINDOW_SECONDS, 2 * s.alert_interval_seconds))
        errors = (
            await session.execute(
                select(func.coalesce(func.sum(OpsObservation.value), 0)).where(
                    OpsObservation.name == "server_errors", OpsObservation.observed_at > func.now() - window
                )
            )
        ).scalar_one()
        found = [
            Signal(
                "server_errors",
                "server_errors",
                float(errors) >= s.alert_server_errors_per_minute,
                float(errors),
                f"{int(errors)} server errors (5xx) in the last minute",
            )
        ]
        for row in await connection.fetch("SELECT * FROM papo_alert_signals($1)", s.alert_window_minutes * 60.0):
            threshold = s.alert_ai_failures if row["rule"] == "ai_failures" else 1
            found.append(Signal(row["key"], row["rule"], row["value"] >= threshold, row["value"], row["summary"]))
        queues = await connection.fetch(OPERATIONAL_COUNTS_SQL)
        for row in queues:
            if row["metric"] == "queue_depth":
                firing = row["value"] >= s.alert_queue_backlog
                summary = f"{int(row['value'])} items waiting in queue {row['label']}"
            elif row["metric"] == "queue_oldest_seconds":
                firing = row["value"] >= s.alert_queue_age_seconds
                summary = f"the oldest item in queue {row['label']} has waited {int(row['value'])} s"
            elif row["metric"] == "queue_dead_letters":  # gave up after their last attempt: someone must look
                firing = row["value"] >= 1
                summary = f"{int(row['value'])} dead letters in queue {row['label']} (see `papo whatsapp dead-letters`)"
            else:
                continue
            found.append(
                Signal(f"queue:{row['metric']}:{row['label']}", "queue_backlog", firing, row["value"], summary)
            )
        return found

    async def evaluate(self) -> list[Notice]:
        """One round (if no other process is in one): compare signals with what was remembered,
        notify, remember. Returns what was sent."""
        async with self.db.transaction() as session:
            if not await driver(session).fetchval("SELECT pg_try_advisory_xact_lock($1)", ALERTS_LOCK):
                return []
            signals = {signal.key: signal for signal in await self.signals(session)}
            firing_before = await session.scalars(select(AlertState).where(AlertState.firing))
            remembered = {state.key: state for state in firing_before}
            now = datetime.now(UTC)
            repeat = timedelta(minutes=self.settings.alert_repeat_minutes)
            notices: list[Notice] = []
            for key, signal in signals.items():
                if not signal.firing:
                    continue
                state = remembered.get(key)
                if state is None:
                    notices.append(Notice(key, "firing", signal.summary, now))
                elif state.last_notified_at is None or now - state.last_notified_at >= repeat:
                    notices.append(Notice(key, "reminder", signal.summary, state.since))
            for key, state in remembered.items():
                if key not in signals or not signals[key].firing:
                    notices.append(Notice(key, "resolved", state.summary, state.since))
            sent = [notice for notice in notices if await self.notify(notice)]
            for notice in sent:
                if notice.kind == "resolved":
                    await session.execute(
                        update(AlertState)
                        .where(AlertState.key == notice.key)
                        .values(firing=False, updated_at=func.now())
                    )
                    continue
                signal = signals[notice.key]
                firing_state = insert(AlertState).values(
                    key=notice.key,
                    rule=signal.rule,
                    firing=True,
                    summary=signal.summary,
                    value=signal.value,
                    since=notice.since,
                    last_notified_at=func.now(),
                )
                await session.execute(
                    firing_state.on_conflict_do_update(
                        index_elements=[AlertState.key],
                        set_={
                            "firing": True,
                            "summary": firing_state.excluded.summary,
                            "value": firing_state.excluded.value,
                            "last_notified_at": func.now(),
                            "updated_at": func.now(),
                            # a reminder keeps when the alert started; one that fires again starts now
                            "since": case((AlertState.firing, AlertState.since), else_=firing_state.excluded.since),
                        },
                    )
                )
            return sent

    async def notify(self, notice: Notice) -> bool:
        """Send to every configured channel; True when at least one took it (else it is tried again
        next round). With no channel configured, the alert is only logged."""
        log.warning("alert", kind=notice.kind, key=notice.key, summary=notice.summary)
        channels = [
            (name, send)
            for name, send, configured in (
                ("webhook", self._post, bool(self.settings.alert_webhook_url)),
                ("email", self._mail, bool(self.settings.alert_email_to and self.settings.smtp_host)),
            )
            if configured
        ]
        if not channels:
            return True
        delivered = False
        for name, send in channels:
            try:
                await send(notice)
            except Exception as exc:  # one channel down must not stop the other
                log.warning("alert notification failed", channel=name, error=str(exc))
                continue
            ALERTS_SENT.labels(notice.key.split(":")[0], notice.kind, name).inc()
            delivered = True
        return delivered

    async def _post(self, notice: Notice) -> None:
        assert self.settings.alert_webhook_url is not None
        body = {"text": notice.text(), "papo": {"key": notice.key, "state": notice.kind, "summary": notice.summary}}
        response = await self.http.post(self.settings.alert_webhook_url, json=body, timeout=10.0)
        response.raise_for_status()

    async def _mail(self, notice: Notice) -> None:
        await self.mailer.send(
            list(self.settings.alert_email_to),
            notice.title(),
            f"{notice.text()}\n\nAlert key: {notice.key}\nServer: {self.process}\n",
        )
