"""A phone number belongs to one company (issue 13, item 3), attacked through the public API: number
squatting, webhooks for unknown numbers and of the wrong shape, deliveries that keep failing (dead
letters and replay), a legacy import naming two companies, and clean-up by a cross-site GET."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from papo.auth.models import Role
from papo.db.engine import Database, RlsContext, driver
from papo.ops.alerts import Alerts
from papo.settings import Settings
from papo.whatsapp.ingest import lane_of
from tests.cli.test_cli import papo
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.support import METRICS_TOKEN, FakeGraphApi, Member, TenantHandle, wait_status
from tests.support import WHATSAPP_SESSIONS as BASE
from tests.whatsapp.test_cloud import HOOK, INBOX, delivery, signed, text_message, worked_off

TAKEN = "this number is already connected to papo"
PROBLEM = "application/problem+json"


def new_number() -> str:
    return str(10**14 + secrets.randbelow(9 * 10**14))


def wamid() -> str:
    return "wamid.own-" + secrets.token_hex(8)


async def register(
    client: httpx.AsyncClient, admin: Member, number: str | None, token: str, name: str | None = None
) -> httpx.Response:
    return await client.post(
        BASE,
        json={
            "name": name or "n" + secrets.token_hex(3),
            "transport": "cloud",
            "config": {"phone_number_id": number, "access_token": token},
        },
        headers=admin.headers,
    )


async def owned_number(client: httpx.AsyncClient, admin: Member, number: str | None = None) -> tuple[str, str]:
    """A Cloud API number the Graph API accepted for the admin's company: (session id, number)."""
    number = number or new_number()
    created = await register(client, admin, number, FakeGraphApi.access_token)
    assert created.status_code == 201, created.text
    await wait_status(client, admin, created.json()["id"], "WORKING")
    return created.json()["id"], number


async def inbox_texts(client: httpx.AsyncClient, who: Member) -> list[str]:
    texts = []
    for conversation in (await client.get(INBOX, headers=who.headers)).json():
        messages = (await client.get(f"{INBOX}/{conversation['id']}/messages", headers=who.headers)).json()
        texts += [m["content"] for m in messages]
    return texts


@pytest.fixture
async def owner(database: ProvisionedDatabase) -> AsyncIterator[asyncpg.Connection]:
    """The database as its owner sees it (every company's rows), to check what was stored."""
    connection = await asyncpg.connect(plain_dsn(database.owner_url))
    yield connection
    await connection.close()


@pytest.fixture
async def two_companies(make_tenant: Any) -> tuple[TenantHandle, Member, TenantHandle, Member]:
    owner_company, squatter = await make_tenant("Dona"), await make_tenant("Invasora")
    return owner_company, await owner_company.member(Role.admin), squatter, await squatter.member(Role.admin)


