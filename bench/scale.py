"""Scale-out: what publishing an event costs a write.

1. Publishing throughput: 16 concurrent writers, each committing one-row insert transactions as fast
   as it can for a while, through papo's own unit of work; once with the insert alone, once with the
   insert and one published event (papo's path: `emit`, the publish function, the stamp after
   commit). Same PostgreSQL, same run, alternating rounds. Target (issue 16): ratio >= 0.8 (0004's
   installation-wide lock on publishing commits gave about 0.3).
2. Cross-process delivery, three `papo serve` processes: messages posted to one, read by WebSocket
   clients on the two others; p50/p99 from the POST to the event, with PostgreSQL NOTIFY and with
   NATS JetStream (a nats-server of the benchmark's own, Debian's package).
3. Relay CPU per delivered event: one process with clients of one tenant, while 1 or 3 other
   processes serve busy other tenants. CPU time of that process (from /proc) over the events its
   clients got. Target (issue 16): with NATS, 3 busy others cost <= 1.2x what 1 does (NOTIFY shown
   beside it: there every process reads every tenant's events).
Run: `make bench-scale` (`--parts 1,2,3`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import websockets
from sqlalchemy.ext.asyncio import AsyncSession

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "src"))
from papo.auth import service as auth_service  # noqa: E402
from papo.auth.models import Role  # noqa: E402
from papo.auth.service import Principal  # noqa: E402
from papo.auth.tokens import SigningKey, issue_token  # noqa: E402
from papo.db.engine import Database, RlsContext, driver  # noqa: E402
from papo.realtime.service import emit  # noqa: E402
from run import BenchServer, plain_dsn, verdict  # noqa: E402

TARGET_RATIO = 0.8
TARGET_RELAY_GROWTH = 1.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


async def commits_per_second(
    db: Database, principal: Principal, writers: int, seconds: float, write: Callable[[AsyncSession], Awaitable[None]]
) -> float:
    deadline = time.monotonic() + seconds
    counts = [0] * writers

    async def writer(index: int) -> None:
        while time.monotonic() < deadline:
            async with db.transaction(principal.context()) as session:
                await write(session)
            counts[index] += 1

    started = time.monotonic()
    await asyncio.gather(*(writer(i) for i in range(writers)))
    return sum(counts) / (time.monotonic() - started)


async def publishing_throughput(server: BenchServer, writers: int, seconds: float, rounds: int) -> None:
    owner = await asyncpg.connect(plain_dsn(server.location.owner_url))
    app_role = server.location.app_url.username
    await owner.execute(
        "CREATE TABLE bench_writes (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, body text NOT NULL, "
        "created_at timestamptz NOT NULL DEFAULT now());"
        f'GRANT INSERT ON bench_writes TO "{app_role}"'
    )
    await owner.close()
    db = Database(server.location.app_url, pool_size=writers + 4)
    async with db.transaction() as session:
        tenant = await auth_service.create_tenant(session, "Bench")
        user_id, _ = await auth_service.add_member(
            session, email="bench@papo.local", name="Bench", password=None, role=Role.member
        )
    principal = Principal(tenant.id, user_id, Role.member.value)

    async def insert(session: AsyncSession) -> None:
        await driver(session).execute(
            "INSERT INTO bench_writes (id, tenant_id, body) VALUES ($1, $2, 'x')", uuid.uuid4(), tenant.id
        )

    async def insert_and_publish(session: AsyncSession) -> None:
        await insert(session)
        emit(session, "bench.write", {"body": "x"}, tenant_id=tenant.id, user_id=user_id)

    plain: list[float] = []
    published: list[float] = []
    for _ in range(rounds):
        plain.append(await commits_per_second(db, principal, writers, seconds, insert))
        published.append(await commits_per_second(db, principal, writers, seconds, insert_and_publish))
    await db.dispose()
    base, papo = statistics.median(plain), statistics.median(published)
    ratio = papo / base
    print(f"1. publishing — {writers} writers, {rounds} rounds of {seconds:.0f} s each")
    print(f"  insert only:            {base:8.0f} commits/s (rounds: {', '.join(f'{v:.0f}' for v in plain)})")
    print(f"  insert + one event:     {papo:8.0f} commits/s (rounds: {', '.join(f'{v:.0f}' for v in published)})")
    print(
        verdict(
            ratio >= TARGET_RATIO,
            f"publishing keeps {ratio:.2f} of the plain write rate (target >= {TARGET_RATIO})",
        )
    )


class NatsServer:
    """The benchmark's own nats-server with JetStream (Debian's package, as in the tests)."""

    def __init__(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).exists():
            raise SystemExit("nats-server not found: apt-get install nats-server (make test installs it)")
        self.store = tempfile.mkdtemp(prefix="papo-bench-nats-")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", self.store],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise SystemExit("nats-server did not start")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.store, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime + stime


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


async def member_token(db: Database, server: BenchServer, name: str) -> tuple[uuid.UUID, str]:
    async with db.transaction() as session:
        tenant = await auth_service.create_tenant(session, name)
        user_id, _ = await auth_service.add_member(
            session, email=f"{uuid.uuid4().hex[:8]}@papo.local", name=name, password=None, role=Role.owner
        )
    token, _ = issue_token(
        server.settings,
        SigningKey.load(server.settings),
        tenant_id=tenant.id,
        user_id=user_id,
        role="owner",
        ttl_seconds=3600,
    )
    return tenant.id, token


class Watcher:
    """A WebSocket client of one process: counts events and keeps when each arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.count = 0
        self.task: asyncio.Task[None] | None = None
        self.socket: Any = None

    async def open(self, port: int, token: str) -> None:
        self.socket = await websockets.connect(f"ws://127.0.0.1:{port}/api/v1/realtime", max_queue=None)
        await self.socket.send(json.dumps({"type": "auth", "token": token, "since": None}))
        while json.loads(await self.socket.recv())["type"] != "ready":
            pass
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for raw in self.socket:
            message = json.loads(raw)
            if message.get("type") == "event":
                self.count += 1
                mark = message["data"].get("mark") or message["data"].get("content")
                if mark is not None:
                    self.arrivals[str(mark)] = time.perf_counter()

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        with contextlib.suppress(Exception):
            await self.socket.close()


