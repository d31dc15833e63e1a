"""Grounding a reply in the company's documents: the passages an assistant is shown for a question,
how it is told to use and cite them, and what the reply records about them.

An assistant with collections attached answers from them or says it does not know: when nothing
relevant is found, the model is not asked at all (it would answer from its general knowledge and
could invent a price or a policy); the reply is the tenant-wide "I don't know" text and, on
WhatsApp, the conversation goes to a person."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from papo.auth.service import Principal
from papo.db.engine import Database
from papo.knowledge.chat_files import ChatPassage
from papo.knowledge.embeddings import EmbeddingError
from papo.knowledge.service import Found, KnowledgeService, QuestionEmbedding
from papo.settings import Settings

PASSAGES_SHOWN = 4
EXCERPT_CHARS = 300
INSTRUCTIONS = (
    "Answer from the company's documents below. Use only what they say for facts about the company "
    "(prices, policies, hours, procedures); cite the passages you used as [1], [2]. If they do not "
    "contain the answer, say that you do not know instead of guessing. Answer in the user's language."
)

ATTACHED_INSTRUCTIONS = (
    "The user attached documents to this chat; the passages below are from them. Use them to answer, "
    "and cite the passages you used as [1], [2]. Answer in the user's language."
)


@dataclass
class Grounding:
    """What retrieval gave a reply: the system message with the passages, the sources recorded in the
    reply's metadata, and whether the assistant has nothing to answer from."""

    system: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    unknown: bool = False
    error: str | None = None  # the embeddings endpoint failed: full text alone was used

    @property
    def used(self) -> bool:
        return self.system is not None or self.unknown

    def metadata(self) -> dict[str, Any]:
        if not self.used:
            return {}
        found: dict[str, Any] = {"found": not self.unknown, "sources": self.sources}
        if self.error:
            found["error"] = self.error
        return {"knowledge": found}


def source(number: int, found: Found) -> dict[str, Any]:
    hit = found.hit
    excerpt = hit.content if len(hit.content) <= EXCERPT_CHARS else hit.content[:EXCERPT_CHARS].rsplit(" ", 1)[0] + "…"
    return {
        "n": number,
        "document_id": str(hit.document_id),
        "collection_id": str(hit.collection_id),
        "title": hit.title,
        "page": hit.page,
        "passage": hit.ordinal,
        "excerpt": excerpt,
        "url": hit.url,
        "score": round(hit.score, 5),
    }


def source_line(sources: list[dict[str, Any]]) -> str:
    """A short line naming the documents a reply came from (WhatsApp replies carry it)."""
    named: list[str] = []
    for item in sources:
        label = item["title"] + (f", p. {item['page']}" if item["page"] else "")
        if label not in named:
            named.append(label)
    return "Fonte: " + "; ".join(named[:3]) if named else ""


def passages_shown(system: str) -> str | None:
    """The passages in a grounding system message (None: it is not one)."""
    for instructions in (INSTRUCTIONS, ATTACHED_INSTRUCTIONS):
        if system.startswith(instructions):
            return system.removeprefix(instructions).strip()
    return None


def chat_source(number: int, passage: ChatPassage) -> dict[str, Any]:
    content = passage.content
    excerpt = content if len(content) <= EXCERPT_CHARS else content[:EXCERPT_CHARS].rsplit(" ", 1)[0] + "…"
    return {
        "n": number,
        "attachment_id": str(passage.attachment_id),
        "title": passage.title,
        "page": passage.page,
        "passage": passage.ordinal,
        "excerpt": excerpt,
        "score": passage.score,
    }


async def ground(
    db: Database,
    principal: Principal,
    settings: Settings,
    collections: list[uuid.UUID],
    asked: QuestionEmbedding,
    attached: list[ChatPassage],
) -> Grounding:
    """What the assistant is shown for the question: passages of its collections (`collections`) and
    of the documents attached in this chat (`attached`, already searched). Its own transaction, and
    none held while the question is embedded. Only an assistant with collections says it does not
    know."""
    in_chat = [item for item in attached if item.relevant]
    if not collections and not in_chat:
        return Grounding()
    error = None
    relevant: list[Found] = []
    if collections:
        try:
            model, vector = await asked.get()
        except EmbeddingError as exc:  # the question cannot be embedded now: full text still answers
            error, model, vector = str(exc), None, None
        async with db.transaction(principal.context()) as session:
            found = await KnowledgeService(session, principal, settings).search(
                asked.question, collections, PASSAGES_SHOWN, model=model, vector=vector
            )
        relevant = [item for item in found if item.relevant]
    if not relevant and not in_chat:
        return Grounding(unknown=True, error=error)
    sources = [chat_source(number, item) for number, item in enumerate(in_chat, 1)]
    texts = [item.content for item in in_chat]
    sources += [source(number, item) for number, item in enumerate(relevant, len(sources) + 1)]
    texts += [item.hit.content for item in relevant]
    passages = "\n\n".join(
        f"[{item['n']}] {item['title']}" + (f" (p. {item['page']})" if item["page"] else "") + f"\n{text}"
        for item, text in zip(sources, texts, strict=True)
    )
    instructions = INSTRUCTIONS if collections else ATTACHED_INSTRUCTIONS
    return Grounding(system=f"{instructions}\n\n{passages}", sources=sources, error=error)
