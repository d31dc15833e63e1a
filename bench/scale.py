"""Scale-out: what publishing an event costs a write.

1. Publishing throughput: 16 concurrent writers, each committing one-row insert transactions as fast
   as it can for a while, through papo's own unit of work; once with the insert alone, once with the
   insert and one published event (papo's path: `emit`, the publish function, the stamp after
   commit). Same PostgreSQL, same run, alternating rounds. Target (issue 16): ratio >= 0.8 (0004's
   installation-wide lock on publishing commits gave about 0.3).
Run: `make bench-scale`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
from sqlalchemy.ext.asyncio import AsyncSession

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
sys.path.insert(0, str(BENCH_DIR.parent / "src"))
from papo.auth import service as auth_service  # noqa: E402
from papo.auth.models import Role  # noqa: E402
from papo.auth.service import Principal  # noqa: E402
from papo.db.engine import Database, driver  # noqa: E402
from papo.realtime.service import emit  # noqa: E402
from run import BenchServer, plain_dsn, verdict  # noqa: E402

TARGET_RATIO = 0.8


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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--writers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    server = BenchServer("scale")
    try:
        await server.migrate()
        owner = await asyncpg.connect(plain_dsn(server.location.owner_url))
        app_role = server.location.app_url.username
        await owner.execute(
            "CREATE TABLE bench_writes (id uuid PRIMARY KEY, tenant_id uuid NOT NULL, body text NOT NULL, "
            "created_at timestamptz NOT NULL DEFAULT now());"
            f'GRANT INSERT ON bench_writes TO "{app_role}"'
        )
        await owner.close()
        db = Database(server.location.app_url, pool_size=args.writers + 4)
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
        for _ in range(args.rounds):
            plain.append(await commits_per_second(db, principal, args.writers, args.seconds, insert))
            published.append(await commits_per_second(db, principal, args.writers, args.seconds, insert_and_publish))
        await db.dispose()
        base, papo = statistics.median(plain), statistics.median(published)
        ratio = papo / base
        print(f"papo scale benchmark — {args.writers} writers, {args.rounds} rounds of {args.seconds:.0f} s each")
        print(f"  insert only:            {base:8.0f} commits/s (rounds: {', '.join(f'{v:.0f}' for v in plain)})")
        print(f"  insert + one event:     {papo:8.0f} commits/s (rounds: {', '.join(f'{v:.0f}' for v in published)})")
        print(
            verdict(
                ratio >= TARGET_RATIO,
                f"publishing keeps {ratio:.2f} of the plain write rate (target >= {TARGET_RATIO})",
            )
        )
    finally:
        await server.close()


if __name__ == "__main__":
    asyncio.run(main())
