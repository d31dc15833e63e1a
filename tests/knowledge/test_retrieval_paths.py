"""Both retrieval paths (vectors + full text where the server has pgvector, full text alone where it
does not), the provider's embeddings through the real SDK against the fake server, and an
embeddings endpoint that fails: the document says so, and nothing is lost."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import openai
import pytest

from papo.auth import service as auth_service
from papo.auth.service import SERVICE_ROLE, Principal
from papo.blobs import FileBlobStore
from papo.db.engine import Database
from papo.knowledge import repository
from papo.knowledge.embeddings import DemoEmbedder, Embedder, ProviderEmbedder, demo_vector
from papo.knowledge.indexer import KnowledgeIndexer
from papo.knowledge.service import KnowledgeService, embed_question, text_query
from papo.netguard import NetGuard
from papo.settings import Settings
from tests.conftest import ProvisionedDatabase, plain_dsn
from tests.fake_openai import API_KEY, FakeOpenAI
from tests.knowledge.documents import make_pdf
from tests.knowledge.test_knowledge_api import POLICIES


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Library:
    """A tenant with one collection on a database, and an indexer over it."""

    def __init__(
        self, db: Database, settings: Settings, embedder: Embedder, vectors: bool, blobs: FileBlobStore
    ) -> None:
        self.db, self.settings, self.blobs = db, settings, blobs
        self.indexer = KnowledgeIndexer(db, settings, blobs, embedder, vectors, NetGuard.from_settings(settings))

    async def open(self) -> None:
        async with self.db.transaction() as session:
            tenant = await auth_service.create_tenant(session, f"Biblioteca {secrets.token_hex(3)}")
        self.principal = Principal(tenant.id, None, SERVICE_ROLE)
        async with self.db.transaction(self.principal.context()) as session:
            made = await KnowledgeService(session, self.principal, self.settings).create_collection("Políticas", "")
        self.collection_id = made.id

    async def add_pdf(self, pages: list[str]) -> Any:
        async with self.db.transaction(self.principal.context()) as session:
            knowledge = KnowledgeService(session, self.principal, self.settings)
            document_id = knowledge.new_document_id()
            key = f"knowledge/{self.principal.tenant_id.hex}/{document_id.hex}"
            written = await self.blobs.write(key, _chunks(make_pdf(pages)), max_bytes=10**7)
            document = await knowledge.add_upload(
                self.collection_id, document_id, written, file_name="p.pdf", mime_type="application/pdf", title=None
            )
        while await self.indexer.batch():
            pass
        return await self.document(document.id)

    async def document(self, document_id: Any) -> Any:
        async with self.db.transaction(self.principal.context()) as session:
            return await KnowledgeService(session, self.principal, self.settings).document(document_id)

    async def search(self, question: str) -> list[Any]:
        async with self.db.transaction(self.principal.context()) as session:
            knowledge = KnowledgeService(session, self.principal, self.settings)
            model, vector = await embed_question(self.indexer.embedder, self.indexer.vectors, question)
            return await knowledge.search(question, [self.collection_id], 3, model=model, vector=vector)


@pytest.fixture
async def text_only_db(text_only_database: ProvisionedDatabase) -> AsyncIterator[Database]:
    pool = Database(text_only_database.app_url, pool_size=2)
    yield pool
    await pool.dispose()


async def _server_has_pgvector(database: ProvisionedDatabase) -> bool:
    connection = await asyncpg.connect(plain_dsn(database.owner_url))
    try:
        return bool(
            await connection.fetchval("SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector')")
        )
    finally:
        await connection.close()


async def test_retrieval_uses_vectors_exactly_where_the_server_has_pgvector(
    db: Database, database: ProvisionedDatabase, text_only_db: Database
) -> None:
    # the embedded server has pgvector; a server without it (PAPO_TEST_DATABASE_URL) migrates without
    assert await repository.vectors_available(db) == await _server_has_pgvector(database)
    assert await repository.vectors_available(text_only_db) is False


async def test_full_text_alone_finds_the_passage_on_a_server_without_pgvector(
    text_only_db: Database, settings: Settings, tmp_path: Path
) -> None:
    library = Library(text_only_db, settings, DemoEmbedder(), False, FileBlobStore(tmp_path))
    await library.open()
    document = await library.add_pdf(POLICIES)
    assert (document.state, document.pages) == ("ready", 3)
    found = await library.search("Quanto custa o frete para o interior?")
    assert "R$ 25,00" in found[0].hit.content and found[0].relevant
    assert found[0].hit.similarity is None  # no vector took part
    assert await library.search("Vocês vendem bicicletas elétricas?") == []  # nothing relevant: nothing


async def test_vectors_find_a_passage_that_shares_only_stems_with_the_question(
    quiet_db: Database, database: ProvisionedDatabase, settings: Settings, tmp_path: Path
) -> None:
    vectors = await repository.vectors_available(quiet_db)
    assert vectors == await _server_has_pgvector(database)
    library = Library(quiet_db, settings, DemoEmbedder(), vectors, FileBlobStore(tmp_path))
    await library.open()
    await library.add_pdf(POLICIES)
    found = await library.search("devoluções e reembolsos")
    assert "reembolso" in found[0].hit.content
    if vectors:
        assert found[0].hit.similarity is not None and found[0].hit.similarity > 0


async def test_the_providers_embeddings_index_and_answer(
    quiet_db: Database, settings: Settings, tmp_path: Path, fake_openai: tuple[FakeOpenAI, str]
) -> None:
    fake, base_url = fake_openai
    vectors = await repository.vectors_available(quiet_db)
    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    library = Library(quiet_db, settings, ProviderEmbedder(client, "fake-embed"), vectors, FileBlobStore(tmp_path))
    await library.open()
    asked = len(fake.embedded)
    document = await library.add_pdf(POLICIES)
    assert document.state == "ready"
    if vectors:
        assert sum(len(batch) for batch in fake.embedded[asked:]) == document.chunks
    found = await library.search("horário de atendimento aos sábados")
    assert "sábados" in found[0].hit.content


@pytest.mark.parametrize(
    ("model", "reason"),
    [("fake-embed-500", "failed (500)"), ("fake-embed-short", "wrong number of vectors")],
)
async def test_a_failing_embeddings_endpoint_leaves_the_document_failed_with_its_reason(
    model: str,
    reason: str,
    quiet_db: Database,
    settings: Settings,
    tmp_path: Path,
    fake_openai: tuple[FakeOpenAI, str],
) -> None:
    fake, base_url = fake_openai
    vectors = await repository.vectors_available(quiet_db)
    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    library = Library(quiet_db, settings, ProviderEmbedder(client, model), vectors, FileBlobStore(tmp_path))
    await library.open()
    calls = fake.calls[model]
    document = await library.add_pdf(POLICIES)
    if not vectors:  # a server without pgvector never asks for embeddings: full text indexes it
        assert (document.state, fake.calls[model]) == ("ready", calls)
        return
    attempts = settings.knowledge_max_attempts
    for _ in range(attempts * 4):  # retried with a short delay in the tests' settings
        if document.state == "failed":
            break
        await asyncio.sleep(settings.knowledge_retry_seconds * 2 ** min(document.attempts, 4))
        while await library.indexer.batch():
            pass
        document = await library.document(document.id)
    assert document.state == "failed" and reason in document.error, document.error
    assert document.attempts == attempts and f"gave up after {attempts} attempts" in document.error


def test_questions_become_or_queries_of_their_subject_words() -> None:
    assert text_query("Qual é o prazo de devolução?") == "prazo | devoluc:*"
    assert text_query("o que é isso?") == ""
    assert text_query("frete R$ 25'; DROP TABLE x --") == "frete | 25 | drop | table"


def test_the_demo_embedder_is_deterministic_and_puts_shared_words_close() -> None:
    a, b, c = demo_vector("prazo de devolução"), demo_vector("devolução no prazo"), demo_vector("cardápio do almoço")
    assert a == demo_vector("prazo de devolução")
    assert abs(sum(x * x for x in a) - 1) < 1e-9

    def cosine(x: list[float], y: list[float]) -> float:
        return sum(p * q for p, q in zip(x, y, strict=True))

    assert cosine(a, b) > 0.7 > 0.3 > cosine(a, c)


async def test_a_configured_provider_model_is_searched_through_its_own_index(
    quiet_db: Database,
    quiet_database: ProvisionedDatabase,
    settings: Settings,
    tmp_path: Path,
    fake_openai: tuple[FakeOpenAI, str],
) -> None:
    """PAPO_EMBEDDING_DIMENSIONS set: `papo migrate` builds the model's HNSW index, retrieval uses it."""
    _, base_url = fake_openai
    vectors = await repository.vectors_available(quiet_db)
    made = await repository.create_vector_index(plain_dsn(quiet_database.owner_url), "fake-embed", 64)
    assert made == vectors  # no embeddings table, no index: nothing to do on a server without pgvector
    sized = settings.model_copy(update={"embedding_model": "fake-embed", "embedding_dimensions": 64})
    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    library = Library(quiet_db, sized, ProviderEmbedder(client, "fake-embed", 64), vectors, FileBlobStore(tmp_path))
    await library.open()
    await library.add_pdf(POLICIES)
    found = await library.search("horário de atendimento aos sábados")
    assert "sábados" in found[0].hit.content
