"""Time to first token: what papo adds between an AI provider and a chat client.

A fake OpenAI-compatible provider streams at a fixed pace. Measured side by side, 1 and N concurrent
streams: (a) straight from the provider with the openai SDK (request to first chunk), and (b) through
papo (POST the user message to first `reply.delta` on a realtime WebSocket). Prints p50/p99 of both,
the added latency, and papo's event-loop lag during the run (from its /healthz). N streams are asked
two ways: all at the same instant (burst), and arriving evenly while the earlier ones still stream
(steady, about N replies in flight at once).
Run: `make bench-assistants`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent))
from tests.fake_openai import API_KEY  # noqa: E402
from tests.support import free_port  # noqa: E402

import papo.models  # noqa: E402, F401  (every table, so cross-feature foreign keys resolve)
from loadgen import build_request, read_response  # noqa: E402
from papo.auth import service as auth_service  # noqa: E402
from papo.auth.models import Role  # noqa: E402
from papo.auth.tokens import SigningKey, issue_token  # noqa: E402
from papo.client import RealtimeClient, RealtimeEvent  # noqa: E402
from papo.db.engine import Database  # noqa: E402
from profiling import profiled  # noqa: E402
from run import HOST, BenchServer, verdict  # noqa: E402

PAPO_PORT = 8731
USERS = 10
BURST_TARGET_MS = 250
SLOW_STREAM_SECONDS = 5.0  # about how long the fake provider's "fake-slow" answer takes to stream


def pct(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def staggered(count: int, interval: float, one: Any) -> list[float]:
    """Start `one(i)` for each i, `interval` seconds apart (0: all at once); gather the results."""

    async def later(index: int) -> float:
        await asyncio.sleep(index * interval)
        result: float = await one(index)
        return result

    return list(await asyncio.gather(*(later(i) for i in range(count))))


async def direct_ttft(base_url: str, model: str, streams: int, interval: float) -> list[float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)

    async def one(n: int) -> float:
        started = time.perf_counter()
        stream: Any = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": f"pergunta {n}"}], stream=True
        )
        first = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = (time.perf_counter() - started) * 1000
        assert first is not None
        return first

    results = await staggered(streams, interval, one)
    await client.close()
    return results


async def papo_ttft(tokens: list[str], sessions: list[tuple[int, str]], streams: int, interval: float) -> list[float]:
    base = f"http://{HOST}:{PAPO_PORT}"
    first_delta: dict[str, float] = {}
    started_seen: dict[str, asyncio.Event] = {}
    finished: dict[str, asyncio.Event] = {}
    clients = [RealtimeClient(base, token) for token in tokens]

    async def listen(client: RealtimeClient) -> None:
        async for item in client.events():
            if not isinstance(item, RealtimeEvent):
                continue
            reply = item.data.get("id")
            if item.event == "reply.delta" and reply not in first_delta:
                first_delta[reply] = time.perf_counter()
                started_seen.setdefault(reply, asyncio.Event()).set()
            elif item.event == "message.updated" and item.data.get("role") == "assistant":
                finished.setdefault(reply, asyncio.Event()).set()

    listeners = [asyncio.create_task(listen(c)) for c in clients]
    for client in clients:
        await asyncio.wait_for(client.connected.wait(), 10)
    # one keep-alive connection per stream, opened beforehand, as a browser has its own; not httpx,
    # whose pool spent more CPU choosing a connection for 200 requests than papo spent on them
    connections = [await asyncio.open_connection(HOST, PAPO_PORT) for _ in range(streams)]

    async def one(index: int) -> float:
        user, sid = sessions[index]
        reader, writer = connections[index]
        body = json.dumps({"content": f"pergunta {index}"}).encode()
        auth = {"Authorization": f"Bearer {tokens[user]}", "Content-Type": "application/json"}
        started = time.perf_counter()
        writer.write(build_request("POST", HOST, f"/api/v1/sessions/{sid}/messages", auth, body))
        status, headers, answer = await read_response(reader)
        assert status == 201, answer
        reply = headers["x-reply-id"]
        await asyncio.wait_for(started_seen.setdefault(reply, asyncio.Event()).wait(), 60)
        ttft = (first_delta[reply] - started) * 1000
        # the chat is free again (for the next round) once its reply has finished
        await asyncio.wait_for(finished.setdefault(reply, asyncio.Event()).wait(), 60)
        return ttft

    try:
        results = await staggered(streams, interval, one)
    finally:
        for _, writer in connections:
            writer.close()
    for task in listeners:
        task.cancel()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--profile", type=Path, help="record the server with py-spy during the 200-stream runs, here")
    args = parser.parse_args()
    # The provider runs in a process of its own, as a real one would: in this script's event loop,
    # its answers waited behind the 200 clients'.
    provider_port = free_port()
    provider = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import uvicorn; from tests.fake_openai import FakeOpenAI; "
        f"uvicorn.run(FakeOpenAI().app, host='{HOST}', port={provider_port}, log_level='warning', access_log=False)",
        cwd=BENCH_DIR.parent,
    )
    base_url = f"http://{HOST}:{provider_port}/v1"
    async with httpx.AsyncClient() as probe:
        for _ in range(100):
            with contextlib.suppress(httpx.HTTPError):
                await probe.get(base_url + "/models")
                break
            await asyncio.sleep(0.1)

    server = BenchServer("ai")
    settings, location = server.settings, server.location
    print(f"papo assistants benchmark — {os.cpu_count()} cores, fake provider, {args.rounds} rounds per size")
    try:
        await server.migrate()
        db = Database(location.app_url, pool_size=2)
        async with db.transaction() as session:
            tenant = await auth_service.create_tenant(session, "Bench AI")
            admin, _ = await auth_service.add_member(
                session, email="ai-admin@papo.local", name=None, password=None, role=Role.admin
            )
            users = [
                (
                    await auth_service.add_member(
                        session, email=f"ai{i}@papo.local", name=None, password=None, role=Role.member
                    )
                )[0]
                for i in range(USERS)
            ]
        await db.dispose()
        key = SigningKey.load(settings)
        admin_token = issue_token(settings, key, tenant_id=tenant.id, user_id=admin, role="admin", ttl_seconds=3600)[0]
        tokens = [
            issue_token(settings, key, tenant_id=tenant.id, user_id=u, role="member", ttl_seconds=3600)[0]
            for u in users
        ]
        # the fake provider listens on loopback, which tenants may not reach unless the operator says so
        papo_process = await server.serve(PAPO_PORT, PAPO_DB_POOL_SIZE="20", PAPO_OUTBOUND_ALLOWED_TARGETS=HOST)
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{PAPO_PORT}", timeout=30) as http:
            created = await http.post(
                "/api/v1/assistants",
                headers={"Authorization": f"Bearer {admin_token}"},
                json={"name": "bench", "model": "fake-echo", "base_url": base_url, "api_key": API_KEY},
            )
            assistant_id = created.json()["id"]
            sessions = []
            for index in range(args.streams):
                user = index % USERS
                response = await http.post(
                    "/api/v1/sessions",
                    json={"title": "b", "assistant_id": assistant_id},
                    headers={"Authorization": f"Bearer {tokens[user]}"},
                )
                sessions.append((user, response.json()["id"]))

            header = f"{'direct p50':>10} {'p99':>7} | {'papo p50':>9} {'p99':>7} | {'added p50':>9} {'p99':>7}"
            print(f"\n  {'streams':>7} {'arrivals':>9} | {header}")
            steady_added = burst_added99 = 0.0
            # burst: every stream asked at the same instant (a thundering herd, the worst case);
            # steady: requests arrive evenly while earlier replies still stream, so about `streams`
            # replies are in flight at once, as in a busy service.
            for streams, arrival, model, interval in (
                (1, "single", "fake-echo", 0.0),
                (args.streams, "burst", "fake-echo", 0.0),
                (args.streams, "steady", "fake-slow", SLOW_STREAM_SECONDS / args.streams),
            ):
                direct: list[float] = []
                through: list[float] = []
                for _ in range(args.rounds * (10 if streams == 1 else 1)):  # one stream: more samples
                    direct += await direct_ttft(base_url, model, streams, interval)
                    profile = args.profile / f"{arrival}.txt" if args.profile and streams > 1 else None
                    async with profiled(papo_process.pid if profile else None, profile):
                        through += await papo_ttft(tokens, sessions, streams, interval)
                added50 = statistics.median(through) - statistics.median(direct)
                added99 = pct(through, 0.99) - pct(direct, 0.99)
                if arrival == "steady":
                    steady_added = added50
                if arrival == "burst":
                    burst_added99 = added99
                print(
                    f"  {streams:7d} {arrival:>9} | {statistics.median(direct):10.1f} {pct(direct, 0.99):7.1f} | "
                    f"{statistics.median(through):9.1f} {pct(through, 0.99):7.1f} | {added50:9.1f} {added99:7.1f}"
                )
            lag = (await http.get("/healthz")).json()["loop_lag_ms"]
        lag_figures = f"p50 {lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms"
        print(f"\n  papo event-loop lag over the run (last minute): {lag_figures}")
        print(
            verdict(
                steady_added < 20 and burst_added99 <= BURST_TARGET_MS,
                f"added time to first token: {steady_added:.1f} ms p50 with {args.streams} replies streaming "
                f"(target < 20 ms); {burst_added99:.0f} ms p99 with {args.streams} started at once "
                f"(issue 17's target ≤ {BURST_TARGET_MS} ms)",
            )
        )
    finally:
        await server.close()
        provider.terminate()
        await provider.wait()


if __name__ == "__main__":
    asyncio.run(main())
