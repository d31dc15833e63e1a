"""`make bench-ops`: what operations features cost, in one run on this machine.

1. Message path (POST /api/v1/sessions/{id}/messages) on two papo servers over the same database:
   one with metrics, access logs and rate limits on (the defaults; limits set high enough never to
   refuse, so every message still pays the shared-limit round trip), one with all three off. Load
   alternates between them in halves, so background noise hurts both alike. Target: under 10 %.
2. History page (GET …/messages?limit=50) with a current If-None-Match (answered 304 from the
   validator alone) vs without (the full page), requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import papo.models  # noqa: F401  (every table, so cross-feature foreign keys resolve)
from loadgen import LoadResult, build_request, run_load
from papo.auth import service as auth_service
from papo.auth.models import Role
from papo.auth.tokens import SigningKey, issue_token
from papo.db.engine import Database
from run import HOST, BenchServer, verdict

ON_PORT, OFF_PORT = 8731, 8732
# Background work that is not under test stays off in both, so neither server does the other's.
COMMON = {"PAPO_SENTIMENT_ENABLED": "false"}
OPS_OFF = {
    **COMMON,
    "PAPO_METRICS_ENABLED": "false",
    "PAPO_ACCESS_LOG": "false",
    "PAPO_RATE_LIMITS_ENABLED": "false",
}
PARTS = {"metrics": {"PAPO_METRICS_ENABLED"}, "logs": {"PAPO_ACCESS_LOG"}, "limits": {"PAPO_RATE_LIMITS_ENABLED"}}
# Production logging (JSON access lines at INFO); limits high enough that none refuses: the cost
# measured is the shared check itself, not a 429.
OPS_ON = {
    **COMMON,
    "PAPO_RATE_LIMITS_ENABLED": "true",
    "PAPO_LOG_LEVEL": "INFO",
    "PAPO_LOG_JSON": "true",
    "PAPO_RATE_LIMIT_USER_MESSAGES_PER_MINUTE": "100000000",
}


Load = tuple[int, Callable[[int], bytes], Callable[[int], bool]]  # port, request maker, expected status


def ok(status: int) -> bool:
    return 200 <= status < 300


async def alternate(loads: dict[str, Load], connections: int, seconds: float) -> dict[str, LoadResult]:
    """Each load after a warm-up, in two halves, interleaved: one at a time runs, and a burst of
    background noise hurts all alike."""
    runs: dict[str, list[LoadResult]] = {name: [] for name in loads}
    for port, make, expect in loads.values():
        await run_load(HOST, port, make, connections=connections, seconds=1, expect=expect)
    for _ in range(2):
        for name, (port, make, expect) in loads.items():
            runs[name].append(
                await run_load(HOST, port, make, connections=connections, seconds=seconds / 2, expect=expect)
            )
    return {name: LoadResult.combine(results) for name, results in runs.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--only", choices=["metrics", "logs", "limits"], help="switch on only this one of the three (to see its share)"
    )
    args = parser.parse_args()
    on = dict(OPS_ON)
    if args.only:
        on |= {key: value for key, value in OPS_OFF.items() if key not in PARTS[args.only]}
    server = BenchServer("ops")
    print(f"papo operations benchmark — {os.cpu_count()} cores, PostgreSQL embedded, {time.strftime('%Y-%m-%d %H:%M')}")
    try:
        await server.migrate()
        db = Database(server.location.app_url, pool_size=2)
        async with db.transaction() as session:
            tenant = await auth_service.create_tenant(session, "Bench ops")
            user_id, _ = await auth_service.add_member(
                session, email="ops@papo.local", name=None, password=None, role=Role.member
            )
        await db.dispose()
        token, _ = issue_token(
            server.settings,
            SigningKey.load(server.settings),
            tenant_id=tenant.id,
            user_id=user_id,
            role="member",
            ttl_seconds=3600,
        )
        await server.serve(ON_PORT, quiet=True, **on)
        await server.serve(OFF_PORT, quiet=True, **OPS_OFF)
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{ON_PORT}", headers=auth, timeout=30) as http:
            sessions = []
            for index in range(100):
                created = await http.post("/api/v1/sessions", json={"title": f"ops {index}", "assistant_id": None})
                assert created.status_code == 201, created.text
                sessions.append(created.json()["id"])
            history = sessions[0]
            for n in range(60):
                await http.post(f"/api/v1/sessions/{history}/messages", json={"content": f"mensagem {n}"})

        body = json.dumps({"content": "Olá! Preciso de ajuda com o pedido 1234, por favor."}).encode()

        def message(n: int) -> bytes:
            return build_request("POST", HOST, f"/api/v1/sessions/{sessions[1 + n % 99]}/messages", auth, body)

        print(f"\n1. Message path, ops on vs off ({args.connections} connections, {args.seconds:.0f} s each)")
        results = await alternate(
            {"on": (ON_PORT, message, ok), "off": (OFF_PORT, message, ok)}, args.connections, args.seconds
        )
        on, off = results["on"], results["off"]
        overhead = 1 - on.rate / off.rate
        print(f"    metrics + logs + rate limits on   {on.summary()}  errors {on.errors}")
        print(f"    all three off                     {off.summary()}  errors {off.errors}")
        p50_delta = on.percentile(0.5) - off.percentile(0.5)
        print(f"    throughput overhead {overhead * 100:.1f} %, p50 {p50_delta:+.2f} ms")
        print(verdict(overhead < 0.10 and on.errors == 0, f"overhead {overhead * 100:.1f} % (target < 10 %)"))

        print(f"\n2. History page (50 messages), cached vs uncached ({args.connections} connections)")
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{ON_PORT}", headers=auth, timeout=30) as http:
            etag = (await http.get(f"/api/v1/sessions/{history}/messages?limit=50")).headers["etag"]
        read = {"Authorization": f"Bearer {token}"}
        path = f"/api/v1/sessions/{history}/messages?limit=50"

        def cached(n: int) -> bytes:
            return build_request("GET", HOST, path, {**read, "If-None-Match": etag})

        def uncached(n: int) -> bytes:
            return build_request("GET", HOST, path, read)

        pages = await alternate(
            {"hit": (ON_PORT, cached, lambda status: status == 304), "miss": (ON_PORT, uncached, ok)},
            args.connections,
            args.seconds,
        )
        hit, miss = pages["hit"], pages["miss"]
        print(f"    If-None-Match current (304)   {hit.summary()}  errors {hit.errors}")
        print(f"    no validator (200, full page) {miss.summary()}  errors {miss.errors}")
        speedup = hit.rate / miss.rate
        print(verdict(speedup > 1.0 and hit.errors == 0, f"cached/uncached = {speedup:.2f}x requests/s"))
    finally:
        await server.close()


if __name__ == "__main__":
    asyncio.run(main())