async def start_processes(server: BenchServer, count: int, nats_url: str | None, prefix: str) -> list[tuple[int, Any]]:
    started = []
    extra = {"PAPO_REALTIME_QUEUE_SIZE": "100000", "PAPO_REALTIME_MAX_STREAMS_PER_USER": "0"}
    if nats_url:
        extra |= {"PAPO_NATS_URL": nats_url, "PAPO_NATS_PREFIX": prefix}
    for _ in range(count):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        started.append((port, await server.serve(port, quiet=True, **extra)))
        await asyncio.sleep(0.5)  # the first one started takes the bridge (NATS)
    return started


async def stop_processes(server: BenchServer, started: list[tuple[int, Any]]) -> None:
    for _, process in started:
        process.terminate()
    for _, process in started:
        await asyncio.wait_for(process.wait(), 15)
        server.processes.remove(process)


async def cross_process_delivery(server: BenchServer, nats: NatsServer, rate: float, seconds: float) -> None:
    db = Database(server.location.app_url, pool_size=4)
    print(f"2. cross-process delivery — 3 processes, {rate:.0f} messages/s for {seconds:.0f} s, posted to 1, read on 2")
    for mode, nats_url in (("NOTIFY", None), ("NATS", nats.url)):
        _, token = await member_token(db, server, f"Cross {mode}")
        started = await start_processes(server, 3, nats_url, f"x{uuid.uuid4().hex[:6]}")
        (port_a, _), (port_b, _), (port_c, _) = started
        watchers = [Watcher(), Watcher()]
        await watchers[0].open(port_a, token)
        await watchers[1].open(port_c, token)
        sent: dict[str, float] = {}
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port_b}", headers=headers, timeout=30) as http:
            chat = (await http.post("/api/v1/sessions", json={"title": "x", "assistant_id": None})).json()
            begin = time.perf_counter()
            n = 0
            while time.perf_counter() - begin < seconds:
                mark = f"{mode}-{n}"
                sent[mark] = time.perf_counter()
                await http.post(f"/api/v1/sessions/{chat['id']}/messages", json={"content": mark})
                n += 1
                await asyncio.sleep(max(0.0, begin + n / rate - time.perf_counter()))
        await asyncio.sleep(2)
        latencies = [
            (watcher.arrivals[mark] - at) * 1000
            for watcher in watchers
            for mark, at in sent.items()
            if mark in watcher.arrivals
        ]
        missing = 2 * len(sent) - len(latencies)
        print(
            f"  {mode:6}  p50 {percentile(latencies, 0.5):7.1f} ms   p99 {percentile(latencies, 0.99):7.1f} ms"
            f"   ({len(latencies)} deliveries, {missing} missing)"
        )
        for watcher in watchers:
            await watcher.close()
        await stop_processes(server, started)
    await db.dispose()


