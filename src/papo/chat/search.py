"""Full-text search over the caller's own messages: accent-insensitive, ranked, highlighted, keyset-paged.

The index is a GIN over `to_tsvector('simple', papo_fold(content))`; queries are folded the same
way, so `integracao` finds `integração`. The candidate set is bounded by owner first (the
owner index and the RLS policy both name user_id), then ranked, so a common word costs the
caller's matches, not the tenant's.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from papo.errors import InvalidInput
from papo.pagination import decode_cursor, encode_cursor

# Must match papo_fold() in migration 0001 (a test compares the two character by character).
FOLD_FROM = "ÁÀÂÃÄÅáàâãäåÉÈÊËéèêëÍÌÎÏíìîïÓÒÔÕÖóòôõöÚÙÛÜúùûüÇçÑñÝýÿ"
FOLD_TO = "AAAAAAaaaaaaEEEEeeeeIIIIiiiiOOOOOoooooUUUUuuuuCcNnYyy"
_FOLD_TABLE = str.maketrans(FOLD_FROM, FOLD_TO)
_WORD = re.compile(r"\w+")
MAX_QUERY_CHARS = 256
SNIPPET_CHARS = 200
SNIPPET_LEAD = 60


def fold(value: str) -> str:
    return value.translate(_FOLD_TABLE).lower()


@dataclass
class Hit:
    message_id: uuid.UUID
    session_id: uuid.UUID
    session_title: str | None
    role: str
    created_at: datetime
    snippet: str
    highlights: list[tuple[int, int]]
    rank: float


def query_terms(query: str) -> set[str]:
    """Words a match can show for (websearch syntax: `-word` excludes, `or` is an operator)."""
    terms = set()
    for match in _WORD.finditer(fold(query)):
        word = match.group()
        excluded = match.start() > 0 and query[match.start() - 1] == "-"
        if word != "or" and not excluded:
            terms.add(word)
    return terms


def highlight(content: str, terms: set[str]) -> tuple[str, list[tuple[int, int]]]:
    """A window of the content around the first match, and the match ranges inside it."""
    matches = [(m.start(), m.end()) for m in _WORD.finditer(content) if fold(m.group()) in terms]
    first = matches[0][0] if matches else 0
    start = max(0, first - SNIPPET_LEAD)
    if start > 0:
        space = content.rfind(" ", 0, start)
        start = space + 1 if space >= 0 and start - space < 20 else start
    end = min(len(content), start + SNIPPET_CHARS)
    prefix = "…" if start > 0 else ""
    suffix = "…" if end < len(content) else ""
    snippet = prefix + content[start:end] + suffix
    shift = len(prefix) - start
    ranges = [(s + shift, e + shift) for s, e in matches if s >= start and e <= end]
    return snippet, ranges


async def search_messages(
    db: AsyncSession, tenant_id: uuid.UUID, user_id: str, query: str, *, limit: int, cursor: str | None
) -> tuple[list[Hit], str | None]:
    query = query.strip()
    if not query or len(query) > MAX_QUERY_CHARS or not _WORD.search(query):
        raise InvalidInput(f"search needs 1 to {MAX_QUERY_CHARS} characters with at least one word", field="q")
    after = ""
    params: dict[str, object] = {"tenant_id": tenant_id, "user_id": user_id, "q": query, "limit": limit + 1}
    if cursor is not None:
        rank, message_id = decode_cursor(cursor, float, uuid.UUID)
        # ts_rank_cd is real (float4); a float4 survives the round trip through float8 exactly.
        after = "AND (ts_rank_cd(m.search_vector, q.query), m.id) < (CAST(:rank AS real), :message_id)"
        params.update(rank=rank, message_id=message_id)
    statement = text(
        f"""
        SELECT m.id, m.session_id, s.title, m.role, m.created_at, m.content,
               ts_rank_cd(m.search_vector, q.query) AS rank
          FROM (SELECT websearch_to_tsquery('simple', papo_fold(:q)) AS query) q,
               messages m
          JOIN chat_sessions s ON s.tenant_id = m.tenant_id AND s.id = m.session_id
         WHERE m.tenant_id = :tenant_id AND m.user_id = :user_id
           AND m.search_vector @@ q.query
           AND s.status <> 'deleted'
           {after}
         ORDER BY rank DESC, m.id DESC
         LIMIT :limit
        """  # noqa: S608  (only fixed SQL fragments are interpolated)
    )
    rows = (await db.execute(statement, params)).all()
    terms = query_terms(query)
    hits = []
    for row in rows[:limit]:
        snippet, ranges = highlight(row.content, terms)
        hits.append(Hit(row.id, row.session_id, row.title, row.role, row.created_at, snippet, ranges, float(row.rank)))
    next_cursor = encode_cursor(hits[-1].rank, hits[-1].message_id) if len(rows) > limit else None
    return hits, next_cursor
