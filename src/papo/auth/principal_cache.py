"""Who a credential is, remembered per process: a request presenting a bearer token, API key or
session cookie seen a moment ago starts its transaction already scoped to that principal (BEGIN
and the row-level-security context in one round trip), instead of verifying the token and running
the authentication query after BEGIN.

Nothing is remembered that a change could make wrong without saying so. Every change that
withdraws access is announced at commit on `papo_access` (migration 0022): the process's listener
hands each notice to `notified`, which drops the entries it concerns. The cache answers only
while that listener is connected (a notice sent while it is down is lost) and is emptied each
time it connects again. The process that withdrew access empties its own cache right after its
commit (`withdraws_access`), so its next request never waits for the notice; other processes act
on it as soon as it arrives (milliseconds), as their open streams already do.

An entry lives at most `PAPO_AUTH_CACHE_SECONDS` (the authentication queries stamp an API key's
and a browser session's last use once a minute, which stays true) and never past its credential's
expiry. It is stored only once the authenticating transaction has committed (a just-in-time
provisioning that rolled back is not remembered) and only if no notice arrived while that
transaction ran: a removal that committed meanwhile is not overwritten by what the transaction
read before it."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.access_notices import Grant, Notice
from papo.db.engine import after_commit

if TYPE_CHECKING:
    from papo.auth.service import Principal

# session.info key: this transaction withdrew someone's access (see `withdraws_access`).
WITHDRAWS_ACCESS = "withdraws_access"
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class Credential:
    """What a request presents: `kind` is "bearer" (token or API key), "web" (papo's session
    cookie) or "clerk" (Clerk's session cookie, a token)."""

    kind: str
    secret: str

    def key(self) -> bytes:
        # the secret itself is never kept: a memory dump shows digests, not usable credentials
        return hashlib.sha256(f"{self.kind}\0{self.secret}".encode()).digest()


@dataclass(frozen=True)
class Recalled:
    principal: Principal
    web_session_id: uuid.UUID | None  # the browser session behind it, if any (signing out ends it)


@dataclass(frozen=True)
class _Entry:
    recalled: Recalled
    grant: Grant
    stored_at: float  # monotonic
    expires_at: float | None  # wall clock: the credential's own expiry


def withdraws_access(session: AsyncSession) -> None:
    """Called by code about to remove a membership, change a role, revoke a key, end a browser
    session or delete a user within `session`'s transaction."""
    session.info[WITHDRAWS_ACCESS] = True


class PrincipalCache:
    def __init__(self, ttl_seconds: float = 0.0, listening: Callable[[], bool] = lambda: False) -> None:
        self.ttl = ttl_seconds
        self.listening = listening
        self.entries: dict[bytes, _Entry] = {}
        # bumped by every notice: an authentication that saw a different value when it began may
        # have read what a notice since withdrew
        self.epoch = 0
        self.hits = self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def recall(self, credential: Credential | None) -> Recalled | None:
        if credential is None or not self.enabled:
            return None
        if not self.listening():
            self.entries.clear()  # the notices that would keep them true are not arriving
            return None
        key = credential.key()
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if time.monotonic() - entry.stored_at >= self.ttl or (
            entry.expires_at is not None and time.time() >= entry.expires_at
        ):
            del self.entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return entry.recalled

    def remember(self, session: AsyncSession, credential: Credential, recalled: Recalled, *, epoch_before: int) -> None:
        """Store `recalled` for `credential` once `session` commits, if no notice came since
        `epoch_before` (the epoch read before the authentication query ran)."""
        if not self.enabled:
            return

        def store() -> None:
            if self.epoch != epoch_before or not self.listening() or session.info.get(WITHDRAWS_ACCESS):
                return
            if len(self.entries) >= MAX_ENTRIES:
                self.entries.clear()  # rare (10,000 live credentials in one process); simplest bound
            principal = recalled.principal
            self.entries[credential.key()] = _Entry(
                recalled, Grant.of(principal, recalled.web_session_id), time.monotonic(), principal.expires_at
            )

        after_commit(session, store)

    def watch(self, session: AsyncSession) -> None:
        """Empty the cache after `session` commits if it withdrew access (`withdraws_access`)."""
        if self.enabled:
            after_commit(session, lambda: self.forget_all() if session.info.get(WITHDRAWS_ACCESS) else None)

    def notified(self, payload: str) -> None:
        """From the listener: an access change (any process), or MISSED after a reconnect."""
        self.epoch += 1
        notice = Notice.parse(payload)
        if notice is None:  # MISSED, or a payload this process cannot read: trust nothing remembered
            self.entries.clear()
            return
        for key in [key for key, entry in self.entries.items() if notice.concerns(entry.grant)]:
            del self.entries[key]

    def forget_all(self) -> None:
        self.epoch += 1
        self.entries.clear()