async def publish_load(db: Database, tenants: list[uuid.UUID], per_second: float, seconds: float) -> None:
    """Events for `tenants`, each at `per_second`, through papo's publish path (8 writers)."""
    if not tenants:
        await asyncio.sleep(seconds)
        return
    begin = time.perf_counter()
    total_rate = per_second * len(tenants)
    counter = iter(range(10**9))

    async def writer() -> None:
        while True:
            n = next(counter)
            due = begin + n / total_rate  # event n's place in the schedule, whichever writer takes it
            if due - begin >= seconds:
                return
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tenant_id = tenants[n % len(tenants)]
            async with db.transaction(RlsContext(tenant_id, None, "owner")) as session:
                emit(session, "bench.tick", {"mark": n}, tenant_id=tenant_id, user_id=None)

    await asyncio.gather(*(writer() for _ in range(8)))


async def relay_cpu(server: BenchServer, nats: NatsServer, seconds: float) -> None:
    """CPU of one process per event it delivers, while 1 or 3 other processes serve other tenants."""
    db = Database(server.location.app_url, pool_size=12)
    own_rate, busy_rate = 100.0, 200.0
    print(
        f"3. relay CPU per delivered event — the measured process gets {own_rate:.0f} events/s of its tenant;"
        f" each busy other process serves a tenant with {busy_rate:.0f} events/s"
    )
    results: dict[str, dict[int, float]] = {}
    for mode, nats_url in (("NOTIFY", None), ("NATS", nats.url)):
        results[mode] = {}
        prefix = f"r{uuid.uuid4().hex[:6]}"
        others = await start_processes(server, 3, nats_url, prefix)
        # started last, so with NATS one of the others holds the bridge (an installation-wide job)
        measured = await start_processes(server, 1, nats_url, prefix)
        port, process = measured[0]
        for busy in (1, 3):
            own_tenant, own_token = await member_token(db, server, f"Own {mode} {busy}")
            watcher = Watcher()
            await watcher.open(port, own_token)
            busy_watchers, busy_tenants = [], []
            for other_port, _ in others[:busy]:
                tenant_id, token = await member_token(db, server, f"Busy {mode} {busy}")
                busy_tenants.append(tenant_id)
                other = Watcher()
                await other.open(other_port, token)
                busy_watchers.append(other)
            await asyncio.sleep(1)
            before, got_before = cpu_seconds(process.pid), watcher.count
            await asyncio.gather(
                publish_load(db, [own_tenant], own_rate, seconds),
                publish_load(db, busy_tenants, busy_rate, seconds),
            )
            await asyncio.sleep(1.5)
            used, delivered = cpu_seconds(process.pid) - before, watcher.count - got_before
            results[mode][busy] = used / max(1, delivered) * 1e6
            others_got = sum(w.count for w in busy_watchers)
            print(
                f"  {mode:6}  {busy} busy other(s): {results[mode][busy]:6.0f} us CPU per delivered event"
                f" ({delivered} delivered here, {others_got} on the others; {used:.2f} s CPU)"
            )
            for closing in (watcher, *busy_watchers):
                await closing.close()
        await stop_processes(server, [*measured, *others])
    await db.dispose()
    for mode, figures in results.items():
        growth = figures[3] / figures[1]
        if mode == "NATS":
            print(
                verdict(
                    growth <= TARGET_RELAY_GROWTH,
                    f"with NATS, 3 busy others cost {growth:.2f}x what 1 does (target <= {TARGET_RELAY_GROWTH})",
                )
            )
        else:
            print(f"  NOTIFY: 3 busy others cost {growth:.2f}x what 1 does (every process reads every tenant)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second in part 2")
    parser.add_argument("--parts", default="1,2,3")
    args = parser.parse_args()
    parts = {int(p) for p in args.parts.split(",")}

    server = BenchServer("scale")
    nats = NatsServer() if parts & {2, 3} else None
    print(f"papo scale benchmark — {os.cpu_count()} cores")
    try:
        await server.migrate()
        if 1 in parts:
            await publishing_throughput(server, args.writers, args.seconds, args.rounds)
        if 2 in parts:
            assert nats is not None
            await cross_process_delivery(server, nats, args.rate, args.seconds)
        if 3 in parts:
            assert nats is not None
            await relay_cpu(server, nats, args.seconds)
    finally:
        await server.close()
        if nats is not None:
            nats.close()


if __name__ == "__main__":
    asyncio.run(main())
