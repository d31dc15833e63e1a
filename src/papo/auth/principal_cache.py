"""Who a credential is, remembered per process: a request presenting a bearer token, API key or
session cookie seen a moment ago skips the token's signature check and the authentication query,
and its transaction opens already scoped (BEGIN and the context in one round trip).

Remembering never decides access. The database confirms the remembered principal at every BEGIN
(papo_resume_context, migration 0032): the membership still has that role, the API key is not
revoked, the browser session has not ended. When it refuses, the entry is dropped and the request
authenticates from scratch, so access withdrawn by any process, or by hand in SQL, is refused
from the next request on.

An entry lives at most `PAPO_AUTH_CACHE_SECONDS` (the authentication queries stamp an API key's
and a browser session's last use once a minute, which stays true) and never past the credential's
own expiry. It is stored only once the authenticating transaction has committed, so a
just-in-time provisioning that rolled back is not remembered."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from papo.auth.service import Principal
from papo.db.engine import Resumption, after_commit, begin_in

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

    def resumption(self) -> Resumption:
        return Resumption(self.principal.context(), self.principal.api_key_id, self.web_session_id)


@dataclass(frozen=True)
class _Entry:
    recalled: Recalled
    stored_at: float  # monotonic
    expires_at: float | None  # wall clock: the credential's own expiry


class PrincipalCache:
    def __init__(self, ttl_seconds: float = 0.0) -> None:
        self.ttl = ttl_seconds
        self.entries: OrderedDict[bytes, _Entry] = OrderedDict()  # least recently used first
        self.hits = self.misses = self.refusals = 0

    def recall(self, credential: Credential | None) -> Recalled | None:
        if credential is None or self.ttl <= 0:
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
        self.entries.move_to_end(key)
        return entry.recalled

    def remember(self, session: AsyncSession, credential: Credential, recalled: Recalled) -> None:
        """Store `recalled` for `credential` once `session` commits."""
        if self.ttl <= 0 or begin_in(recalled.resumption()) is None:
            return  # (an id a literal cannot hold is authenticated every time instead)

        def store() -> None:
            while len(self.entries) >= MAX_ENTRIES:
                self.entries.popitem(last=False)
            principal = recalled.principal
            self.entries[credential.key()] = _Entry(recalled, time.monotonic(), principal.expires_at)

        after_commit(session, store)

    def refused(self, credential: Credential) -> None:
        """The database no longer confirms what was remembered for `credential`."""
        self.refusals += 1
        self.entries.pop(credential.key(), None)
