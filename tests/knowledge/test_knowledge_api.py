"""The knowledge base over HTTP: collections, uploads and URLs indexed in the background, retrieval
that cites its passage, and every document that cannot be read ending in a state that says why."""

from __future__ import annotations

import asyncio
import http.server
import time
import uuid
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from papo.auth.models import Role
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.knowledge.documents import make_docx, make_pdf
from tests.support import Member, serve_in_thread

POLICIES = [
    "Política de devolução\nO cliente pode devolver o produto em até 30 dias corridos após a entrega.\n"
    "O reembolso é feito no mesmo meio de pagamento.",
    "Horário de atendimento\nA loja abre de segunda a sexta, das 9h às 18h, e aos sábados das 9h às 13h.",
    "Frete\nEntregas para a capital custam R$ 15,00; para o interior, R$ 25,00.",
]


async def wait_indexed(client: httpx.AsyncClient, who: Member, document_id: str, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        document = (await client.get(f"/api/v1/knowledge/documents/{document_id}", headers=who.headers)).json()
        if document["state"] in ("ready", "failed") or time.monotonic() > deadline:
            return document
        await asyncio.sleep(0.05)


async def collection(client: httpx.AsyncClient, admin: Member, name: str = "Políticas") -> str:
    created = await client.post("/api/v1/knowledge/collections", json={"name": name}, headers=admin.headers)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


async def upload(
    client: httpx.AsyncClient, who: Member, collection_id: str, name: str, data: bytes, mime: str = "application/pdf"
) -> httpx.Response:
    return await client.post(
        f"/api/v1/knowledge/collections/{collection_id}/documents",
        files={"file": (name, data, mime)},
        headers=who.headers,
    )


async def test_an_uploaded_pdf_is_indexed_and_its_passage_found_with_its_page(
    client: httpx.AsyncClient, make_tenant: Any, app: FastAPI
) -> None:
    tenant = await make_tenant("Loja")
    admin = await tenant.member(Role.admin)
    member = await tenant.member()
    collection_id = await collection(client, admin)
    sent = await upload(client, admin, collection_id, "politicas.pdf", make_pdf(POLICIES, title="Políticas da loja"))
    assert sent.status_code == 202, sent.text
    assert sent.json()["state"] == "pending"
    document = await wait_indexed(client, admin, sent.json()["id"])
    assert document["state"] == "ready", document
    assert (document["pages"], document["mime_type"], document["error"]) == (3, "application/pdf", None)
    assert document["chunks"] >= 3

    answer = await client.post(
        "/api/v1/knowledge/search",
        json={"query": "Qual o prazo para devolver um produto?", "collection_ids": [collection_id]},
        headers=member.headers,  # members search (their assistant's replies run as them)
    )
    assert answer.status_code == 200, answer.text
    best = answer.json()["passages"][0]
    assert "30 dias" in best["content"] and best["page"] == 1 and best["relevant"]
    assert best["title"] == "politicas.pdf" and best["document_id"] == document["id"]
    expected = "vector+text" if app.state.papo.knowledge.vectors else "text"
    assert answer.json()["retrieval"] == expected

    listed = await client.get("/api/v1/knowledge/collections", headers=member.headers)
    assert [(c["id"], c["documents"]["ready"]) for c in listed.json()] == [(collection_id, 1)]


async def test_every_readable_format_is_indexed(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant("Formatos")
    admin = await tenant.member(Role.admin)
    collection_id = await collection(client, admin)
    files = {
        "horario.docx": (
            make_docx(["Atendimento aos sábados das 9h às 13h."], [["Bebida", "Valor"], ["Cappuccino", "R$ 12"]]),
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        "faq.html": (
            b"<html><head><title>FAQ</title><script>var segredo = 'nao indexar';</script></head>"
            b"<body><nav>menu</nav><p>Aceitamos Pix e cart\xc3\xa3o.</p></body></html>",
            "text/html",
        ),
        "guia.md": (b"# Guia\n\nO **boleto** vence em 3 dias.", "text/markdown"),
        "nota.txt": ("Garantia de um ano para eletrônicos.".encode(), "text/plain"),
        "precos.csv": ("produto;preço\ncafé;10\nchá;8\n".encode(), "text/csv"),
    }
    ids = {}
    for name, (data, mime) in files.items():
        sent = await upload(client, admin, collection_id, name, data, mime)
        assert sent.status_code == 202, sent.text
        ids[name] = sent.json()["id"]
    for name, document_id in ids.items():
        document = await wait_indexed(client, admin, document_id)
        assert document["state"] == "ready", (name, document)

    async def best(question: str) -> str:
        found = await client.post(
            "/api/v1/knowledge/search",
            json={"query": question, "collection_ids": [collection_id]},
            headers=admin.headers,
        )
        passages = found.json()["passages"]
        return str(passages[0]["content"]) if passages else ""

    assert "Cappuccino | R$ 12" in await best("valor do cappuccino")
    assert "Pix" in await best("vocês aceitam pix?")
    assert "segredo" not in await best("segredo")  # a page's scripts are not its content
    assert "boleto" in await best("quando vence o boleto")
    assert "produto: chá; preço: 8" in await best("preço do chá")


async def test_documents_that_cannot_be_read_fail_with_a_reason(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant("Ruins")
    admin = await tenant.member(Role.admin)
    collection_id = await collection(client, admin)
    cases = {
        "protegido.pdf": (make_pdf(["confidencial"], password="segredo"), "password"),
        "quebrado.pdf": (b"%PDF-1.7\n" + b"\x00garbage" * 100, "damaged"),
        "imagem.png": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "papo reads PDF"),
        "vazio.txt": (b"   \n\n  ", "no text"),
    }
    sent = {name: await upload(client, admin, collection_id, name, data) for name, (data, _) in cases.items()}
    for name, (_, reason) in cases.items():
        assert sent[name].status_code == 202, sent[name].text
        document = await wait_indexed(client, admin, sent[name].json()["id"])
        assert document["state"] == "failed" and reason in document["error"], (name, document)
    empty = await upload(client, admin, collection_id, "zero.txt", b"")
    assert empty.status_code == 422


async def test_a_500_page_pdf_is_indexed(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant("Manual")
    admin = await tenant.member(Role.admin)
    collection_id = await collection(client, admin)
    pages = [f"Capítulo {n}\nO procedimento número {n} exige o formulário F-{n}." for n in range(1, 501)]
    sent = await upload(client, admin, collection_id, "manual.pdf", make_pdf(pages))
    document = await wait_indexed(client, admin, sent.json()["id"], seconds=120)
    assert (document["state"], document["pages"]) == ("ready", 500), document
    found = await client.post(
        "/api/v1/knowledge/search",
        json={"query": "formulário F-437", "collection_ids": [collection_id]},
        headers=admin.headers,
    )
    assert found.json()["passages"][0]["page"] == 437


async def test_only_admins_and_api_keys_manage_and_other_tenants_see_nothing(
    client: httpx.AsyncClient, make_tenant: Any
) -> None:
    tenant, other = await make_tenant("Dona"), await make_tenant("Outra")
    admin, member, key = await tenant.member(Role.admin), await tenant.member(), await tenant.api_key()
    stranger = await other.member(Role.admin)
    collection_id = await collection(client, admin)
    sent = await upload(client, key, collection_id, "politicas.pdf", make_pdf(POLICIES))  # a back-office sync
    assert sent.status_code == 202, sent.text
    assert (await wait_indexed(client, admin, sent.json()["id"]))["state"] == "ready"

    refused = await upload(client, member, collection_id, "x.pdf", make_pdf(["x"]))
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    made = await client.post("/api/v1/knowledge/collections", json={"name": "Minha"}, headers=member.headers)
    assert made.status_code == 403

    for path in (f"/api/v1/knowledge/collections/{collection_id}", f"/api/v1/knowledge/documents/{sent.json()['id']}"):
        assert (await client.get(path, headers=stranger.headers)).status_code == 404
    assert (await upload(client, stranger, collection_id, "y.pdf", make_pdf(["y"]))).status_code == 404
    assert (
        await client.delete(f"/api/v1/knowledge/documents/{sent.json()['id']}", headers=stranger.headers)
    ).status_code == 404
    found = await client.post(
        "/api/v1/knowledge/search",
        json={"query": "prazo de devolução", "collection_ids": [collection_id]},
        headers=stranger.headers,
    )
    assert found.status_code == 200 and found.json()["passages"] == []  # another tenant's id finds nothing
    assert (await client.get("/api/v1/knowledge/collections", headers=stranger.headers)).json() == []


async def test_assistants_answer_from_the_collections_attached_to_them(
    client: httpx.AsyncClient, make_tenant: Any
) -> None:
    tenant, other = await make_tenant("Bot"), await make_tenant("Alheio")
    admin, stranger = await tenant.member(Role.admin), await other.member(Role.admin)
    policies, prices = await collection(client, admin, "Políticas"), await collection(client, admin, "Preços")
    foreign = await collection(client, stranger, "Deles")
    made = await client.post(
        "/api/v1/assistants", json={"name": "Suporte", "provider": "demo", "model": "papo-demo"}, headers=admin.headers
    )
    assert made.status_code == 201, made.text
    assistant_id = made.json()["id"]
    path = f"/api/v1/assistants/{assistant_id}/collections"
    assert (
        await client.put(path, json={"collection_ids": [policies, foreign]}, headers=admin.headers)
    ).status_code == 404
    assert (await client.get(path, headers=admin.headers)).json() == {"collection_ids": []}  # nothing changed
    attached = await client.put(path, json={"collection_ids": [policies, policies]}, headers=admin.headers)
    assert attached.json() == {"collection_ids": [policies]}
    missing = f"/api/v1/assistants/{uuid.uuid4()}/collections"
    assert (await client.put(missing, json={"collection_ids": [policies]}, headers=admin.headers)).status_code == 404

    sent = await upload(client, admin, policies, "politicas.pdf", make_pdf(POLICIES))
    other_doc = await upload(client, admin, prices, "precos.txt", b"O frete custa R$ 99", "text/plain")
    await wait_indexed(client, admin, sent.json()["id"])
    await wait_indexed(client, admin, other_doc.json()["id"])
    found = await client.post(
        "/api/v1/knowledge/search", json={"query": "frete", "assistant_id": assistant_id}, headers=admin.headers
    )
    assert {p["collection_id"] for p in found.json()["passages"]} == {policies}

    await client.delete(f"/api/v1/knowledge/collections/{policies}", headers=admin.headers)
    assert (await client.get(path, headers=admin.headers)).json() == {"collection_ids": []}


async def test_deleting_a_document_removes_its_passages_and_queues_its_file(
    client: httpx.AsyncClient, make_tenant: Any, database: ProvisionedDatabase
) -> None:
    tenant = await make_tenant("Apagar")
    admin = await tenant.member(Role.admin)
    collection_id = await collection(client, admin)
    sent = await upload(client, admin, collection_id, "politicas.pdf", make_pdf(POLICIES))
    document_id = sent.json()["id"]
    await wait_indexed(client, admin, document_id)
    assert (await client.delete(f"/api/v1/knowledge/documents/{document_id}", headers=admin.headers)).status_code == 204
    owner = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        left = await owner.fetchval(
            "SELECT count(*) FROM knowledge_chunks WHERE document_id = $1", uuid.UUID(document_id)
        )
        queued = await owner.fetchval(
            "SELECT count(*) FROM blob_deletions WHERE blob_key = $1",
            f"knowledge/{tenant.id.hex}/{uuid.UUID(document_id).hex}",
        )
    finally:
        await owner.close()
    assert left == 0
    assert queued in (0, 1)  # queued, and possibly already deleted by the worker
    found = await client.post(
        "/api/v1/knowledge/search",
        json={"query": "prazo de devolução", "collection_ids": [collection_id]},
        headers=admin.headers,
    )
    assert found.json()["passages"] == []


class _Site(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect-to-metadata":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()
            return
        if self.path == "/missing":
            self.send_response(404)
            self.end_headers()
            return
        body = "<html><head><title>Trocas</title></head><body><p>Trocas em até 7 dias na loja física.</p></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


async def test_urls_are_fetched_under_the_outbound_rules(client: httpx.AsyncClient, make_tenant: Any) -> None:
    tenant = await make_tenant("Site")
    admin = await tenant.member(Role.admin)
    collection_id = await collection(client, admin)
    site = serve_in_thread(_Site)
    base = f"http://127.0.0.1:{site.server_address[1]}"  # 127.0.0.0/8 is allowed in these tests' settings
    try:
        path = f"/api/v1/knowledge/collections/{collection_id}/urls"
        page = await client.post(path, json={"url": f"{base}/trocas"}, headers=admin.headers)
        assert page.status_code == 202, page.text
        indexed = await wait_indexed(client, admin, page.json()["id"])
        assert (indexed["state"], indexed["title"], indexed["mime_type"]) == ("ready", "Trocas", "text/html")

        redirected = await client.post(path, json={"url": f"{base}/redirect-to-metadata"}, headers=admin.headers)
        failed = await wait_indexed(client, admin, redirected.json()["id"])
        assert failed["state"] == "failed" and "may not reach" in failed["error"], failed
        missing = await client.post(path, json={"url": f"{base}/missing"}, headers=admin.headers)
        failed = await wait_indexed(client, admin, missing.json()["id"])
        assert failed["state"] == "failed" and "404" in failed["error"], failed

        private = await client.post(path, json={"url": "http://10.1.2.3/intranet"}, headers=admin.headers)
        assert private.status_code == 422, private.text  # refused when saved, nothing stored
        listed = await client.get(f"/api/v1/knowledge/collections/{collection_id}/documents", headers=admin.headers)
        assert len(listed.json()) == 3
    finally:
        site.shutdown()
