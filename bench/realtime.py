"""Realtime fan-out: 1,000 WebSocket subscribers on one server process, messages at steady rates.

papo (auth, outbox in the message's transaction, NOTIFY wake-up, relay, per-subscriber routing) is
measured beside a bare baseline: one asyncpg LISTEN connection forwarding NOTIFY payloads to the
same number of WebSockets. Messages are written through papo's chat service by a child process of
this script (as a second papo process behind the load balancer would: same transaction, outbox and
stamping; the baseline's NOTIFYs come from such a child too), so the measured server process does the
fan-out alone, like the baseline, and no write waits behind the 1,000 sockets this script reads.
Subscribers are 10 users x 100 connections; each message goes to its user's 100. Latency runs from
the write (papo: the message's created_at, stamped in its transaction just before it commits;
baseline: just before pg_notify is sent) to the moment a subscriber has the event; papo's own
histogram adds where that time went before any socket send (commit → relay). Both sides' subscribers
are this script's sockets, on the same two cores as the servers.
Verdict (issue 17): papo's p99 within 2x the baseline's at every rate up to the one claimed, at least
95 % delivered, and the baseline itself under 250 ms there; that rate must reach 20,000 deliveries/s.
A send that fails (an HTTP error, a dropped connection) is counted and printed, not fatal.
Run: `make bench-realtime` (or python bench/realtime.py --help).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import websockets
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent))
import papo.models  # noqa: F401  (every table, so cross-feature foreign keys resolve)
from papo.auth import service as auth_service
from papo.auth.models import Role
from papo.auth.service import Principal
from papo.auth.tokens import SigningKey, issue_token
from papo.chat.models import MessageRole
from papo.chat.service import ChatService
from papo.db.engine import Database
from papo.settings import Settings
from profiling import CpuMeter, profiled
from run import HOST, BenchServer, plain_dsn, verdict, wait_healthy

BENCH_DIR = Path(__file__).resolve().parent
PAPO_PORT = 8721
BASE_PORT = 8722
USERS = 10
SUPABASE = "Supabase Realtime broadcast-from-database (published, on a cluster): p50 46 ms, p99 159 ms"
TARGET_DELIVERIES = 20_000
WARM_UP_SECONDS = 2.0
TARGET_P99_RATIO = 2.0


METRICS_TOKEN = "bench-realtime"
LAG_METRIC = "papo_realtime_event_lag_seconds_bucket"


async def relay_lag_buckets(http: httpx.AsyncClient) -> dict[float, float]:
    """papo's histogram of commit → hand-over to local streams (before any socket send), cumulative."""
    answer = await http.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    buckets: dict[float, float] = {}
    for line in answer.text.splitlines():
        if line.startswith(LAG_METRIC + "{"):
            bound = line.split('le="', 1)[1].split('"', 1)[0]
            buckets[float("inf") if bound == "+Inf" else float(bound)] = float(line.rsplit(" ", 1)[1])
    return buckets


def bucket_percentile(before: dict[float, float], after: dict[float, float], fraction: float) -> float:
    """The upper bound (ms) of the bucket holding that fraction of the events counted in between."""
    counts = {bound: after.get(bound, 0.0) - before.get(bound, 0.0) for bound in sorted(after)}
    total = counts.get(float("inf"), 0.0)
    for bound, cumulative in counts.items():
        if total and cumulative >= fraction * total:
            return bound * 1000
    return float("nan")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


class Subscribers:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.disordered = 0  # events a subscriber got again or after a later one (papo's carry ids)
        self.sockets: list[Any] = []
        self.tasks: list[asyncio.Task[None]] = []

    async def reader(self, socket: Any, extract: Any) -> None:
        last = 0
        async for raw in socket:
            message = json.loads(raw)
            sent = extract(message)
            if sent is not None:
                self.latencies.append((time.time() - sent) * 1000)
            position = message.get("id") if message.get("type") == "event" else None
            if isinstance(position, int):
                self.disordered += position <= last
                last = max(last, position)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for socket in self.sockets:
            await socket.close()


