"""Files in a chat with an assistant: a document's passages ground and are cited in that chat's
replies (and no one else's), a photo reaches a model that takes images as an image part, and a file
papo cannot take is refused with nothing kept; a document it cannot read is said so on the
attachment, and the reply still comes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from papo.auth.models import Role
from papo.auth.service import Principal
from papo.db.engine import Database
from papo.knowledge.grounding import ATTACHED_INSTRUCTIONS
from tests.conftest import ProvisionedDatabase
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.knowledge.documents import make_pdf
from tests.knowledge.test_knowledge_api import POLICIES
from tests.support import Member, TenantHandle
from tests.web.test_web import tiny_png


async def assistant(client: httpx.AsyncClient, admin: Member, base_url: str, **extra: Any) -> str:
    body = {"name": "Leitor", "model": "fake-echo", "base_url": base_url, "api_key": API_KEY, **extra}
    made = await client.post("/api/v1/assistants", json=body, headers=admin.headers)
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


async def chat_with(client: httpx.AsyncClient, who: Member, assistant_id: str) -> str:
    made = await client.post(
        "/api/v1/sessions", json={"title": "Arquivos", "assistant_id": assistant_id}, headers=who.headers
    )
    return str(made.json()["id"])


async def send_file(
    client: httpx.AsyncClient, who: Member, session_id: str, name: str, data: bytes, content: str = ""
) -> httpx.Response:
    return await client.post(
        f"/api/v1/sessions/{session_id}/files",
        files={"file": (name, data, "application/octet-stream")},
        data={"content": content},
        headers=who.headers,
    )


async def finished(client: httpx.AsyncClient, who: Member, session_id: str, reply_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reply = (await client.get(f"/api/v1/sessions/{session_id}/messages/{reply_id}", headers=who.headers)).json()
        if reply["reply_state"] != "streaming":
            return dict(reply)
        await asyncio.sleep(0.05)
    raise AssertionError("the reply did not finish")


async def ask(client: httpx.AsyncClient, who: Member, session_id: str, question: str) -> dict[str, Any]:
    sent = await client.post(f"/api/v1/sessions/{session_id}/messages", json={"content": question}, headers=who.headers)
    assert sent.status_code == 201, sent.text
    return await finished(client, who, session_id, sent.headers["X-Reply-Id"])


@pytest.fixture
async def readers(make_tenant: Any, client: httpx.AsyncClient, fake_openai: tuple[FakeOpenAI, str]) -> Any:
    tenant: TenantHandle = await make_tenant("Arquivos")
    admin, member, colleague = await tenant.member(Role.admin), await tenant.member(), await tenant.member()
    return admin, member, colleague, await assistant(client, admin, fake_openai[1])


async def test_a_document_grounds_and_is_cited_in_its_own_chat_only(
    client: httpx.AsyncClient, readers: Any, fake_openai: tuple[FakeOpenAI, str], database: ProvisionedDatabase
) -> None:
    fake, _ = fake_openai
    _, member, colleague, assistant_id = readers
    session_id = await chat_with(client, member, assistant_id)
    sent = await send_file(client, member, session_id, "contrato.pdf", make_pdf(POLICIES), "segue o contrato")
    assert sent.status_code == 201, sent.text
    (attached,) = sent.json()["attachments"]
    assert attached["kind"] == "document" and attached["file_name"] == "contrato.pdf"
    await finished(client, member, session_id, sent.headers["X-Reply-Id"])

    reply = await ask(client, member, session_id, "Qual o prazo para devolver um produto?")
    assert reply["reply_state"] == "complete", reply
    (first, *_) = reply["metadata"]["knowledge"]["sources"]
    assert first["title"] == "contrato.pdf" and first["page"] == 1 and "30 dias" in first["excerpt"]
    system = next(m["content"] for m in fake.requests[-1]["messages"] if m["role"] == "system")
    assert system.startswith(ATTACHED_INSTRUCTIONS) and "30 dias corridos" in system

    # row-level security: the passages are the member's, as the attachment is
    count = text("SELECT count(*) FROM chat_document_chunks")
    pool = Database(database.app_url, pool_size=1)
    try:
        for who, expected in ((member, True), (colleague, False)):
            async with pool.transaction(Principal(who.tenant_id, who.user_id, "member").context()) as rows:
                assert bool(await rows.scalar(count)) is expected
    finally:
        await pool.dispose()

    # the colleague's chat with the same assistant has no such document
    other = await chat_with(client, colleague, assistant_id)
    theirs = await ask(client, colleague, other, "Qual o prazo para devolver um produto?")
    assert "knowledge" not in theirs["metadata"]
    assert not any(m["role"] == "system" for m in fake.requests[-1]["messages"])
    assert (await send_file(client, colleague, session_id, "x.txt", b"intruso")).status_code == 404


async def test_a_photo_reaches_a_model_that_takes_images(
    client: httpx.AsyncClient, make_tenant: Any, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, base_url = fake_openai
    tenant: TenantHandle = await make_tenant("Fotos")
    admin, member = await tenant.member(Role.admin), await tenant.member()
    seeing = await assistant(client, admin, base_url, accepts_images=True)
    blind = await assistant(client, admin, base_url)
    png = tiny_png()

    for assistant_id, sees in ((seeing, True), (blind, False)):
        session_id = await chat_with(client, member, assistant_id)
        sent = await send_file(client, member, session_id, "foto.png", png, "o que é isto?")
        assert sent.status_code == 201, sent.text
        assert sent.json()["attachments"][0]["kind"] == "image"
        reply = await finished(client, member, session_id, sent.headers["X-Reply-Id"])
        assert reply["reply_state"] == "complete", reply
        asked = fake.requests[-1]["messages"][-1]
        if sees:
            text, image = asked["content"]
            assert text == {"type": "text", "text": "o que é isto?"}
            assert image["image_url"]["url"].startswith("data:image/png;base64,")
        else:
            assert asked["content"] == "o que é isto?\n[image: foto.png]"


async def test_files_papo_cannot_take_are_refused_and_unreadable_documents_said_so(
    client: httpx.AsyncClient, readers: Any
) -> None:
    _, member, _, assistant_id = readers
    session_id = await chat_with(client, member, assistant_id)
    refused = await send_file(client, member, session_id, "programa.exe", b"MZ\x90\x00" + bytes(range(256)) * 4)
    assert refused.status_code == 415, refused.text
    assert (await send_file(client, member, session_id, "vazio.pdf", b"")).status_code == 422
    messages = await client.get(f"/api/v1/sessions/{session_id}/messages", headers=member.headers)
    assert messages.json()["items"] == []  # nothing was kept

    locked = await send_file(client, member, session_id, "cofre.pdf", make_pdf(POLICIES, password="segredo"))
    assert locked.status_code == 201, locked.text
    reply = await finished(client, member, session_id, locked.headers["X-Reply-Id"])
    assert reply["reply_state"] == "complete", reply  # the reply is not lost to the document
    attachment = (
        await client.get(f"/api/v1/attachments/{locked.json()['attachments'][0]['id']}", headers=member.headers)
    ).json()
    assert attachment["error"].startswith("could not read this document"), attachment