class TestSquatting:
    async def test_a_refused_token_claims_nothing_and_the_owner_gets_its_number(
        self,
        client: httpx.AsyncClient,
        two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
        database: ProvisionedDatabase,
    ) -> None:
        _, a, _, b = two_companies
        number = new_number()
        squat = await register(client, b, number, "not-their-token")
        assert squat.status_code == 201  # nobody verified the number yet: a claim, not a connection
        refused = await wait_status(client, b, squat.json()["id"], "FAILED")
        assert "Invalid OAuth access token" in refused["status_reason"]

        mine = await register(client, a, number, FakeGraphApi.access_token)
        assert mine.status_code == 201, mine.text  # was a 500 (unique index on any active claim)
        await wait_status(client, a, mine.json()["id"], "WORKING")

        body = delivery(number, messages=[text_message(wamid(), "5511988887777", "pedido 42")])
        answer = await client.post(HOOK, content=body, headers=signed(body))
        assert answer.json() == {"received": 1}
        await worked_off(database)
        assert await inbox_texts(client, a) == ["pedido 42"]
        assert (await client.get(INBOX, headers=b.headers)).json() == []  # was delivered to the squatter

        for who in (b, a):  # the squatter trying again, and the owner adding its own number twice
            again = await register(client, who, number, FakeGraphApi.access_token)
            assert again.status_code == 409, again.text
            assert again.headers["content-type"] == PROBLEM
            assert again.json()["detail"] == TAKEN
        restarted = await client.post(f"{BASE}/{squat.json()['id']}/restart", headers=b.headers)
        assert restarted.status_code == 202
        await wait_status(client, b, squat.json()["id"], "FAILED")  # still refused, still receives nothing

    async def test_a_second_token_for_a_held_number_fails_its_session(
        self,
        client: httpx.AsyncClient,
        two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
        database: ProvisionedDatabase,
    ) -> None:
        """The squatter's row, unverified, later gets a token the Graph API accepts (say, a partner's):
        the number stays with the company that verified it first."""
        _, a, _, b = two_companies
        number = new_number()
        squat = await register(client, b, number, "wrong")
        await wait_status(client, b, squat.json()["id"], "FAILED")
        await owned_number(client, a, number)

        new_token = {"config": {"access_token": FakeGraphApi.access_token}}
        patched = await client.patch(f"{BASE}/{squat.json()['id']}", json=new_token, headers=b.headers)
        assert patched.status_code == 200  # a new token is checked again with the Graph API
        failed = await wait_status(client, b, squat.json()["id"], "FAILED")
        assert failed["status_reason"] == TAKEN

        body = delivery(number, messages=[text_message(wamid(), "5511977776666", "ainda da dona")])
        await client.post(HOOK, content=body, headers=signed(body))
        await worked_off(database)
        assert await inbox_texts(client, a) == ["ainda da dona"]
        assert (await client.get(INBOX, headers=b.headers)).json() == []

    async def test_moving_a_session_to_a_held_number_is_refused_and_a_move_needs_verifying(
        self,
        client: httpx.AsyncClient,
        two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
    ) -> None:
        _, a, _, b = two_companies
        _, held = await owned_number(client, a)
        b_session, old = await owned_number(client, b)
        moved = await client.patch(f"{BASE}/{b_session}", json={"config": {"phone_number_id": held}}, headers=b.headers)
        assert moved.status_code == 409
        assert moved.json()["detail"] == TAKEN

        fresh = new_number()
        moved = await client.patch(
            f"{BASE}/{b_session}", json={"config": {"phone_number_id": fresh}}, headers=b.headers
        )
        assert moved.status_code == 200
        await wait_status(client, b, b_session, "WORKING")  # the Graph API answered for the new number
        assert (
            await owner.fetchval("SELECT verified_number FROM whatsapp_sessions WHERE id = $1", uuid.UUID(b_session))
            == fresh
        )
        body = delivery(old, messages=[text_message(wamid(), "5511966665555", "para o número antigo")])
        assert (await client.post(HOOK, content=body, headers=signed(body))).json() == {"received": 0}

    async def test_bad_numbers_are_refused_clearly(
        self, client: httpx.AsyncClient, two_companies: tuple[TenantHandle, Member, TenantHandle, Member]
    ) -> None:
        _, a, _, _ = two_companies
        for number in ("", "abc", "0123", "12 34", None):
            answer = await register(client, a, number, FakeGraphApi.access_token)
            assert answer.status_code == 422, (number, answer.text)
            assert answer.json()["errors"][0]["field"] == "config.phone_number_id"

    async def test_the_route_is_the_verified_row_only_even_as_the_runtime_role(
        self,
        client: httpx.AsyncClient,
        two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
        app_role_connection: asyncpg.Connection,
    ) -> None:
        owner_company, a, _, b = two_companies
        number = new_number()
        squat = await register(client, b, number, "nope")
        await wait_status(client, b, squat.json()["id"], "FAILED")
        assert await app_role_connection.fetch("SELECT * FROM papo_whatsapp_route($1)", number) == []
        session_id, _ = await owned_number(client, a, number)
        routes = await app_role_connection.fetch("SELECT * FROM papo_whatsapp_route($1)", number)
        assert [(r["route_tenant_id"], r["route_session_id"]) for r in routes] == [
            (owner_company.id, uuid.UUID(session_id))
        ]
        # the runtime role cannot mark a row verified behind the Graph API's back for another number
        async with owner_company.db.transaction(RlsContext(owner_company.id, None, "service")) as session:
            with pytest.raises(Exception, match="ck_whatsapp_sessions_verified_number"):
                await driver(session).execute(
                    "UPDATE whatsapp_sessions SET verified_number = '999' WHERE id = $1", uuid.UUID(session_id)
                )