async def papo_subscribers(tokens: list[str], per_user: int) -> Subscribers:
    subscribers = Subscribers()

    def extract(message: dict[str, Any]) -> float | None:
        # created_at is stamped inside the writing transaction, just before it publishes and commits.
        if message.get("type") == "event" and message.get("event") == "message.created":
            return datetime.fromisoformat(message["data"]["created_at"]).timestamp()
        return None

    for token in tokens:
        for _ in range(per_user):
            socket = await websockets.connect(f"ws://{HOST}:{PAPO_PORT}/api/v1/realtime", max_queue=None)
            await socket.send(json.dumps({"type": "auth", "token": token, "since": None}))
            assert json.loads(await socket.recv())["type"] == "ready"
            subscribers.sockets.append(socket)
            subscribers.tasks.append(asyncio.create_task(subscribers.reader(socket, extract)))
    return subscribers


async def baseline_subscribers(per_user: int) -> Subscribers:
    subscribers = Subscribers()
    for user in range(USERS):
        for _ in range(per_user):
            socket = await websockets.connect(f"ws://{HOST}:{BASE_PORT}/ws/u{user}", max_queue=None)
            subscribers.sockets.append(socket)
            subscribers.tasks.append(asyncio.create_task(subscribers.reader(socket, lambda m: m["sent"])))
    await asyncio.sleep(0.5)
    return subscribers


async def drive(rate: float, seconds: float, send: Any) -> int:
    """Send at `rate` for `seconds`; how many sends failed (each failure is kept as a figure, and
    the run goes on)."""
    interval = 1 / rate
    started = time.perf_counter()
    n = 0
    sends: list[asyncio.Task[None]] = []  # all of them, finished or not: each outcome is counted
    while time.perf_counter() - started < seconds:
        sends.append(asyncio.create_task(send(n)))
        n += 1
        await asyncio.sleep(max(0, started + n * interval - time.perf_counter()))
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    await asyncio.sleep(1.0)  # let the tail arrive
    return sum(1 for outcome in outcomes if isinstance(outcome, BaseException))


class Writer:
    """The messages are written by a process of their own (this script run with --writer), as a second
    papo process behind the load balancer would: its event loop is not the one reading the 1,000
    subscribers' sockets, so neither side's write waits behind the measurement."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, side: str, rate: float, plan: dict[str, Any]) -> Writer:
        process = await asyncio.create_subprocess_exec(
            sys.executable, __file__, "--writer", side, "--rates", str(rate), "--plan", json.dumps(plan),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        if (await process.stdout.readline()).strip() != b"ready":
            raise RuntimeError(f"the {side} writer did not start")
        return cls(process)

    async def run(self) -> int:
        """Write for the plan's seconds; how many writes failed."""
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(b"go\n")
        await self.process.stdin.drain()
        failed = int((await self.process.stdout.readline()).strip() or -1)
        await self.process.wait()
        return failed


