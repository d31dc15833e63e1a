"""Embedders: the provider's OpenAI-compatible `/embeddings` endpoint through the SDK, or papo's
demo embedder when no provider is configured.

The demo embedder is not a language model: it hashes a passage's words and their three-letter
pieces into 256 dimensions (the hashing trick), deterministic and offline, so `make run` shows the
whole flow — upload, index, cite — without a download or a key. It finds passages that share
words (and word stems) with the question, which is what it is labelled as everywhere it shows."""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from typing import NamedTuple, Protocol

import openai

from papo.chat.search import fold
from papo.netguard import NOT_ALLOWED, TargetRefused
from papo.settings import Settings

DEMO_MODEL = "papo-demo-hash-256"
DEMO_DIMENSIONS = 256
BATCH = 64  # passages per embeddings request
_WORD = re.compile(r"\w+")


class EmbeddingError(Exception):
    """The embeddings endpoint failed; the message says how, in a sentence."""


class Embedder(Protocol):
    @property
    def model(self) -> str:
        """Names the vector space: vectors of different models are never compared."""

    @property
    def is_demo(self) -> bool: ...

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


class DemoEmbedder:
    model = DEMO_MODEL
    is_demo = True

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [demo_vector(text) for text in texts]


def demo_vector(text: str) -> list[float]:
    vector = [0.0] * DEMO_DIMENSIONS
    features: Counter[str] = Counter()
    for word in _WORD.findall(fold(text)):
        if len(word) < 2:
            continue
        features["w:" + word] += 2
        padded = f"<{word}>"
        for start in range(len(padded) - 2):
            features["g:" + padded[start : start + 3]] += 1
    for feature, count in features.items():
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        index = int.from_bytes(digest[:4], "little") % DEMO_DIMENSIONS
        sign = 1.0 if digest[4] & 1 else -1.0
        vector[index] += sign * (1.0 + math.log(count))
    norm = math.sqrt(sum(value * value for value in vector))
    return [value / norm for value in vector] if norm else vector


class ProviderEmbedder:
    """The operator's provider (PAPO_OPENAI_BASE_URL / PAPO_OPENAI_API_KEY), model
    PAPO_EMBEDDING_MODEL."""

    is_demo = False

    def __init__(self, client: openai.AsyncOpenAI, model: str, dimensions: int | None = None) -> None:
        self.client = client
        self._model = model
        self.dimensions = dimensions

    @property
    def model(self) -> str:
        return self._model

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), BATCH):
            batch = texts[start : start + BATCH]
            try:
                if self.dimensions:
                    answer = await self.client.embeddings.create(
                        model=self._model, input=batch, dimensions=self.dimensions
                    )
                else:
                    answer = await self.client.embeddings.create(model=self._model, input=batch)
            except TargetRefused as exc:
                raise EmbeddingError(f"{NOT_ALLOWED}: the embeddings endpoint is not reachable from here") from exc
            except openai.AuthenticationError as exc:
                raise EmbeddingError("the embeddings endpoint rejected the API key (401)") from exc
            except openai.NotFoundError as exc:
                raise EmbeddingError(f"the embeddings endpoint does not know model {self._model!r}") from exc
            except openai.APITimeoutError as exc:
                raise EmbeddingError("the embeddings endpoint did not answer in time") from exc
            except openai.APIConnectionError as exc:
                raise EmbeddingError("the embeddings endpoint is unreachable") from exc
            except openai.APIStatusError as exc:
                raise EmbeddingError(f"the embeddings endpoint failed ({exc.status_code})") from exc
            except (openai.APIError, ValueError) as exc:
                raise EmbeddingError("the embeddings endpoint sent a malformed response") from exc
            ordered = sorted(answer.data, key=lambda item: item.index)
            if len(ordered) != len(batch) or any(not item.embedding for item in ordered):
                raise EmbeddingError("the embeddings endpoint answered with the wrong number of vectors")
            vectors.extend([float(value) for value in item.embedding] for item in ordered)
        dimensions = {len(vector) for vector in vectors}
        if len(dimensions) > 1:
            raise EmbeddingError("the embeddings endpoint answered vectors of different sizes")
        return vectors


def embedder_from_settings(settings: Settings) -> Embedder:
    """The operator's provider when one is configured (the same rule as the default assistant's),
    else the demo embedder."""
    if not (settings.openai_base_url or settings.openai_api_key):
        return DemoEmbedder()
    client = openai.AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key or "not-needed",
        max_retries=max(0, settings.reply_max_attempts - 1),
        timeout=60.0,
    )
    return ProviderEmbedder(client, settings.embedding_model, settings.embedding_dimensions)


class RetrievalMode(NamedTuple):
    kind: str  # text (no pgvector), demo (the offline embedder) or provider
    model: str


def retrieval_mode(embedder: Embedder, vectors: bool) -> RetrievalMode:
    """How retrieval works on this server: the start-up log and /readyz say it in English
    (`describe`), the knowledge page in its reader's language."""
    if not vectors:
        return RetrievalMode("text", "")
    return RetrievalMode("demo" if embedder.is_demo else "provider", embedder.model)


def describe(mode: RetrievalMode) -> str:
    return {
        "text": "full text only: the database has no vector extension (pgvector)",
        "demo": f"vectors ({mode.model}: papo's offline demo embedder, no provider configured) + full text",
        "provider": f"vectors ({mode.model} at the configured provider) + full text",
    }[mode.kind]


def vector_literal(vector: list[float]) -> str:
    """pgvector's text form, sent as a parameter and cast in SQL (no codec to register)."""
    return "[" + ",".join(f"{value:.7g}" for value in vector) + "]"
