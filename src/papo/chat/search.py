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

from papo.errors import BadRequest, InvalidInput
from papo.pagination import decode_cursor, encode_cursor

# Must match papo_fold() in migration 0001 (a test compares the two character by character).
FOLD_FROM = "ÁÀÂÃÄÅáàâãäåÉÈÊËéèêëÍÌÎÏíìîïÓÒÔÕÖóòôõöÚÙÛÜúùûüÇçÑñÝýÿ"
FOLD_TO = "AAAAAAaaaaaaEEEEeeeeIIIIiiiiOOOOOoooooUUUUuuuuCcNnYyy"
_FOLD_TABLE = str.maketrans(FOLD_FROM, FOLD_TO)
_WORD = re.compile(r"\w+")
MAX_QUERY_CHARS = 256
SNIPPET_CHARS = 200
SNIPPET_LEAD = 60
WINDOW = 1000


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


SEARCH_SQL = text(
    """
    WITH q AS (SELECT websearch_to_tsquery('simple', papo_fold(:q)) AS query),
    candidates AS MATERIALIZED (
      SELECT c.candidate_id, c.candidate_created_at
        FROM q, papo_search_candidates(q.query, :window_before_at, :window_before_id, :window) c
    ),
    -- LIMIT 1 keeps the lookups lateral (one primary-key probe per candidate); flattened
    -- into a join, the planner may prefer scanning a whole session's history instead.
    ranked AS (
      SELECT m.id, m.session_id, s.title, m.role, m.created_at, m.content,
             ts_rank_cd(m.search_vector, q.query) AS rank
        FROM candidates c
       CROSS JOIN q
       CROSS JOIN LATERAL (
         SELECT * FROM messages WHERE messages.tenant_id = :tenant_id AND messages.id = c.candidate_id
            AND messages.user_id = :user_id LIMIT 1) m
       CROSS JOIN LATERAL (
         SELECT title, status FROM chat_sessions
          WHERE chat_sessions.tenant_id = m.tenant_id AND chat_sessions.id = m.session_id LIMIT 1) s
       WHERE s.status <> 'deleted'
    )
    -- One row per hit, or a single row of NULLs when this window has none left: the window's
    -- size and oldest key always come back, so the caller can move on to the next window.
    SELECT r.*, w.window_size, w.oldest_at, w.oldest_id
      FROM (SELECT count(*) AS window_size,
                   min(candidate_created_at) AS oldest_at,
                   (array_agg(candidate_id ORDER BY candidate_created_at, candidate_id))[1] AS oldest_id
              FROM candidates) w
      LEFT JOIN LATERAL (
        SELECT * FROM ranked
         WHERE CAST(:rank AS real) IS NULL
            OR (ranked.rank, ranked.id) < (CAST(:rank AS real), CAST(:after_id AS uuid))
         ORDER BY ranked.rank DESC, ranked.id DESC
         LIMIT :limit
      ) r ON true
    """
)


async def search_messages(
    db: AsyncSession, tenant_id: uuid.UUID, user_id: str, query: str, *, limit: int, cursor: str | None
) -> tuple[list[Hit], str | None]:
    """Ranked matches, newest windows first.

    Matches are taken newest-first in windows of WINDOW messages and ranked within each window, so a
    word found in every other message costs one window, not every match the user ever had, while a
    rare word from years ago is still found (the candidates come from the GIN index). The cursor
    walks the rest of the window by rank, then moves on to the next, older window."""
    query = query.strip()
    if not query or len(query) > MAX_QUERY_CHARS or not _WORD.search(query):
        raise InvalidInput(f"search needs 1 to {MAX_QUERY_CHARS} characters with at least one word", field="q")
    window_before_at, window_before_id, rank, after_id = None, None, None, None
    if cursor is not None:
        window_before_at, window_before_id, rank, after_id = _decode_search_cursor(cursor)
    params = {
        "q": query,
        "tenant_id": tenant_id,
        "user_id": user_id,
        "window": WINDOW,
        "window_before_at": window_before_at,
        "window_before_id": window_before_id,
        "rank": rank,
        "after_id": after_id,
        "limit": limit + 1,
    }
    result = (await db.execute(SEARCH_SQL, params)).all()
    rows = [row for row in result if row.id is not None]
    terms = query_terms(query)
    hits = []
    for row in rows[:limit]:
        snippet, ranges = highlight(row.content, terms)
        hits.append(Hit(row.id, row.session_id, row.title, row.role, row.created_at, snippet, ranges, float(row.rank)))
    next_cursor = None
    if len(rows) > limit:
        next_cursor = encode_cursor(window_before_at, window_before_id, hits[-1].rank, hits[-1].message_id)
    elif result[0].window_size >= WINDOW:
        next_cursor = encode_cursor(result[0].oldest_at, result[0].oldest_id, None, None)
    return hits, next_cursor


def _decode_search_cursor(cursor: str) -> tuple[datetime | None, uuid.UUID | None, float | None, uuid.UUID | None]:
    raw = decode_cursor(cursor, object, object, object, object)
    window_at, window_id, rank, after_id = raw
    try:
        return (
            datetime.fromisoformat(window_at) if window_at is not None else None,
            uuid.UUID(window_id) if window_id is not None else None,
            float(rank) if rank is not None else None,
            uuid.UUID(after_id) if after_id is not None else None,
        )
    except (TypeError, ValueError) as exc:
        raise BadRequest("invalid cursor; use the cursor from a previous page unchanged") from exc
