"""Rate limits and quotas shared by every server process: in PostgreSQL by default, in Redis when
PAPO_REDIS_URL is set.

Each limit is a GCRA (generic cell rate algorithm) bucket: `count` units per `period`, all of
which may be spent at once, refilling steadily. The state per key is one number, the moment the
allowance is whole again, so a check is one atomic call on either backend, using that backend's
clock. Keys are hashed before they are stored: they name users, API keys and addresses.

Answers carry RateLimit-Limit / -Remaining / -Reset and RateLimit-Policy (the IETF httpapi
draft's fields); a refusal is a 429 problem with Retry-After.

Sign-in is guarded differently (`RateLimiter.sign_in`): a progressive delay per account from one
address (an IPv6 /64), per address with a longer cap, and per account across every address only
after many failures. Each attempt is counted as a failure before the password is checked, so
concurrent guesses cannot all pass a check made before any of them failed; a right password clears
the account's guards. Guessing from one place therefore never holds back the owner signing in from
another; only a campaign from many addresses reaches the account-wide guard, and its delay is capped."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import asyncpg
from starlette.requests import HTTPConnection, Request

from papo.db.engine import application_name
from papo.db.errors import database_unreachable
from papo.errors import DatabaseUnavailable, QuotaExceeded, Unauthorized
from papo.ops.metrics import RATE_LIMITED
from papo.settings import Settings

MINUTE, DAY = 60.0, 86400.0
STATE_KEY = "rate_limits"  # request.state: decisions whose headers go on the response
SIGN_IN_FIRST_DELAY = 30.0  # seconds; doubles with every further failure up to the configured cap
SIGN_IN_FORGET = 15 * MINUTE  # quiet time (after the last delay ran out) that clears a sign-in guard
ACCOUNT_GUARDS = frozenset({"sign_in_account", "sign_in_account_everywhere"})  # the right password clears


class Caller(Protocol):
    """Who a request acts for (papo.auth's Principal has this shape; limits need nothing more)."""

    @property
    def tenant_id(self) -> uuid.UUID: ...

    @property
    def user_id(self) -> str | None: ...

    @property
    def api_key_id(self) -> uuid.UUID | None: ...


T = TypeVar("T")


@dataclass(frozen=True)
class Limit:
    name: str
    count: int
    period: float

    @property
    def interval(self) -> float:
        return self.period / self.count


@dataclass(frozen=True)
class Penalty:
    """A progressive delay: the first `free` - 1 failures cost nothing, then each further attempt
    waits `first_delay` seconds, doubling per failure up to `max_delay`. `forget` quiet seconds
    after the last delay ran out, the count starts afresh."""

    name: str
    free: int
    first_delay: float
    max_delay: float
    forget: float

    @property
    def limit(self) -> Limit:  # what the RateLimit-Policy header describes
        return Limit(self.name, self.free, self.forget)

    def delay(self, failures: int) -> float:
        """The wait that `failures` counted failures earn (the backends compute the same)."""
        if failures < self.free:
            return 0.0
        return min(self.max_delay, self.first_delay * 2.0 ** min(failures - self.free, 60))


@dataclass(frozen=True)
class Attempt:
    """A backend's answer to one sign-in attempt: let through (and counted) or told to wait."""

    allowed: bool
    failures: int  # counted, this attempt included when allowed
    not_before: float  # epoch seconds: when the next attempt may start
    now: float  # the backend's clock

    @property
    def wait(self) -> float:
        return max(0.0, self.not_before - self.now)


@dataclass(frozen=True)
class Decision:
    limit: Limit
    allowed: bool
    remaining: int
    reset_seconds: float  # until the allowance is whole again
    retry_after_seconds: float  # until one more unit is allowed (0 when allowed)

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit.count),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset_seconds)),
            "RateLimit-Policy": f'{self.limit.count};w={int(self.limit.period)};name="{self.limit.name}"',
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_seconds)))
        return headers


class RateLimited(QuotaExceeded):
    slug, title = "rate-limited", "Too many requests"

    def __init__(self, decision: Decision, detail: str | None = None) -> None:
        wait = max(1, math.ceil(decision.retry_after_seconds))
        super().__init__(
            detail
            or f"limit {decision.limit.name!r} reached ({decision.limit.count} per "
            f"{_period_words(decision.limit.period)}); try again in {wait} s",
            headers=decision.headers(),
        )
        self.decision = decision


def _refusal(penalty: Penalty, attempt: Attempt) -> Decision:
    return Decision(penalty.limit, False, remaining=0, reset_seconds=attempt.wait, retry_after_seconds=attempt.wait)


