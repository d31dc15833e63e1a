"""`make bench`: papo's core figures side by side with a baseline, in one run on this machine.

1. Message path: POST /api/v1/sessions/{id}/messages (auth, RLS, trigger) vs a bare FastAPI +
   asyncpg INSERT, same load generator, same time, one worker each; writes spread over many
   sessions and all on one session.
2. History: first page and a deep page of one session with 1k messages in the table, then with
   1M messages in the table.
3. Search: papo's full-text search vs ILIKE '%q%' over the same user's messages, 1M in the table,
   for a rare and a common word.
Each prints its figures and a one-line verdict. Absolute numbers are noisy; the ratios matter.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parent))
import papo.models  # noqa: F401  (every table, so cross-feature foreign keys resolve)
from loadgen import LoadResult, build_request, run_load, sequential_latency
from papo.auth import service as auth_service
from papo.auth.models import Role
from papo.auth.service import Principal
from papo.auth.tokens import SigningKey, issue_token
from papo.chat.search import search_messages
from papo.chat.service import ChatService
from papo.db.engine import Database, locate_database
from papo.db.migrate import ensure_database, migrate
from papo.settings import Settings
from profiling import CpuMeter, postgres_pids, process_tree, profiled, settled

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
PAPO_PORT = 8711
BASE_PORT = 8712
WORDS = [
    "projeto",
    "cliente",
    "pedido",
    "entrega",
    "prazo",
    "contrato",
    "reunião",
    "proposta",
    "orçamento",
    "suporte",
    "sistema",
    "acesso",
    "senha",
    "relatório",
    "vendas",
    "estoque",
    "produto",
    "serviço",
    "atendimento",
    "dúvida",
    "problema",
    "solução",
    "equipe",
    "gerente",
    "financeiro",
    "pagamento",
    "boleto",
    "nota",
    "fiscal",
    "cadastro",
    "usuário",
    "conta",
    "plano",
    "assinatura",
    "cancelamento",
    "renovação",
    "desconto",
    "integração",
    "api",
    "webhook",
    "token",
    "erro",
    "falha",
    "lentidão",
    "servidor",
    "banco",
    "dados",
    "backup",
    "migração",
    "versão",
    "atualização",
    "semana",
    "mês",
    "hoje",
    "amanhã",
    "ontem",
    "manhã",
    "tarde",
    "noite",
    "obrigado",
    "bom",
    "dia",
    "boa",
    "tarde",
    "favor",
    "confirmar",
    "enviar",
    "receber",
    "analisar",
    "revisar",
    "aprovar",
    "documento",
    "arquivo",
    "planilha",
    "apresentação",
    "email",
    "telefone",
    "endereço",
    "cidade",
    "estado",
    "loja",
    "filial",
    "matriz",
    "fornecedor",
    "transporte",
    "frete",
    "logística",
    "armazém",
    "caixa",
    "compra",
    "venda",
    "meta",
    "resultado",
]
RARE_WORD = "xilofone"
METRICS_TOKEN = "bench-metrics-" + uuid.uuid4().hex
COMMON_WORD = "projeto"


def plain_dsn(url: Any) -> str:
    return str(url.set(drivername="postgresql").render_as_string(hide_password=False))


def verdict(ok: bool, text: str) -> str:
    return f"  verdict: {'PASS' if ok else 'MISS'} — {text}"


async def wait_healthy(port: int, process: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            if process.returncode is not None:
                raise RuntimeError(f"server on {port} exited with {process.returncode}")
            try:
                if (await client.get(f"http://{HOST}:{port}/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"server on {port} did not start")


class BenchServer:
    """A throw-away embedded PostgreSQL, migrated, and `papo serve` processes on it: what every
    benchmark script starts from."""

    def __init__(self, name: str, **settings: Any) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=f"papo-bench-{name}-"))
        self.settings = Settings(
            data_dir=self.workdir / "data",
            log_level="WARNING",
            _env_file=None,  # type: ignore[call-arg]
            **settings,
        )
        self.location = locate_database(self.settings)
        self.processes: list[asyncio.subprocess.Process] = []

    @property
    def owner_dsn(self) -> str:
        return plain_dsn(self.location.owner_url)

    async def migrate(self) -> None:
        await ensure_database(self.location.owner_url)
        await migrate(self.location.owner_url, self.location.app_url, create_app_role=True)

    def env(self, port: int, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PAPO_DATABASE_URL": self.location.owner_url.render_as_string(hide_password=False),
            "PAPO_DATA_DIR": str(self.settings.data_dir),
            "PAPO_LOG_LEVEL": "WARNING",
            "PAPO_PORT": str(port),
            # one issuer for every server of the run, so tokens made from self.settings work on all
            "PAPO_PUBLIC_URL": self.settings.issuer,
            # one load generator is one user sending hundreds of messages a second: the per-user
            # limits would refuse it; bench/ops.py switches them on to measure what they cost
            "PAPO_RATE_LIMITS_ENABLED": "false",
            **extra,
        }

    async def serve(self, port: int, *, quiet: bool = False, **extra_env: str) -> asyncio.subprocess.Process:
        """`papo serve` on `port` (PAPO_* settings in `extra_env`), once it answers /healthz; `quiet`
        sends its logs nowhere (they are still produced: their cost is part of what is measured)."""
        process = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "papo"),
            "serve",
            env=self.env(port, **extra_env),
            stderr=asyncio.subprocess.DEVNULL if quiet else None,
        )
        self.processes.append(process)
        await wait_healthy(port, process)
        return process

    async def close(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.terminate()
        for process in self.processes:
            await asyncio.wait_for(process.wait(), 10)
        self.location.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Bench:
    def __init__(self, seconds: float, connections: int, total_messages: int, profile_dir: Path | None) -> None:
        self.seconds = seconds
        self.profile_dir = profile_dir
        self.connections = connections
        self.total_messages = total_messages
        self.server = BenchServer("core")
        self.settings, self.location = self.server.settings, self.server.location

    async def setup(self) -> None:
        await self.server.migrate()
        self.owner = await asyncpg.connect(plain_dsn(self.location.owner_url))
        await self.owner.execute(
            "CREATE TABLE bench_baseline_messages (id uuid PRIMARY KEY, session_id uuid NOT NULL, "
            "content text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
        )
        self.db = Database(self.location.app_url, pool_size=2)
        async with self.db.transaction() as session:
            tenant = await auth_service.create_tenant(session, "Bench")
            self.user_id, _ = await auth_service.add_member(
                session, email="bench@papo.local", name="Bench", password=None, role=Role.member
            )
        self.tenant_id = tenant.id
        self.principal = Principal(self.tenant_id, self.user_id, Role.member.value)
        self.token, _ = issue_token(
            self.settings, SigningKey.load(self.settings), tenant_id=self.tenant_id, user_id=self.user_id, role="member"
        )
        self.sessions = [await self.new_session(f"bench {i}") for i in range(200)]

    async def new_session(self, title: str) -> uuid.UUID:
        async with self.db.transaction(self.principal.context()) as session:
            chat = await ChatService(session, self.principal, self.settings).create_chat_session(self.user_id, title)
            return chat.id

    async def start_servers(self) -> None:
        # As an operator runs it: metrics, JSON access logs (produced, then thrown away) and the
        # per-user message limit on, set above what the load generator's one user sends.
        self.papo_process = await self.server.serve(
            PAPO_PORT,
            quiet=True,
            PAPO_LOG_LEVEL="INFO",
            PAPO_LOG_JSON="true",
            PAPO_METRICS_ENABLED="true",
            PAPO_RATE_LIMITS_ENABLED="true",
            PAPO_RATE_LIMIT_USER_MESSAGES_PER_MINUTE="100000000",
            PAPO_METRICS_TOKEN=METRICS_TOKEN,
        )
        baseline = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "uvicorn",
            "baseline_app:app",
            "--host",
            HOST,
            "--port",
            str(BASE_PORT),
            "--no-access-log",
            "--log-level",
            "warning",
            env={**os.environ, "BENCH_DSN": plain_dsn(self.location.owner_url)},
            cwd=BENCH_DIR,
        )
        self.baseline_process = baseline
        self.server.processes.append(baseline)
        await wait_healthy(BASE_PORT, baseline)

    async def message_path(self) -> None:
        auth = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        plain = {"Content-Type": "application/json"}
        body = json.dumps({"content": "Olá! Preciso de ajuda com o pedido 1234, por favor."}).encode()
        print(
            "\n1. Message path (one worker each, same load generator, "
            f"{self.connections} connections, {self.seconds:.0f} s)"
        )
        for label, pick, target in (
            ("spread over 200 sessions", lambda n: self.sessions[n % 200], 0.5),
            ("one hot session", lambda n: self.sessions[0], 0.3),
        ):

            def papo_request(n: int, pick: Any = pick) -> bytes:
                return build_request("POST", HOST, f"/api/v1/sessions/{pick(n)}/messages", auth, body)

            def base_request(n: int, pick: Any = pick) -> bytes:
                return build_request("POST", HOST, f"/sessions/{pick(n)}/messages", plain, body)

            await run_load(HOST, PAPO_PORT, papo_request, connections=self.connections, seconds=1)  # warm-up
            await run_load(HOST, BASE_PORT, base_request, connections=self.connections, seconds=1)
            # Alternate the two in halves, so a burst of background noise hurts both alike.
            papo_runs, base_runs = [], []
            meter = CpuMeter(
                papo=lambda: [self.papo_process.pid],
                scoring=lambda: process_tree(self.papo_process.pid)[1:],  # its sentiment child
                postgres=postgres_pids,
            )
            base_meter = CpuMeter(baseline=lambda: [self.baseline_process.pid], postgres=postgres_pids)
            cpu = {"papo": 0.0, "scoring": 0.0, "postgres": 0.0}
            base_cpu = {"baseline": 0.0, "postgres": 0.0}
            statements = 0.0
            settling = 0.0
            for half in range(2):
                profile = self.profile_dir / f"message-path-{label.split()[0]}.txt" if self.profile_dir else None
                statements -= await self.statements_run()
                meter.start()
                async with profiled(self.papo_process.pid if half == 0 else None, profile):
                    papo_runs.append(
                        await run_load(
                            HOST, PAPO_PORT, papo_request, connections=self.connections, seconds=self.seconds / 2
                        )
                    )
                # papo's background work for this half (scoring, consumers) finishes before the
                # baseline runs, and counts as papo's
                settling += await settled(lambda: process_tree(self.papo_process.pid), postgres_pids)
                for name, seconds in meter.stop().items():
                    cpu[name] += seconds
                statements += await self.statements_run()
                base_meter.start()
                base_runs.append(
                    await run_load(
                        HOST, BASE_PORT, base_request, connections=self.connections, seconds=self.seconds / 2
                    )
                )
                for name, seconds in base_meter.stop().items():
                    base_cpu[name] += seconds
            papo_result, base_result = LoadResult.combine(papo_runs), LoadResult.combine(base_runs)
            ratio = papo_result.rate / base_result.rate
            print(f"  {label}")
            print(f"    papo     {papo_result.summary()}")
            print(f"    baseline {base_result.summary()}")
            print(f"    ratio {ratio:.2f}")
            print(
                f"    per papo request: {1000 * cpu['papo'] / papo_result.requests:.2f} ms CPU in papo serve, "
                f"{1000 * cpu['scoring'] / papo_result.requests:.2f} ms in its sentiment child (idle priority), "
                f"{1000 * cpu['postgres'] / papo_result.requests:.2f} ms in PostgreSQL, "
                f"{statements / papo_result.requests:.1f} statements (background work included; "
                f"{settling:.1f} s of it after the load)"
            )
            print(
                f"    per baseline request: {1000 * base_cpu['baseline'] / base_result.requests:.2f} ms CPU in its "
                f"server, {1000 * base_cpu['postgres'] / base_result.requests:.2f} ms in PostgreSQL"
            )
            print(
                verdict(
                    ratio >= target and papo_result.errors == 0,
                    f"papo/baseline = {ratio:.2f} (target ≥ {target}), {papo_result.errors} errors",
                )
            )

    async def statements_run(self) -> float:
        """Statements the papo server has sent to PostgreSQL so far (its /metrics)."""
        async with httpx.AsyncClient() as client:
            response = await client.get(
                f"http://{HOST}:{PAPO_PORT}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
            )
        for line in response.text.splitlines():
            if line.startswith("papo_db_query_duration_seconds_count"):
                return float(line.split()[-1])
        raise RuntimeError("papo's /metrics has no papo_db_query_duration_seconds_count")

    async def fill_session(self, count: int) -> uuid.UUID:
        session_id = await self.new_session("history")
        await self.owner.execute("ALTER TABLE messages DISABLE TRIGGER USER")
        await self.owner.execute(
            """
            INSERT INTO messages (tenant_id, id, session_id, user_id, channel, role, content, created_at, updated_at)
            SELECT $1, gen_random_uuid(), $2, $3, 'api', CASE WHEN g % 2 = 0 THEN 'user' ELSE 'assistant' END,
                   'mensagem ' || g, now() - interval '1 day' + g * interval '1 millisecond',
                   now() - interval '1 day' + g * interval '1 millisecond'
              FROM generate_series(1, $4) g
            """,
            self.tenant_id,
            session_id,
            self.user_id,
            count,
        )
        await self.owner.execute("ALTER TABLE messages ENABLE TRIGGER USER")
        return session_id

    async def history_latency(self, session_id: uuid.UUID) -> tuple[float, float]:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=f"http://{HOST}:{PAPO_PORT}", headers=headers) as client:
            cursor = None
            for _ in range(18):  # walk 900 messages in to find a deep cursor
                page = (
                    await client.get(
                        f"/api/v1/sessions/{session_id}/messages",
                        params={"limit": 50, **({"after": cursor} if cursor else {})},
                    )
                ).json()
                cursor = page["next_cursor"]
        first = build_request("GET", HOST, f"/api/v1/sessions/{session_id}/messages?limit=50", headers)
        deep = build_request("GET", HOST, f"/api/v1/sessions/{session_id}/messages?limit=50&after={cursor}", headers)
        await sequential_latency(HOST, PAPO_PORT, first, 50)  # warm-up
        return (
            await sequential_latency(HOST, PAPO_PORT, first, 300),
            await sequential_latency(HOST, PAPO_PORT, deep, 300),
        )

    async def bulk_load(self, target: int) -> None:
        present = await self.owner.fetchval("SELECT count(*) FROM messages")
        missing = max(0, target - present)
        print(f"\n   (loading {missing:,} messages: 100 users, 1,000 sessions; this takes a minute)")
        started = time.perf_counter()
        await self.owner.execute("INSERT INTO users (id) SELECT 'bench-user-' || g FROM generate_series(1, 99) g")
        await self.owner.execute(
            "INSERT INTO memberships (tenant_id, user_id) SELECT $1, 'bench-user-' || g FROM generate_series(1, 99) g",
            self.tenant_id,
        )
        await self.owner.execute(
            """
            INSERT INTO chat_sessions (tenant_id, id, user_id, title, channel)
            SELECT $1, gen_random_uuid(), 'bench-user-' || (1 + g % 99), 'bulk ' || g, 'api'
              FROM generate_series(1, 700) g
            """,
            self.tenant_id,
        )
        for i in range(100):  # the searching user owns 300 of the 1,000 sessions
            await self.new_session(f"bulk main {i}")
        await self.owner.execute("DROP INDEX ix_messages_search_vector")
        await self.owner.execute("ALTER TABLE messages DISABLE TRIGGER USER")
        await self.owner.execute(
            """
            WITH targets AS (
              SELECT array_agg(id ORDER BY id) AS ids, array_agg(user_id ORDER BY id) AS owners, count(*) AS n
                FROM chat_sessions
               WHERE tenant_id = $1 AND (title LIKE 'bulk %' OR title LIKE 'bench %')
            )
            INSERT INTO messages (tenant_id, id, session_id, user_id, channel, role, content, created_at, updated_at)
            SELECT $1, gen_random_uuid(), t.ids[1 + g % t.n], t.owners[1 + g % t.n], 'api', 'user',
                   (SELECT string_agg(($3::text[])[1 + floor(random() * array_length($3::text[], 1))::int], ' ')
                      FROM generate_series(1, 8 + g % 7) w WHERE g > 0)
                   || CASE WHEN random() < 0.3 THEN ' $4' ELSE '' END,
                   now() - interval '300 days' + g * interval '20 ms',
                   now() - interval '300 days' + g * interval '20 ms'
              FROM targets t, generate_series(1, $2) g
            """.replace("$4", COMMON_WORD),
            self.tenant_id,
            missing,
            WORDS,
        )
        rare_sessions = self.sessions[:5]
        for i, session_id in enumerate(rare_sessions):
            await self.owner.execute(
                "INSERT INTO messages (tenant_id, id, session_id, user_id, channel, role, content, created_at, "
                "updated_at) VALUES ($1, gen_random_uuid(), $2, $3, 'api', 'user', $4, "
                "now() - $5 * interval '1 day', now())",
                self.tenant_id,
                session_id,
                self.user_id,
                f"alguém viu o {RARE_WORD} azul? número {i}",
                i * 40,
            )
        await self.owner.execute("ALTER TABLE messages ENABLE TRIGGER USER")
        await self.owner.execute("CREATE INDEX ix_messages_search_vector ON messages USING gin (search_vector)")
        await self.owner.execute("ANALYZE")
        total = await self.owner.fetchval("SELECT count(*) FROM messages")
        mine = await self.owner.fetchval("SELECT count(*) FROM messages WHERE user_id = $1", self.user_id)
        print(
            f"   ({total:,} messages in the table, {mine:,} of them the searching user's; "
            f"{time.perf_counter() - started:.0f} s)"
        )

    async def history(self, session_id: uuid.UUID, small: tuple[float, float]) -> None:
        large = await self.history_latency(session_id)
        print("\n2. History page latency (median of 300 sequential requests, ms)")
        print(f"    {'':12} {'1k in table':>12} {'1M in table':>12} {'ratio':>7}")
        worst = 0.0
        for label, a, b in (("first page", small[0], large[0]), ("deep page", small[1], large[1])):
            worst = max(worst, b / a)
            print(f"    {label:12} {a:12.2f} {b:12.2f} {b / a:7.2f}")
        print(verdict(worst <= 1.5, f"worst ratio {worst:.2f} (target ≤ 1.5)"))

    async def search(self) -> None:
        print("\n3. Search over the user's messages, 1M in the table (median of 15 runs, ms)")
        results = {}
        for word in (RARE_WORD, COMMON_WORD):
            fts, ilike = [], []
            for _ in range(15):
                async with self.db.transaction(self.principal.context()) as session:
                    started = time.perf_counter()
                    hits, _ = await search_messages(session, self.tenant_id, self.user_id, word, limit=20, cursor=None)
                    fts.append((time.perf_counter() - started) * 1000)
                async with self.db.transaction(self.principal.context()) as session:
                    started = time.perf_counter()
                    rows = (
                        await session.execute(
                            text(
                                "SELECT id, content FROM messages WHERE tenant_id = :t AND user_id = :u "
                                "AND content ILIKE :q ORDER BY created_at DESC LIMIT 20"
                            ),
                            {"t": self.tenant_id, "u": self.user_id, "q": f"%{word}%"},
                        )
                    ).all()
                    ilike.append((time.perf_counter() - started) * 1000)
            results[word] = (statistics.median(fts), statistics.median(ilike), len(hits), len(rows))
        for word, (fts_ms, ilike_ms, n_fts, n_ilike) in results.items():
            kind = "rare" if word == RARE_WORD else "common"
            print(
                f"    {kind:6} '{word}': full-text {fts_ms:8.2f} ({n_fts} hits, ranked)   "
                f"ILIKE {ilike_ms:8.2f} ({n_ilike} hits, newest)   speed-up {ilike_ms / fts_ms:6.1f}x"
            )
        rare_speedup = results[RARE_WORD][1] / results[RARE_WORD][0]
        print(
            verdict(
                rare_speedup >= 10,
                f"rare-word speed-up {rare_speedup:.0f}x; common word "
                f"{results[COMMON_WORD][0]:.0f} ms ranked vs {results[COMMON_WORD][1]:.0f} ms unranked",
            )
        )

    async def run(self, only: str | None) -> None:
        await self.setup()
        await self.start_servers()
        if only == "messages":
            await self.message_path()
            return
        history_session = await self.fill_session(1000)
        small = await self.history_latency(history_session)
        await self.message_path()
        await self.bulk_load(self.total_messages)
        await self.history(history_session, small)
        await self.search()

    async def close(self) -> None:
        if hasattr(self, "owner"):
            await self.owner.close()
        if hasattr(self, "db"):
            await self.db.dispose()
        await self.server.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each load run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--messages", type=int, default=1_000_000, help="messages in the table for 2 and 3")
    parser.add_argument("--only", choices=["messages"], help="run only the message-path benchmark")
    parser.add_argument("--profile", type=Path, help="record the server with py-spy into this directory")
    args = parser.parse_args()
    bench = Bench(args.seconds, args.connections, args.messages, args.profile)
    print(f"papo benchmark — {os.cpu_count()} cores, PostgreSQL embedded, {time.strftime('%Y-%m-%d %H:%M')}")
    try:
        await bench.run(args.only)
    finally:
        await bench.close()


if __name__ == "__main__":
    asyncio.run(main())
