"""Knowledge retrieval: recall, latency and ingest throughput, on documents written here.

A Portuguese catalogue is generated (seeded, so every run sees the same): products with a code, a
warranty, delivery times by region, a price and a voltage, one fact per passage, plus return and
payment policies. 120 questions are asked in other words than the passages use ("quanto tempo de
garantia…" for "A garantia … é de 18 meses"), each with the one passage that answers it. The
collection holds at least 100,000 passages, nearly all of them near-duplicates of the answers
(other products, same facts), which is what makes retrieval hard.

Printed, for the demo embedder + full text, full text alone, and the fake provider's embeddings +
full text: recall@5 (the answer passage among the first five), and the p50/p95 latency of a
retrieval (embedding the question and the fused query, as a reply does); then ingest throughput
through the real indexer (PDF pages/s, passages/s). Verdict: p95 ≤ 50 ms (issue 18).
Run: `make bench-knowledge` (`--passages N` for a quicker run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import openai
import uvicorn

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))
from tests.fake_openai import API_KEY, FakeOpenAI  # noqa: E402
from tests.knowledge.documents import make_pdf  # noqa: E402

import papo.models  # noqa: E402, F401  (every table, so cross-feature foreign keys resolve)
from papo.auth import service as auth_service  # noqa: E402
from papo.auth.service import SERVICE_ROLE, Principal  # noqa: E402
from papo.blobs import FileBlobStore  # noqa: E402
from papo.db.engine import Database  # noqa: E402
from papo.knowledge import repository  # noqa: E402
from papo.knowledge.embeddings import DemoEmbedder, Embedder, ProviderEmbedder  # noqa: E402
from papo.knowledge.indexer import KnowledgeIndexer  # noqa: E402
from papo.knowledge.service import KnowledgeService, embed_question  # noqa: E402
from papo.netguard import NetGuard  # noqa: E402
from papo.ops.logging import configure_logging  # noqa: E402
from run import HOST, BenchServer, verdict  # noqa: E402

P95_TARGET_MS = 50.0
PASSAGES_PER_DOCUMENT = 100
KINDS = [
    "Liquidificador",
    "Ventilador",
    "Aspirador",
    "Cafeteira",
    "Micro-ondas",
    "Geladeira",
    "Fogão",
    "Batedeira",
    "Torradeira",
    "Climatizador",
    "Secador",
    "Purificador",
    "Sanduicheira",
    "Fritadeira",
    "Lavadora",
]
LINES = ["Turbo", "Prime", "Max", "Eco", "Plus", "Compacto", "Gourmet", "Power", "Silence", "Smart"]
REGIONS = ["capital", "região metropolitana", "interior", "Norte e Nordeste", "Sul"]


@dataclass(frozen=True)
class Question:
    text: str
    answer: str  # a sentence only the answer passage holds


def product(rng: random.Random, number: int) -> tuple[str, str]:
    name = f"{rng.choice(KINDS)} {rng.choice(LINES)} {1000 + number}"
    return name, f"{name[:2].upper()}-{number:05d}"


def facts(rng: random.Random, name: str, code: str) -> list[tuple[str, str]]:
    """(passage, question) pairs about one product: each passage holds one fact."""
    months, days, region = rng.choice([6, 12, 18, 24, 36]), rng.randint(2, 15), rng.choice(REGIONS)
    price, volts = rng.randint(90, 4000), rng.choice(["110 V", "220 V", "bivolt"])
    return [
        (
            f"Garantia do {name} (código {code}): o fabricante cobre defeitos por {months} meses "
            "a partir da nota fiscal.",
            f"Quanto tempo de garantia tem o {name}?",
        ),
        (
            f"Entrega do {name} ({code}) para {region}: até {days} dias úteis após a confirmação do pagamento.",
            f"Em quantos dias chega o {name} na {region}?",
        ),
        (
            f"Preço de tabela do {name} ({code}): R$ {price},00 à vista, ou em até 10 parcelas no cartão.",
            f"Qual o valor do {name}?",
        ),
        (
            f"Tensão do {name} ({code}): {volts}; verifique a tomada antes de ligar o aparelho.",
            f"O {name} funciona em qual voltagem?",
        ),
    ]


# What a catalogue says around each fact: enough that one fact makes one passage, worded alike
# across products, so the fact's own words are what tells passages apart.
FILLER = [
    "Antes do primeiro uso, leia o manual e lave as partes removíveis com água e sabão neutro.",
    "O produto acompanha manual em português e certificado de garantia do fabricante.",
    "Para limpeza, desligue o aparelho da tomada e use apenas um pano macio e úmido.",
    "Não utilize produtos abrasivos, palha de aço ou solventes nas superfícies externas.",
    "Em caso de defeito, procure a assistência técnica autorizada mais próxima da sua cidade.",
    "Guarde a nota fiscal: ela é necessária para qualquer atendimento dentro da garantia.",
    "A embalagem original protege o aparelho no transporte; recomendamos guardá-la.",
    "Mantenha o aparelho longe do alcance de crianças e de fontes de calor.",
    "Peças de reposição podem ser compradas nas lojas e no atendimento ao cliente.",
    "O aparelho possui selo de eficiência energética e atende às normas do Inmetro.",
    "Trocas por arrependimento podem ser pedidas em até sete dias após o recebimento.",
    "O atendimento ao cliente funciona de segunda a sábado, em horário comercial.",
]


def passage_text(rng: random.Random, fact: str) -> str:
    return fact + " " + " ".join(rng.sample(FILLER, 7))


def corpus(passages: int, questions: int, seed: int = 7) -> tuple[list[list[str]], list[Question]]:
    """Documents (lists of passages) and the questions, each answered by exactly one passage."""
    rng = random.Random(seed)
    all_passages: list[str] = []
    asked: list[Question] = []
    number = 0
    while len(all_passages) < passages:
        name, code = product(rng, number)
        pairs = facts(rng, name, code)
        if len(asked) < questions and number % 7 == 0:
            passage, question = rng.choice(pairs)
            asked.append(Question(question, passage))
        all_passages.extend(passage_text(rng, passage) for passage, _ in pairs)
        number += 1
    documents = [
        all_passages[i : i + PASSAGES_PER_DOCUMENT] for i in range(0, len(all_passages), PASSAGES_PER_DOCUMENT)
    ]
    return documents, asked


async def _bytes(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Library:
    def __init__(self, db: Database, server: BenchServer, embedder: Embedder, vectors: bool, name: str) -> None:
        self.db, self.settings, self.name = db, server.settings, name
        blobs = FileBlobStore(server.workdir / f"blobs-{name}")
        self.blobs = blobs
        self.indexer = KnowledgeIndexer(
            db, self.settings, blobs, embedder, vectors, NetGuard.from_settings(self.settings)
        )

    async def open(self) -> None:
        async with self.db.transaction() as session:
            tenant = await auth_service.create_tenant(session, f"Bench knowledge {self.name}")
        self.principal = Principal(tenant.id, None, SERVICE_ROLE)
        async with self.db.transaction(self.principal.context()) as session:
            made = await KnowledgeService(session, self.principal, self.settings).create_collection("Catálogo", "")
        self.collection_id = made.id

    async def add(self, data: bytes, file_name: str, mime_type: str) -> uuid.UUID:
        async with self.db.transaction(self.principal.context()) as session:
            knowledge = KnowledgeService(session, self.principal, self.settings)
            document_id = knowledge.new_document_id()
            written = await self.blobs.write(
                f"knowledge/{self.principal.tenant_id.hex}/{document_id.hex}", _bytes(data), max_bytes=10**8
            )
            await knowledge.add_upload(
                self.collection_id, document_id, written, file_name=file_name, mime_type=mime_type, title=None
            )
        return document_id

    async def chunks(self) -> int:
        async with self.db.transaction(self.principal.context()) as session:
            return sum(
                d.chunks
                for d in await KnowledgeService(session, self.principal, self.settings).documents(self.collection_id)
            )

    async def index_all(self) -> None:
        while await self.indexer.batch():
            pass

    async def search(self, question: str, *, vectors: bool) -> tuple[list[str], float]:
        started = time.perf_counter()
        model, vector = await embed_question(self.indexer.embedder, vectors and self.indexer.vectors, question)
        async with self.db.transaction(self.principal.context()) as session:
            found = await KnowledgeService(session, self.principal, self.settings).search(
                question, [self.collection_id], 5, model=model, vector=vector
            )
        return [item.hit.content for item in found], (time.perf_counter() - started) * 1000


async def measure(library: Library, asked: list[Question], *, vectors: bool, rounds: int) -> tuple[float, list[float]]:
    hits, latencies = 0, []
    for round_number in range(rounds):
        for question in asked:
            top, elapsed = await library.search(question.text, vectors=vectors)
            latencies.append(elapsed)
            if round_number == 0 and any(question.answer in passage for passage in top):
                hits += 1
    return hits / len(asked), latencies


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q * 100) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=100_000)
    parser.add_argument("--questions", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pdf-pages", type=int, default=400, help="pages of PDF indexed for the ingest figure")
    args = parser.parse_args()
    configure_logging("WARNING")
    fake = FakeOpenAI()
    provider = uvicorn.Server(uvicorn.Config(fake.app, host=HOST, port=0, log_config=None, access_log=False))
    provider_task = asyncio.create_task(provider.serve())
    while not provider.started:  # noqa: ASYNC110  (uvicorn exposes a flag)
        await asyncio.sleep(0.02)
    base_url = f"http://{HOST}:{provider.servers[0].sockets[0].getsockname()[1]}/v1"
    # the provider model's size is configured, so `papo migrate` indexes its vectors (HNSW) too
    server = BenchServer("knowledge", embedding_model="fake-embed", embedding_dimensions=64)
    documents, asked = corpus(args.passages, args.questions)
    print(
        f"papo knowledge benchmark — {os.cpu_count()} cores, PostgreSQL embedded, {sum(map(len, documents))} "
        f"catalogue facts (one passage each) per collection, two collections, {len(asked)} questions"
    )
    try:
        await server.migrate()
        db = Database(server.location.app_url, pool_size=4)
        vectors = await repository.vectors_available(db)
        await repository.create_vector_index(server.owner_dsn, "fake-embed", 64)
        client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=2)
        libraries = [
            Library(db, server, DemoEmbedder(), vectors, "demo"),
            Library(db, server, ProviderEmbedder(client, "fake-embed", 64), vectors, "provider"),
        ]
        print("\n1. Ingest (the indexer: read, cut, embed, write)")
        for library in libraries:
            await library.open()
            started = time.perf_counter()
            for number, passages in enumerate(documents):
                text = "\n\n".join(passages).encode()
                await library.add(text, f"catalogo-{number}.md", "text/markdown")
            await library.index_all()
            elapsed = time.perf_counter() - started
            total = sum(map(len, documents))
            chunks = await library.chunks()
            print(
                f"  {library.name:9} {total} facts → {chunks} passages in {elapsed:6.1f} s "
                f"= {chunks / elapsed:6.0f} passages/s"
            )
        # what autovacuum does a moment after a bulk load; without statistics the planner scans
        # every vector instead of using the HNSW index
        owner = await asyncpg.connect(server.owner_dsn)
        await owner.execute("ANALYZE knowledge_chunks; ANALYZE knowledge_documents")
        if vectors:
            await owner.execute("ANALYZE knowledge_embeddings")
        await owner.close()
        pdf_library = libraries[0]
        pages = [f"Página {n}\n" + " ".join(documents[0][n % len(documents[0])].split()) for n in range(args.pdf_pages)]
        started = time.perf_counter()
        for start in range(0, len(pages), 100):
            await pdf_library.add(make_pdf(pages[start : start + 100]), f"manual-{start}.pdf", "application/pdf")
        await pdf_library.index_all()
        elapsed = time.perf_counter() - started
        print(
            f"  PDF       {len(pages)} pages in {elapsed:6.1f} s = {len(pages) / elapsed:7.1f} pages/s (demo embedder)"
        )

        print(f"\n2. Retrieval: recall@5 and latency ({args.rounds} rounds of {len(asked)} questions)")
        worst = 0.0
        runs = [
            (libraries[0], vectors, "demo embedder + full text" if vectors else "full text (no pgvector here)"),
            (libraries[0], False, "full text alone"),
            (libraries[1], vectors, "fake provider + full text" if vectors else "full text (no pgvector here)"),
        ]
        for library, use_vectors, label in runs:
            recall, latencies = await measure(library, asked, vectors=use_vectors, rounds=args.rounds)
            p50, p95 = statistics.median(latencies), quantile(latencies, 0.95)
            worst = max(worst, p95)
            print(f"  {label:30} recall@5 {recall:5.1%}   p50 {p50:6.1f} ms   p95 {p95:6.1f} ms")
        print(verdict(worst <= P95_TARGET_MS, f"retrieval p95 {worst:.1f} ms (target ≤ {P95_TARGET_MS:.0f} ms)"))
        await db.dispose()
        await client.close()
    finally:
        await server.close()
        provider.should_exit = True
        await provider_task


if __name__ == "__main__":
    asyncio.run(main())