def _period_words(seconds: float) -> str:
    return {MINUTE: "minute", 3600.0: "hour", DAY: "day"}.get(seconds, f"{seconds:g} s")


class Backend(Protocol):
    async def gcra(self, key: bytes, interval: float, period: float, consume: bool) -> tuple[bool, float, float]:
        """(allowed, arrival time of the bucket, the backend's clock), both in epoch seconds."""
        ...

    async def attempt(self, key: bytes, penalty: Penalty) -> Attempt:
        """One guarded attempt, atomically: refused while the key waits, else counted as a failure."""
        ...

    async def settle(self, key: bytes, attempt: Attempt, *, clear: bool) -> None:
        """An allowed attempt that was no failure: clear the key, or (clear=False) take the attempt back."""
        ...

    async def close(self) -> None: ...


async def _nothing_to_reset(_connection: asyncpg.Connection) -> None:
    return None


class PostgresBackend:
    """Checks on a small asyncpg pool of their own: one statement that commits by itself, on the hot
    path of every message, so no unit of work and no ORM session around it."""

    def __init__(self, dsn: str, *, pool_size: int = 4) -> None:
        self.dsn = dsn
        self.pool_size = pool_size
        self.pool: asyncpg.Pool | None = None
        self.opening = asyncio.Lock()

    async def _pool(self) -> asyncpg.Pool:
        if self.pool is None:
            async with self.opening:
                if self.pool is None:
                    self.pool = await asyncpg.create_pool(
                        self.dsn,
                        min_size=1,
                        max_size=self.pool_size,
                        server_settings={"application_name": application_name("papo-limits")},
                        # Each check is one self-committing call that leaves no session state, so
                        # the default reset on release (UNLISTEN, RESET ALL, ...: a second round
                        # trip per check) has nothing to undo; an open transaction is still
                        # rolled back by asyncpg before this runs.
                        reset=_nothing_to_reset,
                    )
        return self.pool

    async def _fetchrow(self, query: str, *args: Any) -> Any:
        pool = await self._pool()
        try:
            return await pool.fetchrow(query, *args)
        except Exception as exc:
            if database_unreachable(exc):
                raise DatabaseUnavailable from exc
            raise

    async def gcra(self, key: bytes, interval: float, period: float, consume: bool) -> tuple[bool, float, float]:
        row = await self._fetchrow(
            "SELECT allowed, tat, now_epoch FROM papo_rate_limit($1, $2, $3, $4)", key, interval, period, consume
        )
        return bool(row["allowed"]), float(row["tat"]), float(row["now_epoch"])

    async def attempt(self, key: bytes, penalty: Penalty) -> Attempt:
        row = await self._fetchrow(
            "SELECT allowed, failures, not_before, now_epoch FROM papo_sign_in_attempt($1, $2, $3, $4, $5)",
            key,
            penalty.free,
            penalty.first_delay,
            penalty.max_delay,
            penalty.forget,
        )
        return Attempt(bool(row["allowed"]), int(row["failures"]), float(row["not_before"]), float(row["now_epoch"]))

    async def settle(self, key: bytes, attempt: Attempt, *, clear: bool) -> None:
        await self._fetchrow("SELECT papo_sign_in_settle($1, $2, $3, $4)", key, clear, attempt.not_before, attempt.now)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()


# The same algorithm as papo_rate_limit() (migration 0015), atomic as one script, on Redis's clock.
_REDIS_GCRA = """
local interval = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local base = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
local next_tat = base + interval
if next_tat - period <= now then
  if ARGV[3] == '1' then
    redis.call('SET', KEYS[1], string.format('%.6f', next_tat), 'PX', math.ceil((next_tat - now) * 1000))
    return {1, string.format('%.6f', next_tat), string.format('%.6f', now)}
  end
  return {1, string.format('%.6f', base), string.format('%.6f', now)}
end
return {0, string.format('%.6f', base), string.format('%.6f', now)}
"""


# papo_sign_in_attempt() and papo_sign_in_settle() (migration 0023), on Redis's clock.
_REDIS_SIGN_IN_ATTEMPT = """
local free = tonumber(ARGV[1])
local first_delay = tonumber(ARGV[2])
local max_delay = tonumber(ARGV[3])
local forget = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local stored = redis.call('HMGET', KEYS[1], 'failures', 'not_before', 'forget_at')
local failures = tonumber(stored[1]) or 0
local not_before = tonumber(stored[2]) or 0
if now >= (tonumber(stored[3]) or 0) then
  failures = 0
  not_before = 0
end
if now < not_before then
  return {0, failures, string.format('%.6f', not_before), string.format('%.6f', now)}
end
failures = failures + 1
local delay = 0
if failures >= free then
  delay = math.min(max_delay, first_delay * 2 ^ math.min(failures - free, 60))
end
not_before = now + delay
redis.call('HSET', KEYS[1], 'failures', failures, 'not_before', string.format('%.6f', not_before),
           'forget_at', string.format('%.6f', not_before + forget))
redis.call('PEXPIRE', KEYS[1], math.ceil((not_before + forget - now) * 1000))
return {1, failures, string.format('%.6f', not_before), string.format('%.6f', now)}
"""

