"""Customers' media through the Cloud API: signed webhook deliveries shaped like Meta's, the media
fetched from a fake Graph API over real HTTP (media id, then its URL, with the number's token),
kept in the blob store and served only to those who may see the message."""

from __future__ import annotations

import asyncio
import secrets
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from papo.app import app_state_of
from papo.auth.models import Role
from papo.whatsapp.transports.cloud import CloudTransport
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.support import FakeGraphApi, Member, TenantHandle
from tests.whatsapp.test_cloud import HOOK, INBOX, cloud_number, delivery, signed, worked_off

__all__ = ["cloud_number"]  # the fixture, shared with the Cloud API's own tests

PNG = b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(3000)
OGG = b"OggS" + b"\x00" * 24 + secrets.token_bytes(5000)
PDF = b"%PDF-1.7\n" + secrets.token_bytes(2000)
ATTACHMENTS = "/api/v1/attachments"


def media_message(wamid: str, sender: str, kind: str, media_id: str, **fields: Any) -> dict[str, Any]:
    return {"from": sender, "id": wamid, "timestamp": "1760000001", "type": kind, kind: {"id": media_id, **fields}}


async def deliver(client: httpx.AsyncClient, database: ProvisionedDatabase, number: str, *messages: Any) -> None:
    body = delivery(number, contacts=[{"profile": {"name": "Ana"}, "wa_id": "5511988887777"}], messages=list(messages))
    assert (await client.post(HOOK, content=body, headers=signed(body))).status_code == 200
    await worked_off(database)


async def conversation_messages(client: httpx.AsyncClient, staff: Member) -> list[dict[str, Any]]:
    conversations = (await client.get(INBOX, headers=staff.headers)).json()
    assert len(conversations) == 1
    return list((await client.get(f"{INBOX}/{conversations[0]['id']}/messages", headers=staff.headers)).json())


async def settled(client: httpx.AsyncClient, staff: Member, count: int) -> list[dict[str, Any]]:
    """The conversation's attachments once none is being fetched any more."""
    found: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(15):
            while True:
                found = [a for m in await conversation_messages(client, staff) for a in m["attachments"]]
                if len(found) == count and all(a["state"] != "pending" for a in found):
                    return found
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"still fetching: {found}") from None


def new_media(graph_api: FakeGraphApi, body: bytes, mime_type: str) -> str:
    media_id = str(secrets.randbelow(10**15))
    graph_api.media[media_id] = (body, mime_type)
    return media_id