class TestWebhookInput:
    async def test_unknown_and_mixed_numbers(
        self,
        client: httpx.AsyncClient,
        two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
    ) -> None:
        _, a, _, _ = two_companies
        _, number = await owned_number(client, a)
        stranger, lost = new_number(), wamid()
        body = delivery(stranger, messages=[text_message(lost, "5511955554444", "alguém?")])
        answer = await client.post(HOOK, content=body, headers=signed(body))
        assert answer.status_code == 200
        assert answer.json() == {"received": 0}

        known = json.loads(delivery(number, messages=[text_message(wamid(), "5511944443333", "oi")]))
        unknown = json.loads(delivery(stranger, messages=[text_message(wamid(), "5511944443333", "perdido")]))
        mixed = {"object": "whatsapp_business_account", "entry": unknown["entry"] + known["entry"]}
        raw = json.dumps(mixed).encode()
        answer = await client.post(HOOK, content=raw, headers=signed(raw))
        assert answer.json() == {"received": 1}
        await worked_off(database)
        assert await inbox_texts(client, a) == ["oi"]
        assert await owner.fetchval("SELECT count(*) FROM messages WHERE external_id = $1", lost) == 0
        assert (
            await owner.fetchval(
                "SELECT count(*) FROM whatsapp_webhook_deliveries WHERE payload->'metadata'->>'phone_number_id' = $1",
                stranger,
            )
            == 0
        )

    async def test_signed_bodies_of_the_wrong_shape_never_fail_the_server(
        self,
        client: httpx.AsyncClient,
        two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
    ) -> None:
        _, a, _, _ = two_companies
        _, number = await owned_number(client, a)
        meta = {"display_phone_number": "5511400000000", "phone_number_id": number}
        good = {"from": "5511933332222", "id": "wamid.bad-good", "type": "text", "text": {"body": "ok"}}

        def wrap(value: Any) -> Any:
            return {"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"value": value}]}]}

        refused = {  # not a webhook delivery at all: 4xx
            "a list": [],
            "a string": "entry",
            "null": None,
            "entry an object": {"entry": {"changes": []}},
            "entry a string": {"entry": "x"},
        }
        ignored = {  # a delivery, but nothing in it papo can use: 200, nothing stored
            "metadata a string": wrap({"metadata": "x", "messages": [good]}),
            "metadata null": wrap({"metadata": None, "messages": [good]}),
            "phone_number_id a list": wrap({"metadata": {"phone_number_id": [number]}, "messages": [good]}),
            "phone_number_id an object": wrap({"metadata": {"phone_number_id": {"id": number}}, "messages": [good]}),
            "changes null": {"entry": [{"changes": None}]},
            "changes an object": {"entry": [{"changes": {"value": {"metadata": meta, "messages": [good]}}}]},
            "changes a string": {"entry": [{"changes": "x"}]},
            "entry items not objects": {"entry": [1, "x", None, []]},
            "value a string": wrap("x"),
            "value null": wrap(None),
            "messages an object": wrap({"metadata": meta, "messages": good}),
            "messages a string": wrap({"metadata": meta, "messages": "x"}),
            "message not an object": wrap({"metadata": meta, "messages": ["x", 1, None]}),
            "message id an object": wrap({"metadata": meta, "messages": [{**good, "id": {"x": 1}}]}),
            "message from a list": wrap({"metadata": meta, "messages": [{**good, "from": ["1"]}]}),
            "text a string": wrap({"metadata": meta, "messages": [{**good, "id": "wamid.bad-t", "text": "ok"}]}),
            "text body a number": wrap(
                {"metadata": meta, "messages": [{**good, "id": "wamid.bad-n", "text": {"body": 5}}]}
            ),
            "statuses an object": wrap({"metadata": meta, "statuses": {"id": "x", "status": "read"}}),
            "status fields wrong": wrap({"metadata": meta, "statuses": [{"id": [], "status": {}}]}),
            "id too long": wrap({"metadata": meta, "messages": [{**good, "id": "wamid." + "x" * 1000}]}),
        }
        for label, payload in {**refused, **ignored}.items():
            raw = json.dumps(payload).encode()
            answer = await client.post(HOOK, content=raw, headers=signed(raw))
            assert answer.status_code < 500, (label, answer.status_code, answer.text)
            if label in refused:
                assert 400 <= answer.status_code < 500, label
                assert answer.headers["content-type"] == PROBLEM
            else:
                assert answer.status_code == 200, (label, answer.text)
                assert answer.json() == {"received": 0}, label
        for raw in (b'{"entry": ["\xff\xfe"]}', b'{"entry": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"):
            answer = await client.post(HOOK, content=raw, headers=signed(raw))  # not UTF-8; deeper than the parser goes
            assert answer.status_code == 400, answer.text
        await worked_off(database)
        assert await inbox_texts(client, a) == []
        assert await owner.fetchval("SELECT count(*) FROM messages WHERE external_id LIKE 'wamid.bad-%'") == 0

        # odd but usable: a numeric phone_number_id, text PostgreSQL cannot hold as it came, a contact
        # whose profile is not an object, a kind named like a field: stored cleanly, once
        odd = wrap(
            {
                "metadata": {"phone_number_id": int(number)},
                "contacts": [{"wa_id": "5511933332222", "profile": "x"}],
                "messages": [
                    {**good, "id": "wamid.odd-1", "text": {"body": "nul\u0000 e \ud800 sozinho"}},
                    {"from": "5511933332222", "id": "wamid.odd-2", "type": "id", "id_": {"caption": 1}},
                ],
                "statuses": [{"id": "wamid.none", "status": "read"}, "x"],
            }
        )
        raw = json.dumps(odd).encode()
        answer = await client.post(HOOK, content=raw, headers=signed(raw))
        assert answer.json() == {"received": 1}
        await worked_off(database)
        assert await inbox_texts(client, a) == ["nul e \ufffd sozinho", "[unsupported message: unknown]"]


async def test_webhooks_arriving_together_are_queued_together_and_each_answered_for_its_own(
    client: httpx.AsyncClient,
    two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
    database: ProvisionedDatabase,
    owner: asyncpg.Connection,
) -> None:
    """Group commit: webhooks that arrive while a queueing statement runs are queued by the next one
    together; each is answered for its own changes, after the statement holding them committed."""
    _, a, _, _ = two_companies
    _, number = await owned_number(client, a)
    stranger = new_number()  # no company verified it: its changes are answered, not queued
    # which transaction queued each delivery, seen from a trigger of the test's own
    log_table = "queued_by_" + secrets.token_hex(4)
    await owner.execute(f"CREATE TABLE {log_table} (delivery bigint, tx bigint)")
    noting = f"INSERT INTO {log_table} VALUES (NEW.id, txid_current())"
    try:
        async with trigger_of_the_test(owner, "AFTER INSERT ON whatsapp_webhook_deliveries", noting):
            bodies = [
                delivery(number if n % 2 == 0 else stranger, messages=[text_message(wamid(), new_customer(), f"m{n}")])
                for n in range(20)
            ]
            answers = await asyncio.gather(*(client.post(HOOK, content=body, headers=signed(body)) for body in bodies))
            assert [answer.json() for answer in answers] == [{"received": 1}, {"received": 0}] * 10
            deliveries, transactions = await owner.fetchrow(f"SELECT count(*), count(DISTINCT tx) FROM {log_table}")
    finally:
        await owner.execute(f"DROP TABLE {log_table}")
    assert deliveries == 10
    assert transactions < deliveries  # some were queued together
    await worked_off(database)
    assert sorted(await inbox_texts(client, a)) == sorted(f"m{n}" for n in range(0, 20, 2))


async def test_a_webhook_the_database_refuses_does_not_take_down_the_others_queued_with_it(
    app: FastAPI,
    client: httpx.AsyncClient,
    two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
    database: ProvisionedDatabase,
    owner: asyncpg.Connection,
) -> None:
    """When the statement queueing a group fails, each of its webhooks is queued on its own: only the
    one the database refuses is answered with an error (and delivered again by Meta)."""
    _, a, _, _ = two_companies
    _, number = await owned_number(client, a)
    refusing = "IF NEW.payload::text LIKE '%veneno%' THEN RAISE EXCEPTION 'delivery refused by the test'; END IF"
    texts = [f"m{n}" if n != 5 else "veneno" for n in range(12)]
    bodies = [delivery(number, messages=[text_message(wamid(), new_customer(), text)]) for text in texts]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)  # a 500 is the answer under test
    async with (
        trigger_of_the_test(owner, "BEFORE INSERT ON whatsapp_webhook_deliveries", refusing),
        httpx.AsyncClient(transport=transport, base_url="http://papo.test") as meta,
    ):
        answers = await asyncio.gather(*(meta.post(HOOK, content=body, headers=signed(body)) for body in bodies))
    assert [answer.status_code for answer in answers] == [200] * 5 + [500] + [200] * 6
    assert answers[5].headers["content-type"] == PROBLEM
    await worked_off(database)
    assert sorted(await inbox_texts(client, a)) == sorted(text for text in texts if text != "veneno")


async def test_two_numbers_with_the_same_customers_are_taken_in_side_by_side_without_deadlock(
    client: httpx.AsyncClient,
    two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
    database: ProvisionedDatabase,
    owner: asyncpg.Connection,
) -> None:
    """Two customers write to two numbers of one company, in opposite orders; both numbers' lanes
    run at once and share the customers' contacts. Each transaction locks them in the same order
    (by sender), so neither waits for the other in a cycle: PostgreSQL reports no deadlock."""
    _, a, _, _ = two_companies
    (_, first), (_, second) = await owned_number(client, a), await owned_number(client, a)
    one = new_customer()
    other = next(c for c in iter(new_customer, None) if lane_of(c) == lane_of(one))  # the same lane
    arrivals = [(first, one), (second, other), (first, other), (second, one)] * 3
    body = one_webhook([(number, who, f"{n}") for n, (number, who) in enumerate(arrivals)])
    deadlocks = "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
    before = await owner.fetchval(deadlocks)
    assert (await client.post(HOOK, content=body, headers=signed(body))).json() == {"received": len(arrivals)}
    await worked_off(database)
    await owner.execute("SELECT pg_stat_force_next_flush()")
    assert await owner.fetchval(deadlocks) == before
    assert sorted(await inbox_texts(client, a), key=int) == [str(n) for n in range(len(arrivals))]


@contextlib.asynccontextmanager
async def trigger_of_the_test(owner: asyncpg.Connection, event: str, body: str) -> AsyncIterator[None]:
    """A row trigger of the test's own until the block ends: `event` is "BEFORE INSERT ON <table>"
    and the like, `body` PL/pgSQL run for each row (as the owner) before RETURN NEW."""
    name = "test_" + secrets.token_hex(4)
    table = event.rpartition(" ON ")[2]
    await owner.execute(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$ BEGIN "
        f"{body}; RETURN NEW; END $$; "
        f"CREATE TRIGGER {name} {event} FOR EACH ROW EXECUTE FUNCTION {name}()"
    )
    try:
        yield
    finally:
        await owner.execute(f"DROP TRIGGER {name} ON {table}; DROP FUNCTION {name}()")


def refused_by_the_database(owner: asyncpg.Connection, customer: str) -> AbstractAsyncContextManager[None]:
    """The database refuses to store this customer (a fault past the webhook, where retrying cannot
    help) until the block ends."""
    refusing = f"IF NEW.wa_id = '{customer}' THEN RAISE EXCEPTION 'contact refused by the test'; END IF"
    return trigger_of_the_test(owner, "BEFORE INSERT ON contacts", refusing)


def one_webhook(messages: list[tuple[str, str, str]]) -> bytes:
    """One signed-to-be delivery holding a change per (number, customer, text), in that order: each
    change is queued as a delivery of its own, all in one statement."""
    changes = [
        json.loads(delivery(number, messages=[text_message(wamid(), who, text)]))["entry"][0]["changes"][0]
        for number, who, text in messages
    ]
    return json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": changes}]}).encode()


def new_customer() -> str:
    return "55119" + str(secrets.randbelow(10**8)).zfill(8)


async def dead_letters_of(owner: asyncpg.Connection, customer: str, count: int, hub: Any) -> list[asyncpg.Record]:
    """Once there are `count` of them: the customer's dead letters, oldest first."""
    async with asyncio.timeout(60):  # a stall guard, not a speed check
        while True:
            dead = await owner.fetch(
                "SELECT id, attempts, last_error FROM whatsapp_webhook_deliveries "
                "WHERE dead_at IS NOT NULL AND payload->'messages'->0->>'from' = $1 ORDER BY id",
                customer,
            )
            if len(dead) >= count:
                return dead
            hub.ingest.wake()  # a retry is due after 0.05 s; the worker polls only every 2 s
            await asyncio.sleep(0.05)


QUICK_RETRIES = {"whatsapp_webhook_max_attempts": 3, "whatsapp_webhook_retry_seconds": 0.05}


class TestDeadLetters:
    async def test_a_failing_delivery_stops_becomes_a_dead_letter_and_replays(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
        settings: Settings,
        db: Database,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        _, a, _, _ = two_companies
        _, number = await owned_number(client, a)
        hub = app.state.papo.whatsapp
        monkeypatch.setattr(hub.ingest, "settings", hub.ingest.settings.model_copy(update=QUICK_RETRIES))
        customer = new_customer()
        async with refused_by_the_database(owner, customer):
            body = delivery(number, messages=[text_message(wamid(), customer, "não vai passar")])
            assert (await client.post(HOOK, content=body, headers=signed(body))).json() == {"received": 1}
            [dead] = await dead_letters_of(owner, customer, 1, hub)
            assert dead["attempts"] == 3
            assert "contact refused by the test" in dead["last_error"]
            for _ in range(3):  # dead letters are not claimed again
                hub.ingest.wake()
                await asyncio.sleep(0.2)
            attempts = await owner.fetchval(
                "SELECT attempts FROM whatsapp_webhook_deliveries WHERE id = $1", dead["id"]
            )
            assert attempts == 3

            scrape = (await client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})).text
            series = 'papo_queue_dead_letters{queue="whatsapp_webhooks"}'
            line = next(x for x in scrape.splitlines() if x.startswith(series))
            assert float(line.rpartition(" ")[2]) >= 1
            async with db.transaction() as session:
                signals = await Alerts(db, settings, app.state.papo.http).signals(session)
            assert next(x for x in signals if x.key == "queue:queue_dead_letters:whatsapp_webhooks").firing

            listed = papo(settings, "whatsapp", "dead-letters")
            assert re.search(rf"^{dead['id']}\t.*3 attempts.*contact refused by the test", listed.stdout, re.M)
            letters = json.loads(papo(settings, "whatsapp", "dead-letters", "--json").stdout)["dead_letters"]
            assert dead["id"] in [letter["id"] for letter in letters]
            assert papo(settings, "whatsapp", "replay", check=False).returncode == 1  # an id or --all
        assert papo(settings, "whatsapp", "replay", str(dead["id"])).stdout.strip() == "1"
        await worked_off(database)
        assert await inbox_texts(client, a) == ["não vai passar"]

    async def test_a_batch_with_a_failing_delivery_stores_the_others_once_in_their_order(
        self,
        app: FastAPI,
        client: httpx.AsyncClient,
        two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
        database: ProvisionedDatabase,
        owner: asyncpg.Connection,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Deliveries of a sender's lane are stored several to a transaction. When one of them fails,
        the transaction stores none, and each is tried on its own: the others are stored once, in
        the order they came, and only the one at fault waits for another attempt."""
        _, a, _, _ = two_companies
        _, number = await owned_number(client, a)
        hub = app.state.papo.whatsapp
        monkeypatch.setattr(hub.ingest, "settings", hub.ingest.settings.model_copy(update=QUICK_RETRIES))
        customer = new_customer()
        refused = next(c for c in iter(new_customer, None) if lane_of(c) == lane_of(customer))  # the same lane
        words = ["um", "dois", "três", "quatro", "cinco"]
        arrivals = [(customer, words[0]), (customer, words[1]), (refused, "recusada"), (customer, words[2]),
                    (refused, "recusada também"), (customer, words[3]), (customer, words[4])]  # fmt: skip
        body = one_webhook([(number, who, text) for who, text in arrivals])  # claimed together, in one lane
        async with refused_by_the_database(owner, refused):
            assert (await client.post(HOOK, content=body, headers=signed(body))).json() == {"received": len(arrivals)}
            dead = await dead_letters_of(owner, refused, 2, hub)
        assert [letter["attempts"] for letter in dead] == [3, 3]
        await worked_off(database)
        assert await inbox_texts(client, a) == words
        stored = await owner.fetchval("SELECT count(*) FROM messages WHERE metadata->>'wa_from' = $1", customer)
        assert stored == len(words)

    async def test_operator_functions_are_not_the_runtime_roles(self, app_role_connection: asyncpg.Connection) -> None:
        for call in (
            "SELECT * FROM papo_operator_whatsapp_dead_letters()",
            "SELECT papo_operator_whatsapp_replay(NULL)",
            "SELECT * FROM papo_operator_tenants_named('x')",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app_role_connection.fetch(call)


class TestLegacyImport:
    async def test_entries_of_two_companies_land_each_in_its_own(
        self,
        client: httpx.AsyncClient,
        two_companies: tuple[TenantHandle, Member, TenantHandle, Member],
        owner: asyncpg.Connection,
        settings: Settings,
        tmp_path: Path,
    ) -> None:
        first, a, second, b = two_companies
        first_name = await owner.fetchval("SELECT name FROM tenants WHERE id = $1", first.id)
        legacy = tmp_path / "sessions.json"
        legacy.write_text(
            json.dumps(
                [
                    {"name": "a-vendas", "companyId": str(first.id), "phoneNumber": "+5511900000001"},
                    {"name": "a-suporte", "companyId": first_name.upper()},  # by name, any case
                    {"name": "b-vendas", "companyId": str(second.id), "phoneNumber": "+5511900000002"},
                    {"name": "fantasma", "companyId": "cmp_" + secrets.token_hex(4)},
                    {"name": "estranha", "companyId": {"id": str(first.id)}},
                    {"name": "sem-empresa"},
                ]
            )
        )
        into_a = json.loads(
            papo(settings, "whatsapp", "import-sessions", str(legacy), "--tenant", str(first.id), "--json").stdout
        )
        assert into_a["imported"] == ["a-vendas", "a-suporte"]
        reasons = {item["entry"]: item["reason"] for item in into_a["skipped"]}
        assert set(reasons) == {"b-vendas", "fantasma", "estranha", "sem-empresa"}
        assert "another company" in reasons["b-vendas"] and str(second.id) in reasons["b-vendas"]
        assert reasons["fantasma"].startswith("unknown companyId")
        assert reasons["estranha"] == "companyId is not an id"
        assert "no companyId" in reasons["sem-empresa"]

        into_b = papo(settings, "whatsapp", "import-sessions", str(legacy), "--tenant", str(second.id))
        assert into_b.stdout.splitlines()[0] == "imported b-vendas"
        assert "skipped a-vendas: companyId" in into_b.stdout

        in_a = (await client.get(BASE, headers=a.headers)).json()
        assert sorted(s["name"] for s in in_a) == ["a-suporte", "a-vendas"]
        assert [s["name"] for s in (await client.get(BASE, headers=b.headers)).json()] == ["b-vendas"]


class TestNoStateChangeOnGet:
    async def test_cleanup_is_post_only_with_csrf_for_cookies(
        self, app: FastAPI, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant = await make_tenant("Limpeza")
        admin = await tenant.member(Role.admin)
        idle = (await client.post(BASE, json={"name": "parada", "transport": "fake"}, headers=admin.headers)).json()
        await client.post(f"{BASE}/{idle['id']}/stop", headers=admin.headers)
        await wait_status(client, admin, idle["id"], "STOPPED")
        async with tenant.db.transaction(RlsContext(tenant.id, None, "service")) as session:
            await driver(session).execute(
                "UPDATE whatsapp_sessions SET created_at = now() - interval '90 days', last_seen = NULL WHERE id = $1",
                uuid.UUID(idle["id"]),
            )

        async def still_active() -> bool:
            return bool((await client.get(f"{BASE}/{idle['id']}", headers=admin.headers)).json()["is_active"])

        paths = ("/session/cleanup", f"{BASE}/cleanup")
        for path in paths:
            for headers in (admin.headers, {}):
                answer = await client.get(path, headers=headers)
                assert answer.status_code == 405, (path, answer.status_code)
                assert answer.headers["allow"] == "POST"
                assert answer.headers["content-type"] == PROBLEM
        assert await still_active()

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as browser:
            page = await browser.get("/login")
            found = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
            assert found is not None
            token = found.group(1)
            signed_in = await browser.post(
                "/login", data={"email": admin.email, "password": admin.password, "csrf_token": token, "next": "/"}
            )
            assert signed_in.status_code == 303, signed_in.text
            for path in paths:  # what a page on another site can make the browser send: the cookie alone
                assert (await browser.get(path)).status_code == 405
                forged = await browser.post(path)
                assert forged.status_code == 403, (path, forged.status_code)
                assert forged.headers["content-type"] == PROBLEM
            assert await still_active()
            done = await browser.post("/session/cleanup", headers={"X-CSRF-Token": token})
            assert done.status_code == 200
            assert done.json()["deactivated"] == 1
        assert not await still_active()