_REDIS_SIGN_IN_SETTLE = """
if ARGV[1] == '1' then
  return redis.call('DEL', KEYS[1])
end
local stored = redis.call('HMGET', KEYS[1], 'failures', 'not_before')
if not stored[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'failures', math.max(tonumber(stored[1]) - 1, 0))
if math.abs(tonumber(stored[2]) - tonumber(ARGV[2])) < 0.000002 then
  redis.call('HSET', KEYS[1], 'not_before', ARGV[3])
end
return 1
"""


class RedisBackend:
    def __init__(self, url: str) -> None:
        import redis.asyncio as redis

        self.client = redis.Redis.from_url(url)
        self.script = self.client.register_script(_REDIS_GCRA)
        self.attempt_script = self.client.register_script(_REDIS_SIGN_IN_ATTEMPT)
        self.settle_script = self.client.register_script(_REDIS_SIGN_IN_SETTLE)

    @staticmethod
    def _guard_key(key: bytes) -> bytes:
        return b"papo:sg:" + key.hex().encode()

    async def attempt(self, key: bytes, penalty: Penalty) -> Attempt:
        allowed, failures, not_before, now = await self.attempt_script(
            keys=[self._guard_key(key)], args=[penalty.free, penalty.first_delay, penalty.max_delay, penalty.forget]
        )
        return Attempt(bool(int(allowed)), int(failures), float(not_before), float(now))

    async def settle(self, key: bytes, attempt: Attempt, *, clear: bool) -> None:
        await self.settle_script(
            keys=[self._guard_key(key)], args=[int(clear), f"{attempt.not_before:.6f}", f"{attempt.now:.6f}"]
        )

    async def gcra(self, key: bytes, interval: float, period: float, consume: bool) -> tuple[bool, float, float]:
        allowed, tat, now = await self.script(
            keys=[b"papo:rl:" + key.hex().encode()], args=[interval, period, int(consume)]
        )
        return bool(int(allowed)), float(tat), float(now)

    async def close(self) -> None:
        await self.client.aclose()


def configured_limits(settings: Settings) -> dict[str, Limit]:
    """Every limit papo applies, by name; a count of 0 switches that limit off."""
    wanted = [
        Limit("user_messages", settings.rate_limit_user_messages_per_minute, MINUTE),
        Limit("api_key_messages", settings.rate_limit_api_key_messages_per_minute, MINUTE),
        Limit("user_ai_replies", settings.rate_limit_user_ai_replies_per_minute, MINUTE),
        Limit("user_ai_replies_daily", settings.rate_limit_user_ai_replies_per_day, DAY),
        Limit("api_key_ai_replies", settings.rate_limit_api_key_ai_replies_per_minute, MINUTE),
        Limit("sign_up_address", settings.rate_limit_sign_ups_per_address_per_hour, 3600.0),
        Limit("webhook_address", settings.rate_limit_webhooks_per_address_per_minute, MINUTE),
        Limit("whatsapp_sends", settings.whatsapp_sends_per_minute, MINUTE),
    ]
    return {limit.name: limit for limit in wanted if limit.count > 0}


def configured_penalties(settings: Settings) -> dict[str, Penalty]:
    """The sign-in guards, by name; a count of 0 switches one off.

    The tight guard is per account *and* address: guesses from one place slow down quickly, while
    the owner signing in from anywhere else is not held back by them (a stranger cannot lock them
    out by guessing once each time the delay runs out). Across all addresses an account only waits
    after many more failures (a spread-out guessing campaign). Per address the delay may grow
    longer: an address is the attacker's own, an account is the victim's."""
    wanted = [
        Penalty(
            "sign_in_account",
            settings.rate_limit_sign_in_failures_per_account,
            SIGN_IN_FIRST_DELAY,
            settings.rate_limit_sign_in_max_delay_seconds,
            SIGN_IN_FORGET,
        ),
        Penalty(
            "sign_in_account_everywhere",
            settings.rate_limit_sign_in_failures_per_account_everywhere,
            SIGN_IN_FIRST_DELAY,
            settings.rate_limit_sign_in_max_delay_seconds,
            SIGN_IN_FORGET,
        ),
        Penalty(
            "sign_in_address",
            settings.rate_limit_sign_in_failures_per_address,
            SIGN_IN_FIRST_DELAY,
            settings.rate_limit_sign_in_address_max_delay_seconds,
            SIGN_IN_FORGET,
        ),
    ]
    return {penalty.name: penalty for penalty in wanted if penalty.free > 0}