async def write_messages(side: str, rate: float, plan: dict[str, Any]) -> None:
    """The child's part: connect, say ready, write at `rate` when told to go, print the failures."""
    settings = Settings(data_dir=Path(plan["data_dir"]), log_level="WARNING", _env_file=None)
    tenant_id = uuid.UUID(plan["tenant_id"])
    users, sessions = plan["users"], plan["sessions"]
    writers = Database(make_url(plan["app_url"]), pool_size=20)
    notifier = await asyncpg.create_pool(plan["owner_dsn"], min_size=4, max_size=20)

    async def papo_send(n: int) -> None:
        user = n % USERS
        principal = Principal(tenant_id, users[user], Role.member.value)
        async with writers.transaction(principal.context()) as session:
            chat = ChatService(session, principal, settings)
            await chat.add_message(uuid.UUID(sessions[user]), MessageRole.user, repr(time.time()))

    async def baseline_send(n: int) -> None:
        payload = json.dumps({"user": f"u{n % USERS}", "sent": time.time()})
        await notifier.execute("SELECT pg_notify('bench', $1)", payload)

    await writers.rows("SELECT 1")  # connected before the clock starts
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    failed = await drive(rate, plan["seconds"], papo_send if side == "papo" else baseline_send)
    print(failed, flush=True)
    await notifier.close()
    await writers.dispose()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rates", default="10,20,40,80,160,200", help="messages per second, comma-separated")
    parser.add_argument(
        "--profile", type=Path, help="record papo's server with py-spy at the highest rate, into this directory"
    )
    parser.add_argument("--writer", choices=("papo", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        await write_messages(args.writer, float(args.rates), json.loads(args.plan))
        return
    per_user = args.subscribers // USERS
    rates = [float(r) for r in args.rates.split(",")]
    server = BenchServer("rt")
    settings, location = server.settings, server.location
    print(
        f"papo realtime benchmark — {os.cpu_count()} cores, {args.subscribers} subscribers "
        f"({USERS} users x {per_user}), {args.seconds:.0f} s per rate"
    )
    try:
        await server.migrate()
        db = Database(location.app_url, pool_size=2)
        async with db.transaction() as session:
            tenant = await auth_service.create_tenant(session, "Bench RT")
            users = [
                (
                    await auth_service.add_member(
                        session, email=f"rt{i}@papo.local", name=None, password=None, role=Role.member
                    )
                )[0]
                for i in range(USERS)
            ]
        key = SigningKey.load(settings)
        tokens = [
            issue_token(settings, key, tenant_id=tenant.id, user_id=u, role="member", ttl_seconds=3600)[0]
            for u in users
        ]
        papo_process = await server.serve(
            PAPO_PORT,
            PAPO_REALTIME_QUEUE_SIZE="100000",
            PAPO_REALTIME_MAX_STREAMS_PER_USER="0",
            PAPO_METRICS_TOKEN=METRICS_TOKEN,
        )
        server.processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "uvicorn",
                "realtime_baseline_app:app",
                "--host",
                HOST,
                "--port",
                str(BASE_PORT),
                "--log-level",
                "warning",
                "--no-access-log",
                env={**os.environ, "BENCH_DSN": plain_dsn(location.owner_url)},
                cwd=BENCH_DIR,
            )
        )
        baseline_process = server.processes[-1]
        await wait_healthy(BASE_PORT, baseline_process)

        async with httpx.AsyncClient(
            base_url=f"http://{HOST}:{PAPO_PORT}", timeout=30, limits=httpx.Limits(max_connections=50)
        ) as http:
            sessions = []
            for token in tokens:
                response = await http.post(
                    "/api/v1/sessions",
                    json={"title": "rt", "assistant_id": None},  # fan-out alone: no assistant replies
                    headers={"Authorization": f"Bearer {token}"},
                )
                sessions.append(response.json()["id"])

            plan = {
                "app_url": location.app_url.render_as_string(hide_password=False),
                "data_dir": str(settings.data_dir),
                "owner_dsn": plain_dsn(location.owner_url),
                "tenant_id": str(tenant.id),
                "users": users,
                "sessions": sessions,
                "seconds": args.seconds,
            }

            results: dict[str, dict[float, tuple[float, float, float, int]]] = {"papo": {}, "baseline": {}}
            cpu: dict[tuple[str, float], float] = {}  # each server's CPU seconds per rate
            relay_lag: dict[float, tuple[float, float]] = {}  # commit → relay hand-over, p50 and p99 (ms)
            failures: dict[str, dict[float, int]] = {"papo": {}, "baseline": {}}
            disordered: dict[str, dict[float, int]] = {"papo": {}, "baseline": {}}
            for name, subscribe in (
                ("papo", lambda: papo_subscribers(tokens, per_user)),
                ("baseline", lambda: baseline_subscribers(per_user)),
            ):
                subscribers = await subscribe()
                # an unmeasured round first: the first one paid for connections, prepared statements
                # and caches (its p99 was 2–5x the next rate's), on papo's side more than the forwarder's
                await (await Writer.start(name, rates[0], plan | {"seconds": WARM_UP_SECONDS})).run()
                await asyncio.sleep(0.5)
                for rate in rates:
                    writer = await Writer.start(name, rate, plan)
                    subscribers.latencies.clear()
                    subscribers.disordered = 0
                    profile = args.profile / "realtime-fan-out.txt" if args.profile else None
                    recorded = papo_process.pid if name == "papo" and rate == rates[-1] else None
                    measured = papo_process if name == "papo" else baseline_process
                    meter = CpuMeter(server=lambda pid=measured.pid: [pid])
                    meter.start()
                    lag_before = await relay_lag_buckets(http) if name == "papo" else {}
                    async with profiled(recorded, profile):
                        failures[name][rate] = await writer.run()
                    cpu[name, rate] = meter.stop()["server"]
                    if name == "papo":
                        await asyncio.sleep(0.5)  # the last deliveries of the round
                        lag_after = await relay_lag_buckets(http)
                        relay_lag[rate] = (
                            bucket_percentile(lag_before, lag_after, 0.5),
                            bucket_percentile(lag_before, lag_after, 0.99),
                        )
                    lat = subscribers.latencies
                    results[name][rate] = (percentile(lat, 0.5), percentile(lat, 0.95), percentile(lat, 0.99), len(lat))
                    disordered[name][rate] = subscribers.disordered
                await subscribers.close()

        print(
            f"\n  {'rate/s':>7} {'deliveries':>11} | {'papo p50':>9} {'p95':>7} {'p99':>7} | "
            f"{'baseline p50':>12} {'p95':>7} {'p99':>7} | {'p99 ratio':>9} | {'failed sends':>12} | "
            f"{'µs CPU/delivery papo / baseline':>31} | {'commit→relay p50/p99 (≤ ms)':>27}"
        )
        best = {"papo": 0.0, "baseline": 0.0}
        # The highest rate up to which papo's p99 stays within 2x the baseline's at every measured
        # rate, all delivered, with the baseline itself holding p99 < 250 ms: beside a saturated
        # forwarder "within 2x" says nothing.
        within, holding = 0.0, True
        for rate in sorted(rates):
            p, b = results["papo"][rate], results["baseline"][rate]
            expected = rate * args.seconds * per_user
            for name, row in (("papo", p), ("baseline", b)):
                if row[2] < 250 and row[3] >= 0.95 * expected:
                    best[name] = max(best[name], rate)
            holding = (
                holding
                and b[2] < 250
                and p[2] <= TARGET_P99_RATIO * b[2]
                and p[3] >= 0.95 * expected
                and not failures["papo"][rate]
                and not disordered["papo"][rate]
            )
            if holding:
                within = rate
            print(
                f"  {rate:7.0f} {p[3]:11d} | {p[0]:9.1f} {p[1]:7.1f} {p[2]:7.1f} | "
                f"{b[0]:12.1f} {b[1]:7.1f} {b[2]:7.1f} | {p[2] / b[2]:9.2f} | "
                f"{failures['papo'][rate]:5d} / {failures['baseline'][rate]:<5d} | "
                f"{1e6 * cpu['papo', rate] / max(1, p[3]):17.0f} / "
                f"{1e6 * cpu['baseline', rate] / max(1, b[3]):<11.0f} | "
                f"{relay_lag[rate][0]:>13.1f} / {relay_lag[rate][1]:<11.1f}"
            )
        print(
            f"\n  highest rate with p99 < 250 ms and ≥95% delivered: papo {best['papo']:.0f} msg/s "
            f"({best['papo'] * per_user:.0f} deliveries/s), baseline {best['baseline']:.0f} msg/s"
        )
        repeated = sum(disordered["papo"].values())
        print(f"  papo events a subscriber got twice or out of order, all rates: {repeated} (must be 0)")
        print(f"  outside reference: {SUPABASE}")
        sustained = within * per_user
        print(
            verdict(
                sustained >= TARGET_DELIVERIES,
                f"papo keeps p99 within {TARGET_P99_RATIO:.0f}x the bare forwarder's up to {within:.0f} msg/s "
                f"({sustained:.0f} deliveries/s; target >= {TARGET_DELIVERIES} deliveries/s)",
            )
        )
        await db.dispose()
    finally:
        await server.close()


if __name__ == "__main__":
    asyncio.run(main())
