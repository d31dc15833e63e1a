"""Messages posted by callers this process remembers, written together (migration 0042).

The message POST of a caller the process remembers, into a chat without an assistant, needs no
unit of work: one statement confirms the caller, inserts and publishes (papo_post_messages). Posts
that arrive while such statements are running are gathered like a group commit: the next statement
of their caller writes all of them, in one transaction. Under load that is one commit (one WAL
flush, one relay read, one stamping) for many messages, and a busy chat's row is locked once for
all of its messages instead of once each, every writer waiting for the commit before it.

At most WRITERS statements run at once, so one that waits (a chat locked by a long transaction)
holds up only the posts it carries; the others go on in the other writers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from papo.chat.models import MessageRole, MessageStatus
from papo.chat.records import StoredMessage, message_payload
from papo.chat.service import SESSION_NOT_FOUND, checked_content, checked_metadata
from papo.db.base import new_id
from papo.db.engine import Database, Resumption, ResumptionRefused
from papo.errors import DatabaseUnavailable, NotFound
from papo.realtime.service import published_alone
from papo.settings import Settings

POST_MESSAGES = "SELECT * FROM papo_post_messages($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
WRITERS = 4
# message_payload() needs timestamps; the database writes the real ones over these.
_STAMPED_BY_THE_DATABASE = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class _Post:
    message: StoredMessage  # as it will be stored, but for its two timestamps
    metadata_json: str
    payload_json: str  # message.created's payload without the timestamps
    answer: asyncio.Future[StoredMessage | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    def settle(self, outcome: StoredMessage | BaseException | None) -> None:
        if self.answer.done():
            return
        if isinstance(outcome, BaseException):
            self.answer.set_exception(outcome)
            self.answer.exception()  # retrieved: its request may have gone meanwhile
        else:
            self.answer.set_result(outcome)


class PostsAtOnce:
    def __init__(self, db: Database, settings: Settings, writers: int = WRITERS) -> None:
        self.db = db
        self.settings = settings
        self.writers = writers
        self.pending: dict[Resumption, list[_Post]] = {}  # by caller, in arrival order
        self.active = 0  # writers running
        self.tasks: set[asyncio.Task[None]] = set()
        self.statements = 0

    async def post(
        self,
        remembered: Resumption,
        session_id: uuid.UUID,
        role: MessageRole,
        content: str,
        metadata: dict[str, Any] | None,
    ) -> StoredMessage | None:
        """`ChatService.add_message` for a caller this process remembers, committed before it returns.
        The database confirms the caller first (ResumptionRefused when it no longer holds).

        None, with nothing written, for a message that needs the full request path: a user's message
        in a chat with an assistant starts a reply."""
        assert remembered.context.tenant_id is not None
        assert remembered.context.user_id is not None
        message = StoredMessage(
            id=new_id(),
            session_id=session_id,
            role=role.value,
            content=checked_content(self.settings, content),
            status=MessageStatus.sent.value,
            metadata=checked_metadata(self.settings, metadata),
            created_at=_STAMPED_BY_THE_DATABASE,
            updated_at=_STAMPED_BY_THE_DATABASE,
        )
        payload = message_payload(message)
        del payload["created_at"], payload["updated_at"]
        post = _Post(message, _compact(message.metadata), _compact(payload))
        self.pending.setdefault(remembered, []).append(post)
        if self.active < self.writers:
            self.active += 1
            writer = asyncio.create_task(self._write_pending(), name="papo-posts-at-once")
            self.tasks.add(writer)
            writer.add_done_callback(self.tasks.discard)
        # a request that goes away does not take the others' statement with it
        return await asyncio.shield(post.answer)

    async def _write_pending(self) -> None:
        try:
            while self.pending:
                remembered = next(iter(self.pending))
                posts = self.pending.pop(remembered)
                try:
                    await self._write(remembered, posts)
                except BaseException as exc:  # never leave a request waiting
                    for post in posts:
                        post.settle(exc)
                    if not isinstance(exc, Exception):
                        raise
        finally:
            # counted down with no await after the last look at `pending`: a post arriving later
            # always finds a free writer or one that will still look
            self.active -= 1

    async def _write(self, remembered: Resumption, posts: list[_Post]) -> None:
        try:
            outcomes = await self._statement(remembered, posts)
        except (ResumptionRefused, DatabaseUnavailable):
            raise  # the same answer for every post of the caller
        except (asyncpg.NoDataFoundError, asyncpg.InsufficientPrivilegeError) as exc:
            if len(posts) == 1:
                raise NotFound(SESSION_NOT_FOUND) from exc
            outcomes = None
        except Exception:
            if len(posts) == 1:
                raise
            outcomes = None
        if outcomes is None:  # nothing was written: each alone, for each its own answer
            for post in posts:
                try:
                    await self._write(remembered, [post])
                except Exception as exc:
                    post.settle(exc)
            return
        for post, outcome in zip(posts, outcomes, strict=True):
            post.settle(outcome)

    async def _statement(self, remembered: Resumption, posts: list[_Post]) -> list[StoredMessage | NotFound | None]:
        context = remembered.context
        self.statements += 1
        rows = await self.db.rows(
            POST_MESSAGES,
            context.tenant_id,
            context.user_id,
            context.role,
            remembered.api_key_id,
            remembered.web_session_id,
            [post.message.id for post in posts],
            [post.message.session_id for post in posts],
            [post.message.role for post in posts],
            [post.message.content for post in posts],
            [post.metadata_json for post in posts],
            [post.payload_json for post in posts],
        )
        outcomes: list[StoredMessage | NotFound | None] = []
        for post, row in zip(posts, rows, strict=True):
            if row["outcome"] == "stored":
                stamp = row["created_at"]
                outcomes.append(dataclasses.replace(post.message, created_at=stamp, updated_at=stamp))
            elif row["outcome"] == "reply":
                outcomes.append(None)
            else:
                outcomes.append(NotFound(SESSION_NOT_FOUND))
        if any(isinstance(outcome, StoredMessage) for outcome in outcomes):
            published_alone(self.db)
        return outcomes


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
