"""One way to write SQL per purpose (README, "Code map"): SQLAlchemy (ORM classes and Core) for
queries on papo's tables; SQL strings sent straight to asyncpg only on the measured hot paths
below. A call of a database function (definer functions, advisory locks, NOTIFY) is a string
anywhere, since it names no table. A module that writes table SQL by hand and is not listed fails."""

from __future__ import annotations

import ast
import re

from tests.test_table_ownership import OWNERS, SOURCE, TABLE_AFTER_KEYWORD

# module -> the path that earns it hand-written statements (bench/ measures each)
HOT_PATHS: dict[str, str] = {
    "auth/service.py": "authentication on every request",
    "auth/tenant_settings.py": "the AI quota read before every reply starts",
    "chat/service.py": "the message insert and the dashboard's previews",
    "chat/reply_lifecycle.py": "every reply's placeholder, stream and finish",
    "chat/channel.py": "every WhatsApp message in and out",
    "chat/caching.py": "the conditional GET in front of every history read",
    "chat/search.py": "one statement over the definer candidates function (CTE, LATERAL, ts_headline)",
    "assistants/usage.py": "metering on every reply",
    "realtime/service.py": "publishing and reading the outbox",
    "whatsapp/ingest.py": "the webhook queue: its one-statement durable insert and its batches",
    "knowledge/repository.py": "retrieval (one statement fusing full-text and vector ranks) and bulk passage writes",
}
STATEMENT = re.compile(r"\s*(SELECT|INSERT|UPDATE|DELETE|WITH)\b")
TABLES = {table for tables in OWNERS.values() for table in tables}


def hand_written_table_sql() -> set[str]:
    found: set[str] = set()
    for path in SOURCE.rglob("*.py"):
        module = path.relative_to(SOURCE).as_posix()
        if module.startswith("db/"):
            continue  # migrations and the database layer itself
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str) and STATEMENT.match(node.value)):
                continue
            if any(name.lower() in TABLES for name in TABLE_AFTER_KEYWORD.findall(node.value)):
                found.add(module)
    return found


def test_table_sql_is_hand_written_only_on_hot_paths() -> None:
    assert hand_written_table_sql() - HOT_PATHS.keys() == set(), "write it with SQLAlchemy (see the README)"


def test_every_hot_path_still_writes_its_own_sql() -> None:
    assert HOT_PATHS.keys() - hand_written_table_sql() == set(), "no longer hand-written: take it off HOT_PATHS"


def test_the_check_sees_hand_written_sql() -> None:
    assert STATEMENT.match("\n  SELECT id FROM messages")
    assert TABLE_AFTER_KEYWORD.findall("SELECT * FROM papo_authenticate_web_session($1)") == [
        "papo_authenticate_web_session"
    ]
