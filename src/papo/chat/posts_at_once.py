"""Messages posted by callers this process remembers, written together (migration 0042).

The message POST of a caller the process remembers, into a chat without an assistant, needs no
unit of work: one statement confirms the caller, inserts and publishes (papo_post_messages). Posts
that arrive while such statements are running are gathered like a group commit: the next statement
of their caller writes all of them, in one transaction. Under load that is one commit (one WAL
flush, one relay read, one stamping) for many messages, and a busy chat's row is locked once for
all of its messages instead of once each, every writer waiting for the commit before it.

At most WRITERS statements run at once, one per caller at a time. A statement waits at most
200 ms for a chat's lock (the function's lock_timeout); its posts then take the full request path,
so a chat kept locked holds up no writer for long, and its caller's posts only."""

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
    payload_json: str  # message.created's payload without the timestamps and the metadata
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
        self.writing: set[Resumption] = set()  # callers with a statement running
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
        del payload["created_at"], payload["updated_at"], payload["metadata"]  # the database's
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
        stopped: BaseException | None = None
        try:
            while (remembered := self._next_caller()) is not None:
                posts = self.pending.pop(remembered)
                self.writing.add(remembered)
                try:
                    await self._write(remembered, posts)
                except BaseException as exc:  # never leave a request waiting
                    for post in posts:
                        post.settle(exc)
                    if not isinstance(exc, Exception):
                        stopped = exc
                        raise
                finally:
                    self.writing.discard(remembered)
        finally:
            # counted down with no await after the last look at `pending`: a post arriving later
            # always finds a free writer or one that will still look
            self.active -= 1
            if stopped is not None and self.active == 0:  # the loop is stopping: nobody will look
                for waiting in self.pending.values():
                    for post in waiting:
                        post.settle(stopped)
                self.pending.clear()

    def _next_caller(self) -> Resumption | None:
        """The caller who has waited longest among those with no statement running: one statement per
        caller at a time, so a caller's posts stay in order and no caller holds more than one writer
        (a chat kept locked holds up its own caller's posts, not everyone's)."""
        return next((caller for caller in self.pending if caller not in self.writing), None)

    async def _write(self, remembered: Resumption, posts: list[_Post]) -> None:
        try:
            rows = await self._statement(remembered, posts)
        except (ResumptionRefused, DatabaseUnavailable):
            raise  # the same answer for every post of the caller
        except asyncpg.LockNotAvailableError:
            for post in posts:  # a chat locked for longer than the statement waits: the full path
                post.settle(None)
            return
        except (asyncpg.NoDataFoundError, asyncpg.InsufficientPrivilegeError) as exc:
            if len(posts) == 1:
                raise NotFound(SESSION_NOT_FOUND) from exc
            rows = None
        except Exception:
            if len(posts) == 1:
                raise
            rows = None
        if rows is None:  # nothing was written: each alone, for each its own answer
            for post in posts:
                try:
                    await self._write(remembered, [post])
                except Exception as exc:
                    post.settle(exc)
            return
        # committed: from here on, nothing may send a post to be written again
        for post, row in zip(posts, rows, strict=True):
            if row["outcome"] == "stored":
                stamp = row["created_at"]
                post.settle(
                    dataclasses.replace(post.message, metadata=row["metadata"], created_at=stamp, updated_at=stamp)
                )
            elif row["outcome"] == "reply":
                post.settle(None)
            else:
                post.settle(NotFound(SESSION_NOT_FOUND))
        if any(row["outcome"] == "stored" for row in rows):
            published_alone(self.db)

    async def _statement(self, remembered: Resumption, posts: list[_Post]) -> list[Any]:
        context = remembered.context
        self.statements += 1
        return await self.db.rows(
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


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
