"""Sentiment scored in the background and shown to staff; the admins' usage report."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from papo.auth.models import Role
from papo.insights.sentiment import SentimentScorer
from papo.whatsapp.transports.base import SessionKey
from tests.fake_whatsapp import FakeTransport
from tests.support import Member, TenantHandle, create_session, send

INBOX = "/api/v1/whatsapp/conversations"


@pytest.mark.parametrize(
    ("text", "language", "label"),
    [
        ("Estou muito insatisfeito, o atendimento foi péssimo", "pt", "negative"),
        ("Adorei! Muito obrigado pela ajuda, excelente", "pt", "positive"),
        ("Quero saber o horário da loja amanhã", "pt", "neutral"),
        ("This is terrible, I hate waiting this long", "en", "negative"),
        ("Thank you so much, that was great and very helpful", "en", "positive"),
    ],
)
def test_language_then_lexicon(text: str, language: str, label: str) -> None:
    scored = SentimentScorer().score(text)
    assert (scored.language, scored.label) == (language, label)
    assert -1 <= scored.score <= 1


def test_unclear_language_falls_back_to_the_default() -> None:
    assert SentimentScorer(default_language="en").language("👍") == "en"
    assert SentimentScorer(default_language="pt").language("👍") == "pt"


async def poll(fetch: Any, ready: Any, seconds: float = 10) -> Any:
    async with asyncio.timeout(seconds):
        while True:
            value = await fetch()
            if ready(value):
                return value
            await asyncio.sleep(0.05)


async def test_customers_mood_in_the_inbox(
    client: httpx.AsyncClient,
    number: tuple[TenantHandle, Member, Member, SessionKey],
    fake: FakeTransport,
    make_tenant: Any,
) -> None:
    _, _, agent, key = number
    await fake.customer_writes(key, "Meu pedido atrasou de novo, estou furioso, péssimo serviço", wa_id="5511977776666")
    await fake.customer_writes(key, "Thanks, you were great and very helpful!", wa_id="5511977776666")

    async def conversations() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = (await client.get(INBOX, headers=agent.headers)).json()
        return found

    listed = await poll(
        conversations, lambda rows: rows and rows[0]["sentiment"] and rows[0]["sentiment"]["scored"] == 2
    )
    mood = listed[0]["sentiment"]
    assert mood["last"] == "positive"
    messages = (await client.get(f"{INBOX}/{listed[0]['id']}/messages", headers=agent.headers)).json()
    by_text = {m["content"][:5]: m["sentiment"] for m in messages}
    assert by_text["Meu p"]["label"] == "negative" and by_text["Meu p"]["language"] == "pt"
    assert by_text["Thank"]["label"] == "positive" and by_text["Thank"]["language"] == "en"
    assert mood["average"] == pytest.approx((by_text["Meu p"]["score"] + by_text["Thank"]["score"]) / 2, abs=1e-3)

    # Another company's agent sees neither the conversation nor its scores.
    outsider = await (await make_tenant("Other")).member(Role.agent)
    assert (await client.get(INBOX, headers=outsider.headers)).json() == []
    assert (await client.get(f"{INBOX}/{listed[0]['id']}/messages", headers=outsider.headers)).status_code == 404


async def test_usage_summary_counts_this_tenant_only(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant("Usage")
    admin, alice, bob = await tenant.member(Role.admin), await tenant.member(), await tenant.member()
    for who, texts in (
        (alice, ["Que dia maravilhoso, obrigado!", "Quero saber o horário da loja amanhã"]),
        (bob, ["This is awful and broken"]),
    ):
        chat = await create_session(client, who)
        for text in texts:
            await send(client, who, chat["id"], text)
    noise = await (await make_tenant("Noise")).member()
    await send(client, noise, (await create_session(client, noise))["id"], "not counted here")

    assert (await client.get("/api/v1/usage/summary", headers=alice.headers)).status_code == 403

    async def summary() -> dict[str, Any]:
        response = await client.get("/api/v1/usage/summary", headers=admin.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def scored_three(body: dict[str, Any]) -> bool:
        mood = body["days"][-1]["sentiment"]
        return bool(mood["positive"] + mood["neutral"] + mood["negative"] == 3)

    body = await poll(summary, scored_three)
    today = body["days"][-1]
    assert today["day"] == datetime.now(UTC).date().isoformat()
    assert len(body["days"]) == 30
    assert today["messages"]["user"] == 3
    assert today["active_users"] == 2
    assert today["sessions_created"] == 2
    assert today["sentiment"] | {"average": None} == {"positive": 1, "neutral": 1, "negative": 1, "average": None}
    assert body["totals"] == {
        "messages": 3,
        "sessions_created": 2,
        "ai_tokens": 0,
        "estimated_cost_usd": 0.0,
        "active_users": 2,
    }
    bad = await client.get("/api/v1/usage/summary?from=2026-01-10&to=2026-01-01", headers=admin.headers)
    assert bad.status_code == 400
    too_long = await client.get("/api/v1/usage/summary?from=2020-01-01&to=2026-01-01", headers=admin.headers)
    assert too_long.status_code == 400


CHILD_OF_A_KILLED_SERVER = """
import asyncio, os
from papo.insights.sentiment import ChildProcessScorer, _scoring_pool
scores = asyncio.run(ChildProcessScorer("pt").score_many(["Adorei! Muito obrigado pela ajuda, excelente"]))
(child,) = [process.pid for process in _scoring_pool()._processes.values()]
print(scores[0].label, child, os.getpriority(os.PRIO_PROCESS, child), os.sched_getscheduler(child), flush=True)
os._exit(0)  # like SIGKILL: no clean-up runs
"""


def test_the_scoring_child_runs_below_its_server_and_ends_with_it() -> None:
    """Scoring runs in a child process (off the server's interpreter lock, at a lower priority);
    a server killed outright must not leave it behind."""
    import os
    import subprocess
    import sys
    import time

    server = subprocess.run(
        [sys.executable, "-c", CHILD_OF_A_KILLED_SERVER], capture_output=True, text=True, timeout=120, check=True
    )
    label, child, niceness, policy = server.stdout.split()
    assert label == "positive"
    assert int(niceness) == 19
    assert int(policy) == os.SCHED_IDLE  # runs only when no other process wants the core
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}"), "the scoring child outlived its server"