@dataclass
class Lease:
    units: int  # taken from the shared bucket, not yet spent
    expires: float  # monotonic; units left after this are dropped
    taken: float  # when this key last went to the shared bucket
    decision: Decision  # what that trip answered (the headers of the leased requests)


LEASE_SECONDS = 1.0
LEASE_SHARE = 20  # a lease is at most a twentieth of the allowance
LEASE_MAX = 20
MAX_LEASES = 10_000


def _key(name: str, identity: str) -> bytes:
    return hashlib.sha256(f"{name}\x00{identity}".encode()).digest()[:20]


class RateLimiter:
    def __init__(
        self,
        backend: Backend,
        limits: dict[str, Limit],
        *,
        enabled: bool = True,
        penalties: dict[str, Penalty] | None = None,
    ) -> None:
        self.backend = backend
        self.limits = limits
        self.enabled = enabled
        self.penalties = penalties or {}
        self.leases: dict[bytes, Lease] = {}
        self.leasing: dict[bytes, asyncio.Event] = {}  # keys whose next lease is being taken
        self.password_checks = 0  # sign-in attempts this process let through to the password check

    @classmethod
    def from_settings(cls, settings: Settings, dsn: str) -> RateLimiter:
        """`dsn`: the runtime role's plain connection string (used when no Redis is configured)."""
        backend: Backend = RedisBackend(settings.redis_url) if settings.redis_url else PostgresBackend(dsn)
        return cls(
            backend,
            configured_limits(settings),
            enabled=settings.rate_limits_enabled,
            penalties=configured_penalties(settings),
        )

    async def check(self, name: str, identity: str, *, consume: bool = True) -> Decision | None:
        """Spend one unit of `name` for `identity` (or, with consume=False, only look whether one is
        left). None when that limit is switched off.

        A key used again within LEASE_SECONDS is busy: its next trip to the shared bucket takes a
        few units at once and this process spends them locally, so a fast sender costs one round
        trip per few requests. The units come out of the shared bucket first, so no process can
        ever let more through than the limit; a busy key may lose the few it leased and did not
        use (at most 1/LEASE_SHARE of its allowance)."""
        limit = self.limits.get(name)
        if limit is None or not self.enabled:
            return None
        key = _key(name, identity)
        while True:
            clock = time.monotonic()
            lease = self.leases.get(key)
            if consume and lease is not None and lease.units > 0 and clock < lease.expires:
                lease.units -= 1
                return lease.decision
            busy = consume and lease is not None and clock - lease.taken < LEASE_SECONDS
            size = max(1, min(LEASE_MAX, limit.count // LEASE_SHARE)) if busy else 1
            # Requests of a busy key arriving while its next lease is being taken wait for that
            # lease instead of each taking (and overwriting) one of their own: 16 concurrent
            # requests of one user made ~0.3 trips per request instead of one per lease.
            leasing = self.leasing.get(key) if size > 1 else None
            if leasing is None:
                break
            await leasing.wait()
        if size > 1:
            self.leasing[key] = leasing = asyncio.Event()
        try:
            allowed, tat, now = await self.backend.gcra(key, limit.interval * size, limit.period, consume)
            if not allowed and size > 1:  # not enough left for a lease: one unit, if that
                size = 1
                allowed, tat, now = await self.backend.gcra(key, limit.interval, limit.period, consume)
            ahead = max(0.0, tat - now)  # how far the bucket's arrival time runs ahead of the clock
            decision = Decision(
                limit,
                allowed,
                remaining=max(0, min(limit.count, math.floor((limit.period - ahead) / limit.interval + 1e-9))),
                reset_seconds=ahead,
                retry_after_seconds=0.0 if allowed else max(0.0, ahead + limit.interval - limit.period),
            )
            if consume:
                units = size - 1 if allowed else 0
                self.leases[key] = Lease(units, clock + LEASE_SECONDS, clock, decision)
                if len(self.leases) > MAX_LEASES:
                    self._forget_old_leases(clock)
        finally:
            if leasing is not None:
                del self.leasing[key]
                leasing.set()
        return decision

    def _forget_old_leases(self, clock: float) -> None:
        for key in [k for k, lease in self.leases.items() if clock - lease.taken >= LEASE_SECONDS]:
            del self.leases[key]

    async def enforce(
        self, connection: HTTPConnection | None, name: str, identity: str, *, consume: bool = True
    ) -> Decision | None:
        """Like check, but a refusal raises a 429; an allowance is remembered for the response headers."""
        decision = await self.check(name, identity, consume=consume)
        if decision is None:
            return None
        if not decision.allowed:
            RATE_LIMITED.labels(name).inc()
            raise RateLimited(decision)
        if connection is not None:
            remember(connection, decision)
        return decision

    async def messages(self, connection: HTTPConnection, principal: Caller) -> None:
        """A message written by a member or an API key."""
        if principal.api_key_id is not None:
            await self.enforce(connection, "api_key_messages", f"key:{principal.api_key_id}")
        else:
            await self.enforce(connection, "user_messages", f"user:{principal.tenant_id}:{principal.user_id}")

    async def ai_reply(self, connection: HTTPConnection, principal: Caller) -> None:
        """A reply the caller asked an assistant for: a per-minute rate and, for members, a daily quota."""
        if principal.api_key_id is not None:
            await self.enforce(connection, "api_key_ai_replies", f"key:{principal.api_key_id}")
            return
        identity = f"user:{principal.tenant_id}:{principal.user_id}"
        await self.enforce(connection, "user_ai_replies", identity)
        await self.enforce(connection, "user_ai_replies_daily", identity)

    async def sign_in(self, address: str, account: str, check: Callable[[], Awaitable[T]]) -> T:
        """Run `check` (the password check) as one sign-in attempt for `account` from `address`.

        While either guard says wait, `check` does not run: RateLimited (429, Retry-After). Otherwise
        the attempt is counted as a failure first, then checked. Unauthorized from `check` leaves it
        counted; success clears the account's count and takes the attempt back from the address;
        any other error takes it back from both."""
        taken: list[tuple[str, bytes, Attempt]] = []
        if self.enabled:
            try:
                account = account.strip().lower()
                place = address_block(address)
                guards = (
                    ("sign_in_account", f"{account}\x00{place}"),
                    ("sign_in_address", place),
                    ("sign_in_account_everywhere", account),
                )
                for name, identity in guards:
                    penalty = self.penalties.get(name)
                    if penalty is None:
                        continue
                    key = _key(name, identity)
                    attempt = await self.backend.attempt(key, penalty)
                    if not attempt.allowed:
                        RATE_LIMITED.labels(name).inc()
                        raise RateLimited(
                            _refusal(penalty, attempt), "too many failed sign-ins; wait before trying again"
                        )
                    taken.append((name, key, attempt))
            except BaseException:
                await self._settle(taken, succeeded=False)
                raise
        self.password_checks += 1
        try:
            result = await check()
        except Unauthorized:
            raise
        except Exception:
            await self._settle(taken, succeeded=False)
            raise
        await self._settle(taken, succeeded=True)
        return result

    async def _settle(self, taken: list[tuple[str, bytes, Attempt]], *, succeeded: bool) -> None:
        for name, key, attempt in taken:
            await self.backend.settle(key, attempt, clear=succeeded and name in ACCOUNT_GUARDS)

    async def close(self) -> None:
        await self.backend.close()


async def webhook_allowance(request: Request) -> None:
    """Unauthenticated deliveries (WhatsApp, Clerk): a per-address rate before the signature is checked."""
    limiter: RateLimiter = request.app.state.papo.limiter
    await limiter.enforce(request, "webhook_address", client_address(request))


def remember(connection: HTTPConnection, decision: Decision) -> None:
    decisions: list[Decision] = connection.scope.setdefault("state", {}).setdefault(STATE_KEY, [])
    decisions.append(decision)


def response_headers(state: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """The headers of the tightest limit the request went through (for the middleware)."""
    decisions: list[Decision] = state.get(STATE_KEY) or []
    if not decisions:
        return []
    tightest = min(decisions, key=lambda d: (d.remaining, -d.reset_seconds))
    return [(name.lower().encode(), value.encode()) for name, value in tightest.headers().items()]


def address_block(address: str) -> str:
    """Where an attempt comes from, for the sign-in guards: an IPv4 address, or the /64 an IPv6
    address belongs to (one subscriber usually holds a whole /64)."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def client_address(connection: HTTPConnection) -> str:
    """The caller's address as the server sees it (uvicorn applies X-Forwarded-For from the proxies
    it trusts, --forwarded-allow-ips)."""
    return connection.client.host if connection.client else "unknown"
