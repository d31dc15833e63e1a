"""Each feature owns its tables: SQL that names a feature's table lives in that feature's package.

Every string literal in src/papo (migrations aside) is read for `FROM / JOIN / INTO / UPDATE / TABLE
<name>`; a module outside the owning feature that names the table fails here. KNOWN_CROSSINGS are
the crossings still to be moved behind the owner's service: the list may only shrink (an entry that
no longer occurs fails too, so it is taken off when its code moves)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import papo

SOURCE = Path(papo.__file__).parent
OWNERS: dict[str, list[str]] = {
    "auth": [
        "tenants",
        "users",
        "memberships",
        "api_keys",
        "web_sessions",
        "invitations",
        "membership_removals",
        "user_identities",
    ],
    "chat": ["chat_sessions", "messages", "contacts", "attachments", "blob_deletions", "conversation_reads"],
    "realtime": ["events", "events_retention", "outbox_cursors"],
    "assistants": ["assistants", "usage_daily", "assistant_tools"],
    "whatsapp": ["whatsapp_sessions", "whatsapp_webhook_deliveries", "canned_responses", "teams", "team_members"],
    "webhooks": ["webhook_endpoints", "webhook_deliveries"],
    "insights": ["message_sentiments"],
    "knowledge": [
        "knowledge_collections",
        "knowledge_documents",
        "knowledge_chunks",
        "knowledge_embeddings",
        "assistant_collections",
        "chat_document_chunks",
    ],
    "ops": ["alert_states", "ops_observations", "rate_limit_buckets", "sign_in_guards"],
}
# (module, table) pairs still to be moved behind the owner's service; empty since the WhatsApp
# inbox stores its conversations through papo.chat.channel. Keep it empty.
KNOWN_CROSSINGS: set[tuple[str, str]] = set()
TABLE_AFTER_KEYWORD = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+([a-z_]+)", re.IGNORECASE)


def crossings() -> set[tuple[str, str]]:
    owner = {table: feature for feature, tables in OWNERS.items() for table in tables}
    found: set[tuple[str, str]] = set()
    for path in SOURCE.rglob("*.py"):
        module = path.relative_to(SOURCE)
        if module.parts[:2] == ("db", "migrations"):
            continue  # the schema's history names every table
        feature = module.parts[0] if len(module.parts) > 1 else module.stem
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for match in TABLE_AFTER_KEYWORD.finditer(node.value):
                    table = match.group(1).lower()
                    if table in owner and owner[table] != feature:
                        found.add((module.as_posix(), table))
    return found


def test_every_table_has_an_owner() -> None:
    migrations = (SOURCE / "db" / "migrations" / "versions").glob("*.py")
    created = {
        name for path in migrations for name in re.findall(r"CREATE (?:UNLOGGED )?TABLE ([a-z_]+)", path.read_text())
    }
    owned = {table for tables in OWNERS.values() for table in tables}
    assert created - owned == set(), "a new table needs an owner in OWNERS"


def test_sql_names_only_its_own_features_tables() -> None:
    found = crossings()
    assert found - KNOWN_CROSSINGS == set(), "move this SQL behind the owning feature's service"
    assert KNOWN_CROSSINGS - found == set(), "this crossing is gone: take it off KNOWN_CROSSINGS"


def test_the_check_sees_a_crossing() -> None:
    assert TABLE_AFTER_KEYWORD.findall("SELECT 1 FROM events e JOIN messages m ON true") == ["events", "messages"]
