"""Streamed export of one session or all of a user's sessions as JSON, Markdown or CSV.

Messages are read through a server-side cursor and written out as they arrive, so memory stays
flat however long the history is. The export runs in its own transaction under the caller's
row-level-security context (the request's transaction has ended by the time bytes flow).
"""

from __future__ import annotations

import csv
import enum
import io
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.chat.models import ChatSession, Message, SessionStatus
from papo.chat.schemas import MessageOut, SessionOut
from papo.db.engine import Database

BATCH = 500


class ExportFormat(enum.StrEnum):
    json = "json"
    markdown = "markdown"
    csv = "csv"


MEDIA_TYPES = {
    ExportFormat.json: "application/json",
    ExportFormat.markdown: "text/markdown; charset=utf-8",
    ExportFormat.csv: "text/csv; charset=utf-8",
}
EXTENSIONS = {ExportFormat.json: "json", ExportFormat.markdown: "md", ExportFormat.csv: "csv"}
CSV_COLUMNS = ["session_id", "session_title", "message_id", "created_at", "role", "status", "content"]


def filename(fmt: ExportFormat, session_id: uuid.UUID | None) -> str:
    scope = str(session_id) if session_id else "all"
    return f"papo-export-{scope}-{datetime.now(UTC):%Y%m%d}.{EXTENSIONS[fmt]}"


async def _sessions(db: AsyncSession, principal: Principal, session_id: uuid.UUID | None) -> list[ChatSession]:
    query = select(ChatSession).where(
        ChatSession.tenant_id == principal.tenant_id,
        ChatSession.user_id == principal.user_id,
        ChatSession.status != SessionStatus.deleted,
    )
    if session_id is not None:
        query = query.where(ChatSession.id == session_id)
    return list((await db.scalars(query.order_by(ChatSession.created_at, ChatSession.id))).all())


async def _messages(db: AsyncSession, chat: ChatSession) -> AsyncIterator[Message]:
    query = (
        select(Message)
        .where(Message.tenant_id == chat.tenant_id, Message.session_id == chat.id)
        .order_by(Message.created_at, Message.id)
        .execution_options(yield_per=BATCH)
    )
    async for message in await db.stream_scalars(query):
        yield message


# A cell starting with one of these is a formula to a spreadsheet (=HYPERLINK(...), +cmd|...,
# @SUM(...)), and a leading tab or carriage return hides the character after it; some spreadsheets
# also take the full-width forms, or skip leading spaces. Such cells get a leading single quote
# (OWASP's advice), which spreadsheets show as text and do not run.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(value: str) -> str:
    return "'" + value if value.lstrip(" ").startswith(FORMULA_STARTS) else value


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([csv_cell(value) for value in values])
    return buffer.getvalue()


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


async def stream_export(
    database: Database, principal: Principal, fmt: ExportFormat, session_id: uuid.UUID | None = None
) -> AsyncIterator[str]:
    async with database.transaction(principal.context()) as db:
        chats = await _sessions(db, principal, session_id)
        if fmt is ExportFormat.csv:
            yield _csv_line(CSV_COLUMNS)
        elif fmt is ExportFormat.json:
            yield '{"exported_at": ' + _json(datetime.now(UTC).isoformat()) + ', "sessions": ['
        for index, chat in enumerate(chats):
            session_out = SessionOut.model_validate(chat)
            if fmt is ExportFormat.json:
                header = session_out.model_dump(mode="json")
                yield ("," if index else "") + _json(header)[:-1] + ', "messages": ['
            elif fmt is ExportFormat.markdown:
                yield f"# {chat.title or 'Untitled chat'}\n\n_{chat.created_at:%Y-%m-%d %H:%M} UTC · {chat.status}_\n\n"
            first = True
            async for message in _messages(db, chat):
                if fmt is ExportFormat.json:
                    yield ("" if first else ",") + MessageOut.model_validate(message).model_dump_json()
                elif fmt is ExportFormat.markdown:
                    yield f"**{message.role}** · {message.created_at:%Y-%m-%d %H:%M}\n\n{message.content}\n\n"
                else:
                    yield _csv_line(
                        [
                            str(chat.id),
                            chat.title or "",
                            str(message.id),
                            message.created_at.isoformat(),
                            message.role,
                            message.status.value,
                            message.content,
                        ]
                    )
                first = False
            if fmt is ExportFormat.json:
                yield "]}"
            elif fmt is ExportFormat.markdown:
                yield "---\n\n"
        if fmt is ExportFormat.json:
            yield "]}"
