"""Which server process runs which WhatsApp session, and the command channel between processes.

A process runs a session only while it holds the session's advisory lock on its own connection (the
owner connection); a lifecycle command for a session another process runs is NOTIFYed to that
owner, which acts on it if it still holds the lock. The locks go with the connection: when it is
lost, this process lets all its sessions go, and another process may take them over.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg
import structlog

from papo.db.engine import application_name
from papo.whatsapp.transports.base import SessionKey

log = structlog.get_logger(__name__)
COMMAND_CHANNEL = "papo_whatsapp_commands"
OWNER_NAME = "papo-whatsapp-owner"

# How many sessions each live process runs: the session locks its owner connection holds. Every
# process keeps that connection from start-up, so one that runs nothing shows with 0; one that died
# is gone with its connection. (The runtime role sees its own connections in pg_stat_activity.)
PROCESS_LOADS_SQL = """
SELECT a.pid AS owner_pid, count(l.pid) AS sessions
  FROM pg_stat_activity a
  LEFT JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted
 WHERE a.application_name LIKE $1 AND a.datname = current_database()
 GROUP BY a.pid
"""


@dataclass(frozen=True)
class Placement:
    """Where a session should run: here, in another process (its owner connection's pid), or
    nowhere because every process is at the per-process cap."""

    here: bool
    elsewhere: int | None = None


def lock_id(key: SessionKey) -> int:
    """The session's advisory lock key (64 bits of a hash of its ids)."""
    digest = hashlib.sha256(f"whatsapp:{key.tenant_id}:{key.session_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class SessionRunner(Protocol):
    """What the owning process does when told (the hub)."""

    async def perform(self, key: SessionKey, action: str) -> None: ...

    async def send_stored(self, key: SessionKey, message_id: uuid.UUID) -> None: ...

    async def shutdown(self) -> None: ...


@dataclass
class SessionOwnership:
    """This process's session locks, held on its owner connection, which also hears commands."""

    runner: SessionRunner
    dsn: str | None = None
    # Whether this process is given new sessions and adopts orphans (PAPO_WHATSAPP_ADOPT_ORPHANS): one
    # that is not shows under another application name, which placement does not count.
    placeable: bool = True
    connection: asyncpg.Connection | None = None
    owned: set[SessionKey] = field(default_factory=set)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one statement at a time on the connection

    async def connect(self) -> None:
        """The connection that holds this process's session locks and hears lifecycle commands."""
        if self.dsn is None or (self.connection is not None and not self.connection.is_closed()):
            return
        name = OWNER_NAME if self.placeable else f"{OWNER_NAME}-fixed"
        self.connection = await asyncpg.connect(self.dsn, server_settings={"application_name": application_name(name)})
        await self.connection.add_listener(COMMAND_CHANNEL, self._commanded)
        self.connection.add_termination_listener(self._connection_lost)

    def _connection_lost(self, *_: Any) -> None:
        # the locks went with the connection: another process may take the sessions over now
        log.warning("whatsapp ownership connection lost; letting this process's sessions go")
        self.connection = None
        self.owned.clear()
        self._background(self.runner.shutdown())

    def _background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def claim(self, key: SessionKey) -> bool:
        """Whether this process owns the session now (taking its lock if nobody holds it)."""
        if self.dsn is None or key in self.owned:
            return True  # a single-process setup owns everything it runs
        async with self.lock:
            await self.connect()
            assert self.connection is not None
            if await self.connection.fetchval("SELECT pg_try_advisory_lock($1)", lock_id(key)):
                self.owned.add(key)
                return True
            return False

    async def placement(self, cap: int) -> Placement:
        """The process that runs the fewest sessions (this one on a tie), below `cap` (0: no cap)."""
        if self.dsn is None:
            return Placement(here=True)
        async with self.lock:
            await self.connect()
            assert self.connection is not None
            me = self.connection.get_server_pid()
            rows = await self.connection.fetch(PROCESS_LOADS_SQL, f"{OWNER_NAME}:%")
        loads = {int(row["owner_pid"]): int(row["sessions"]) for row in rows}
        if self.placeable:
            loads[me] = len(self.owned)  # what this process knows best
        if not loads:
            return Placement(here=True)  # no process takes sessions: it runs where it was asked for
        open_loads = {pid: load for pid, load in loads.items() if cap <= 0 or load < cap}
        if not open_loads:
            return Placement(here=False)
        fewest = min(open_loads.values())
        if open_loads.get(me) == fewest:
            return Placement(here=True)
        return Placement(here=False, elsewhere=min(pid for pid, load in open_loads.items() if load == fewest))

    async def tell_process(self, owner_pid: int, key: SessionKey, action: str) -> None:
        """NOTIFY the process whose owner connection is `owner_pid` to act on a session nobody runs."""
        payload = json.dumps(
            {"tenant": str(key.tenant_id), "session": str(key.session_id), "action": action, "pid": owner_pid}
        )
        async with self.lock:
            assert self.connection is not None
            await self.connection.execute("SELECT pg_notify($1, $2)", COMMAND_CHANNEL, payload)

    async def release(self, key: SessionKey) -> None:
        if key in self.owned and self.connection is not None:
            self.owned.discard(key)
            async with self.lock:
                with contextlib.suppress(Exception):
                    await self.connection.fetchval("SELECT pg_advisory_unlock($1)", lock_id(key))

    async def tell_owner(self, key: SessionKey, action: str, **extra: str) -> None:
        """NOTIFY the process that holds `key` (see `_commanded`); it acts if it still owns it."""
        payload = json.dumps({"tenant": str(key.tenant_id), "session": str(key.session_id), "action": action, **extra})
        async with self.lock:
            assert self.connection is not None
            await self.connection.execute("SELECT pg_notify($1, $2)", COMMAND_CHANNEL, payload)

    def _commanded(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        try:
            message = json.loads(payload)
            key = SessionKey(uuid.UUID(message["tenant"]), uuid.UUID(message["session"]))
            action = str(message.get("action"))
            forwarded = uuid.UUID(message["message"]) if action == "send" else None
            placed_with = int(message["pid"]) if "pid" in message else None
        except (ValueError, KeyError, TypeError):
            return
        if placed_with is not None:  # a session nobody runs, placed with the process of that pid
            if self.connection is not None and placed_with == self.connection.get_server_pid():
                self._background(self.runner.perform(key, action))
            return
        if key not in self.owned:
            return
        if forwarded is not None:
            self._background(self.runner.send_stored(key, forwarded))
        else:
            self._background(self.runner.perform(key, action))

    async def close(self) -> None:
        if self.connection is not None and not self.connection.is_closed():
            self.connection.remove_termination_listener(self._connection_lost)
            with contextlib.suppress(Exception):
                await self.connection.close()
