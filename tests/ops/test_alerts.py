"""Alerts reach the operator once when trouble starts and once when it clears, by webhook (Slack
JSON) and e-mail (real SMTP), however many rounds the trouble lasts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from papo.db.engine import Database
from papo.ops.alerts import Alerts, Notice, record_server_error
from papo.settings import Settings
from papo.whatsapp.transports.base import SessionKey
from tests.fake_whatsapp import FakeTransport
from tests.support import Mailbox, Member, TenantHandle, WebhookReceiver, running_mailbox, wait_status


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with running_mailbox() as found:
        yield found


def alerting(app: FastAPI, db: Database, settings: Settings, receiver: WebhookReceiver, port: int) -> Alerts:
    quiet = 10**9  # only the rule under test may fire
    return Alerts(
        db,
        settings.model_copy(
            update={
                "alert_webhook_url": f"{receiver.url}/slack",
                "alert_email_to": ["ops@example.com"],
                "smtp_host": "127.0.0.1",
                "smtp_port": port,
                "smtp_starttls": False,
                "alert_server_errors_per_minute": 10,
                "alert_ai_failures": quiet,
                "alert_queue_backlog": quiet,
                "alert_queue_age_seconds": quiet,
            }
        ),
        app.state.papo.http,
    )


def about(notices: list[Notice], key: str) -> list[str]:
    return [notice.kind for notice in notices if notice.key == key]


async def test_a_number_going_down_alerts_once_then_resolves(
    app: FastAPI,
    db: Database,
    settings: Settings,
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    mailbox: tuple[Mailbox, int],
) -> None:
    _, admin, _, key = number
    box, port = mailbox
    receiver = WebhookReceiver()
    alerts = alerting(app, db, settings, receiver, port)
    alert_key = f"whatsapp:{key.session_id}"
    await alerts.evaluate()  # whatever else is already down is notified now, not below
    baseline_posts, baseline_mails = len(receiver.received), len(box.messages)

    await fake.crash(key)
    await wait_status(client, admin, str(key.session_id), "FAILED")
    assert about(await alerts.evaluate(), alert_key) == ["firing"]
    for _ in range(3):  # the outage goes on: nothing more is sent
        assert about(await alerts.evaluate(), alert_key) == []

    restarted = await client.post(f"/api/v1/whatsapp/sessions/{key.session_id}/restart", headers=admin.headers)
    assert restarted.status_code == 202
    await wait_status(client, admin, str(key.session_id), "WORKING")
    assert about(await alerts.evaluate(), alert_key) == ["resolved"]
    assert about(await alerts.evaluate(), alert_key) == []

    posts = [r.json() for r in receiver.received[baseline_posts:] if r.json()["papo"]["key"] == alert_key]
    assert [p["papo"]["state"] for p in posts] == ["firing", "resolved"]
    assert posts[0]["text"].startswith('🔴 [papo] FIRING: WhatsApp number "atendimento"')
    assert "transport crashed" in posts[0]["text"]
    assert posts[1]["text"].startswith("✅ [papo] RESOLVED")
    mails = [m for m in box.messages[baseline_mails:] if "atendimento" in m["Subject"]]
    assert [m["Subject"].split(":")[0] for m in mails] == ["[papo] FIRING", "[papo] RESOLVED"]
    assert mails[0]["To"] == "ops@example.com"


async def test_server_errors_summed_across_reports(
    app: FastAPI, db: Database, settings: Settings, mailbox: tuple[Mailbox, int]
) -> None:
    _, port = mailbox
    receiver = WebhookReceiver()
    alerts = alerting(app, db, settings, receiver, port)
    other_process = alerting(app, db, settings, receiver, port)
    other_process.process = f"elsewhere:{uuid.uuid4().hex[:6]}"
    await alerts.evaluate()
    for _ in range(6):
        record_server_error()
    await alerts.report()
    await other_process.report()  # the same six, as if another process had seen them too: 12 ≥ 10
    assert about(await alerts.evaluate(), "server_errors") == ["firing"]
    assert about(await other_process.evaluate(), "server_errors") == []  # one alert, whoever evaluates
    later = time.monotonic() + 120
    for process in (alerts, other_process):
        process.clock = lambda: later
        await process.report()
    assert about(await alerts.evaluate(), "server_errors") == ["resolved"]
    await asyncio.sleep(0)
    texts = [r.json()["text"] for r in receiver.received if r.json()["papo"]["key"] == "server_errors"]
    assert len(texts) == 2 and "12 server errors" in texts[0]