async def test_photo_voice_note_document_location_and_contacts_come_in(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    graph_api: FakeGraphApi,
    database: ProvisionedDatabase,
) -> None:
    tenant, admin, _, number = cloud_number
    photo, voice, pdf = (
        new_media(graph_api, PNG, "image/png"),
        new_media(graph_api, OGG, "audio/ogg; codecs=opus"),
        new_media(graph_api, PDF, "application/pdf"),
    )
    sender = "5511988887777"
    await deliver(
        client,
        database,
        number,
        media_message("wamid.photo", sender, "image", photo, caption="meu comprovante", mime_type="image/png"),
        media_message("wamid.voice", sender, "audio", voice, mime_type="audio/ogg; codecs=opus", voice=True),
        media_message("wamid.pdf", sender, "document", pdf, filename="boleto.pdf", mime_type="application/pdf"),
        {"from": sender, "id": "wamid.where", "timestamp": "1760000002", "type": "location",
         "location": {"latitude": -23.5505, "longitude": -46.6333, "name": "Loja Centro", "address": "Praça da Sé"}},
        {"from": sender, "id": "wamid.card", "timestamp": "1760000003", "type": "contacts",
         "contacts": [{"name": {"formatted_name": "Bruno Lima", "first_name": "Bruno"},
                       "phones": [{"phone": "+55 11 97777-6666", "wa_id": "5511977776666", "type": "CELL"}]}]},
    )  # fmt: skip
    attachments = await settled(client, admin, 5)
    by_kind = {a["kind"]: a for a in attachments}
    assert set(by_kind) == {"image", "voice", "document", "location", "contacts"}
    assert all(a["state"] == "stored" for a in attachments), attachments
    messages = await conversation_messages(client, admin)
    assert messages[0]["content"] == "meu comprovante"  # the caption is the message's text
    assert by_kind["location"]["data"] == {
        "latitude": -23.5505, "longitude": -46.6333, "name": "Loja Centro", "address": "Praça da Sé"
    }  # fmt: skip
    assert by_kind["contacts"]["data"]["cards"][0]["name"] == "Bruno Lima"
    assert by_kind["contacts"]["data"]["cards"][0]["phones"][0]["wa_id"] == "5511977776666"

    image = by_kind["image"]
    assert (image["mime_type"], image["size"]) == ("image/png", len(PNG))
    served = await client.get(image["url"], headers=admin.headers)
    assert served.status_code == 200
    assert served.content == PNG
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    assert served.headers["content-disposition"].startswith("inline")

    document = by_kind["document"]
    assert document["file_name"] == "boleto.pdf"
    served = await client.get(document["url"], headers=admin.headers)
    assert served.content == PDF
    assert served.headers["content-disposition"] == "attachment; filename*=UTF-8''boleto.pdf"
    assert served.headers["content-type"] == "application/octet-stream"

    voice_note = by_kind["voice"]
    assert voice_note["mime_type"] == "audio/ogg"
    part = await client.get(voice_note["url"], headers=admin.headers | {"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == OGG[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(OGG)}"
    tail = await client.get(voice_note["url"], headers=admin.headers | {"Range": "bytes=-10"})
    assert tail.content == OGG[-10:]
    beyond = await client.get(voice_note["url"], headers=admin.headers | {"Range": f"bytes={len(OGG)}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(OGG)}"
    assert beyond.headers["content-type"] == "application/problem+json"

    # the staff of the company see it; a member who is not staff, and another company, do not
    outsider = await tenant.member(Role.member)
    assert (await client.get(image["url"], headers=outsider.headers)).status_code == 404
    assert (await client.get(f"{ATTACHMENTS}/{image['id']}", headers=outsider.headers)).status_code == 404
    agent = await tenant.member(Role.agent)
    assert (await client.get(image["url"], headers=agent.headers)).status_code == 200


async def test_other_tenants_cannot_reach_media(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    graph_api: FakeGraphApi,
    database: ProvisionedDatabase,
    make_tenant: Any,
) -> None:
    _, admin, _, number = cloud_number
    await deliver(
        client,
        database,
        number,
        media_message("wamid.p2", "5511988887777", "image", new_media(graph_api, PNG, "image/png")),
    )
    (image,) = await settled(client, admin, 1)
    other = await (await make_tenant("Other")).member(Role.owner)
    for path in (image["url"], f"{ATTACHMENTS}/{image['id']}", f"{ATTACHMENTS}/{uuid.uuid4()}/content"):
        answer = await client.get(path, headers=other.headers)
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"
    assert (await client.get(image["url"])).status_code == 401


async def test_bad_media_is_a_clear_state_and_the_conversation_flows(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    graph_api: FakeGraphApi,
    database: ProvisionedDatabase,
    app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tenant, admin, _, number = cloud_number
    media = app_state_of(app).media
    monkeypatch.setattr(media, "settings", media.settings.model_copy(update={"media_max_bytes": 10_000}))
    sender = "5511988887777"
    html = new_media(graph_api, b"<html><script>alert(1)</script></html>", "image/jpeg")  # lies
    empty = new_media(graph_api, b"", "application/pdf")
    huge = new_media(graph_api, PDF * 10, "application/pdf")
    await deliver(
        client,
        database,
        number,
        media_message("wamid.lie", sender, "image", html, mime_type="image/jpeg"),
        media_message("wamid.empty", sender, "document", empty, filename="vazio.pdf"),
        media_message("wamid.huge", sender, "document", huge, filename="grande.pdf"),
        {"from": sender, "id": "wamid.text", "timestamp": "1760000009", "type": "text", "text": {"body": "e aí?"}},
    )
    attachments = await settled(client, admin, 3)
    assert [(a["state"], a["url"]) for a in attachments] == [("rejected", None)] * 3
    assert [a["error"] for a in attachments] == [
        "the file is not the image/jpeg it claims to be",
        "the file is empty",
        "the file is larger than 9.8 KB",
    ]
    assert (await conversation_messages(client, admin))[-1]["content"] == "e aí?"
    kept = app_state_of(app).settings.data_dir / "blobs" / "media" / tenant.id.hex
    assert not kept.exists() or list(kept.iterdir()) == []  # nothing refused is kept, not even in part


async def test_a_failing_download_retries_then_gives_up(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    graph_api: FakeGraphApi,
    database: ProvisionedDatabase,
    app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, admin, _, number = cloud_number
    media = app_state_of(app).media
    update = {"media_retry_seconds": 0.3, "media_max_attempts": 3}
    monkeypatch.setattr(media, "settings", media.settings.model_copy(update=update))
    flaky, gone = new_media(graph_api, PNG, "image/png"), new_media(graph_api, PNG, "image/png")
    graph_api.failing_media |= {flaky, gone}
    await deliver(
        client,
        database,
        number,
        media_message("wamid.flaky", "5511988887777", "image", flaky),
        media_message("wamid.gone", "5511988887777", "image", gone),
    )
    async with asyncio.timeout(10):
        while True:  # the message is there at once; its media says it is unavailable for now
            found = [a for m in await conversation_messages(client, admin) for a in m["attachments"]]
            if len(found) == 2 and all((a["error"] or "").startswith("media unavailable") for a in found):
                break
            await asyncio.sleep(0.05)
    assert [a["state"] for a in found] == ["pending", "pending"]
    graph_api.failing_media.discard(flaky)  # WhatsApp answers again
    flaky_row, gone_row = await settled(client, admin, 2)
    assert (flaky_row["state"], flaky_row["error"]) == ("stored", None)
    assert (await client.get(flaky_row["url"], headers=admin.headers)).content == PNG
    assert gone_row["state"] == "unavailable"
    assert "500" in gone_row["error"]


async def test_files_go_with_their_messages(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    graph_api: FakeGraphApi,
    database: ProvisionedDatabase,
    app: FastAPI,
) -> None:
    tenant, admin, _, number = cloud_number
    await deliver(
        client,
        database,
        number,
        media_message("wamid.bye", "5511988887777", "image", new_media(graph_api, PNG, "image/png")),
    )
    (image,) = await settled(client, admin, 1)
    path = app_state_of(app).settings.data_dir / "blobs" / "media" / tenant.id.hex / uuid.UUID(image["id"]).hex
    assert path.read_bytes() == PNG
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:  # retention or a purge removes the conversation: its messages, attachments, then the file
        await owner.execute("DELETE FROM chat_sessions WHERE tenant_id = $1 AND channel = 'whatsapp'", tenant.id)
        assert await owner.fetchval("SELECT count(*) FROM blob_deletions") >= 1
    finally:
        await owner.close()
    async with asyncio.timeout(10):
        while path.exists():  # noqa: ASYNC110  (the file is the thing watched)
            await asyncio.sleep(0.2)


async def test_the_bot_tells_a_customer_who_sends_only_a_file_and_hands_over(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    graph_api: FakeGraphApi,
    database: ProvisionedDatabase,
    settings: Any,
) -> None:
    _, admin, session_id, number = cloud_number
    assistant = await client.post("/api/v1/assistants", json={"name": "Bot", "model": "demo"}, headers=admin.headers)
    patched = await client.patch(
        f"/api/v1/whatsapp/sessions/{session_id}", json={"assistant_id": assistant.json()["id"]}, headers=admin.headers
    )
    assert patched.status_code == 200, patched.text
    sent_before = len(graph_api.sent)
    voice = new_media(graph_api, OGG, "audio/ogg")
    await deliver(client, database, number, media_message("wamid.v9", "5511988887777", "audio", voice, voice=True))
    async with asyncio.timeout(10):
        while not [s for s in graph_api.sent[sent_before:] if s["to"] == "5511988887777"]:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    (notice,) = [s for s in graph_api.sent[sent_before:] if s["to"] == "5511988887777"]
    assert notice["text"] == {"body": settings.whatsapp_text_only_notice}
    (conversation,) = (await client.get(INBOX, headers=admin.headers)).json()
    assert (conversation["ticket_status"], conversation["bot_enabled"]) == ("pending", False)  # a person's turn
    (voice_note,) = await settled(client, admin, 1)
    assert voice_note["state"] == "stored"  # and the person can play it


async def test_a_company_over_its_quota_keeps_the_message_not_the_file(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    graph_api: FakeGraphApi,
    database: ProvisionedDatabase,
    app: FastAPI,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, admin, _, number = cloud_number
    media = app_state_of(app).media
    monkeypatch.setattr(media, "settings", media.settings.model_copy(update={"media_quota_bytes": len(PNG) + 100}))
    first, second = new_media(graph_api, PNG, "image/png"), new_media(graph_api, PNG, "image/png")
    await deliver(client, database, number, media_message("wamid.q1", "5511988887777", "image", first))
    await settled(client, admin, 1)
    await deliver(client, database, number, media_message("wamid.q2", "5511988887777", "image", second))
    kept, refused = await settled(client, admin, 2)
    assert kept["state"] == "stored"
    assert (refused["state"], refused["error"]) == ("rejected", "the company's media storage is full")


async def test_an_agent_sends_a_pdf_and_a_photo_checked_against_whatsapps_limits(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    graph_api: FakeGraphApi,
    database: ProvisionedDatabase,
    make_tenant: Any,
    settings: Any,
) -> None:
    tenant, _, _, number = cloud_number
    agent = await tenant.member(Role.agent)
    await deliver(client, database, number, {"from": "5511988887777", "id": "wamid.ask", "timestamp": "1",
                                              "type": "text", "text": {"body": "manda o boleto?"}})  # fmt: skip
    (conversation,) = (await client.get(INBOX, headers=agent.headers)).json()
    url = f"{INBOX}/{conversation['id']}/attachments"
    sent = await client.post(
        url,
        files={"file": ("boleto de março.pdf", PDF, "application/pdf")},
        data={"caption": "segue o boleto"},
        headers=agent.headers,
    )
    assert sent.status_code == 201, sent.text
    message = sent.json()
    (attachment,) = message["attachments"]
    assert (attachment["kind"], attachment["state"], attachment["size"]) == ("document", "stored", len(PDF))
    assert attachment["file_name"] == "boleto de março.pdf"
    assert message["content"] == "segue o boleto"
    async with asyncio.timeout(10):
        while True:  # sent after the answer: upload, then a message naming the upload
            latest = (await conversation_messages(client, agent))[-1]
            if latest["delivery_status"] != "pending":
                break
            await asyncio.sleep(0.05)
    assert latest["delivery_status"] == "sent"
    outgoing = graph_api.sent[-1]
    assert (outgoing["to"], outgoing["type"]) == ("5511988887777", "document")
    assert outgoing["document"]["filename"] == "boleto de março.pdf"
    assert outgoing["document"]["caption"] == "segue o boleto"
    content_type, upload = graph_api.uploads[outgoing["document"]["id"]]
    assert content_type.startswith("multipart/form-data") and PDF in upload
    assert (await client.get(attachment["url"], headers=agent.headers)).content == PDF

    photo = await client.post(url, files={"file": ("foto", PNG, "application/octet-stream")}, headers=agent.headers)
    assert photo.status_code == 201, photo.text
    assert photo.json()["attachments"][0]["kind"] == "image"  # known by its bytes
    assert photo.json()["attachments"][0]["mime_type"] == "image/png"

    before = len(await conversation_messages(client, agent))
    lie = await client.post(
        url, files={"file": ("x.png", b"<svg onload=alert(1)>", "image/png")}, headers=agent.headers
    )
    assert lie.status_code == 415
    assert lie.headers["content-type"] == "application/problem+json"
    mp4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"
    big = await client.post(
        url, files={"file": ("big.mp4", mp4 + bytes(16 * 1024**2), "video/mp4")}, headers=agent.headers
    )
    assert big.status_code == 413
    assert "at most 16 MB" in big.json()["detail"]
    empty = await client.post(url, files={"file": ("empty.pdf", b"", "application/pdf")}, headers=agent.headers)
    assert empty.status_code == 422
    assert len(await conversation_messages(client, agent)) == before  # nothing stored
    stored = settings.data_dir / "blobs" / "media" / tenant.id.hex
    assert len(list(stored.iterdir())) == 2  # the PDF and the photo: nothing of the refused ones

    large_photo = PNG[:100] + bytes(6 * 1024**2)  # a phone's photo, over WhatsApp's 5 MB for photos
    goes = await client.post(url, files={"file": ("praia.png", large_photo, "image/png")}, headers=agent.headers)
    assert goes.status_code == 201, goes.text
    assert goes.json()["attachments"][0]["kind"] == "document"  # sent whole, as a document

    other = await (await make_tenant("Other")).member(Role.owner)
    stranger = await client.post(url, files={"file": ("x.pdf", PDF, "application/pdf")}, headers=other.headers)
    assert stranger.status_code == 404


async def test_the_bot_answers_a_voice_notes_transcript(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    graph_api: FakeGraphApi,
    database: ProvisionedDatabase,
    fake_openai: tuple[FakeOpenAI, str],
) -> None:
    _, admin, session_id, number = cloud_number
    provider, base_url = fake_openai
    assistant = await client.post(
        "/api/v1/assistants",
        json={"name": "Bot", "model": "fake-echo", "base_url": base_url, "api_key": API_KEY},
        headers=admin.headers,
    )
    assert assistant.status_code == 201, assistant.text
    linked = await client.patch(
        f"/api/v1/whatsapp/sessions/{session_id}", json={"assistant_id": assistant.json()["id"]}, headers=admin.headers
    )
    assert linked.status_code == 200, linked.text
    voice = new_media(graph_api, OGG, "audio/ogg; codecs=opus")
    sent_before = len(graph_api.sent)
    await deliver(client, database, number, media_message("wamid.vt", "5511988887777", "audio", voice, voice=True))
    async with asyncio.timeout(15):
        while len(graph_api.sent) == sent_before:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    (answer,) = graph_api.sent[sent_before:]
    assert answer["text"]["body"] == f"Echo: {provider.transcript}"  # the bot answered what was said
    assert provider.transcribed == [("whisper-1", provider.transcribed[0][1], OGG)]
    (note,) = await settled(client, admin, 1)
    assert note["transcript"] == provider.transcript  # shown under the player
    (conversation,) = (await client.get(INBOX, headers=admin.headers)).json()
    assert (conversation["ticket_status"], conversation["bot_enabled"]) == ("open", True)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://lookaside.fbsbx.com/whatsapp_business/attachments/?mid=1", True),
        ("https://graph.facebook.com/v21.0/x", True),
        ("http://lookaside.fbsbx.com/x", False),  # not the Graph API's scheme
        ("https://169.254.169.254/latest/meta-data", False),
        ("https://evil.example/fbsbx.com", False),
        ("https://fbsbx.com.evil.example/x", False),
    ],
)
def test_the_number_token_goes_only_to_meta_hosts(url: str, allowed: bool) -> None:
    transport = CloudTransport(Path("."), httpx.AsyncClient(), "https://graph.facebook.com/v21.0")
    assert transport._meta_media_url(url) is allowed


async def test_a_file_refused_for_its_conversation_leaves_nothing_stored(
    client: httpx.AsyncClient,
    cloud_number: tuple[TenantHandle, Member, str, str],
    database: ProvisionedDatabase,
    settings: Any,
) -> None:
    tenant, admin, _, number = cloud_number
    await deliver(client, database, number, {"from": "5511988887777", "id": "wamid.bye", "timestamp": "1",
                                              "type": "text", "text": {"body": "obrigado, era só isso"}})  # fmt: skip
    (conversation,) = (await client.get(INBOX, headers=admin.headers)).json()
    closed = await client.patch(
        f"{INBOX}/{conversation['id']}", json={"ticket_status": "closed"}, headers=admin.headers
    )
    assert closed.status_code == 200, closed.text
    refused = await client.post(
        f"{INBOX}/{conversation['id']}/attachments",
        files={"file": ("boleto.pdf", PDF, "application/pdf")},
        headers=admin.headers,
    )
    assert refused.status_code == 409, refused.text
    kept = settings.data_dir / "blobs" / "media" / tenant.id.hex
    assert not kept.exists() or list(kept.iterdir()) == []  # the file went with the refusal
