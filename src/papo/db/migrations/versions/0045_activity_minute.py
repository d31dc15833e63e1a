"""Chat lists ordered through a minute of activity, so that a message's update of its chat is HOT.

Revision ID: 0045_activity_minute
Revises: 0044_outbox_batches_without_xid

Every message updates its chat's row (migration 0001's trigger: `last_message_at`, from which
`activity_at` is generated). `activity_at` was a key of two indexes (the owner's chat list and the
WhatsApp inbox), so no such update could be HOT: each message added an entry to every index of
`chat_sessions`, and each of them was walked again, dead entries included, by the next message's
lookups of the same chat (`make bench-core`: the insert path spent about a quarter of its
PostgreSQL CPU there).

The lists are now keyed by `activity_minute`, the minute of `activity_at` (the Unix epoch's minutes,
computed by an immutable function: an epoch does not depend on the time zone). It changes at most
once a minute per chat, so the other updates are HOT, and fillfactor 80 keeps room on each page for
the new versions. The lists still order by the exact `activity_at` within a minute (an incremental
sort of the index's order; keyset cursors are unchanged).
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0045_activity_minute"
down_revision = "0044_outbox_batches_without_xid"

UPGRADE_SQL = """
CREATE FUNCTION papo_activity_minute(p_at timestamptz) RETURNS bigint
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  RETURN floor(extract(epoch FROM p_at) / 60)::bigint;

ALTER TABLE chat_sessions
  ADD COLUMN activity_minute bigint
  GENERATED ALWAYS AS (papo_activity_minute(coalesce(last_message_at, created_at))) STORED;
ALTER TABLE chat_sessions SET (fillfactor = 80);

DROP INDEX ix_chat_sessions_owner_listing;
CREATE INDEX ix_chat_sessions_owner_listing ON chat_sessions (tenant_id, user_id, status, activity_minute DESC);
DROP INDEX ix_chat_sessions_inbox;
CREATE INDEX ix_chat_sessions_inbox ON chat_sessions (tenant_id, ticket_status, activity_minute DESC)
  WHERE channel = 'whatsapp';
"""

DOWNGRADE_SQL = """
DROP INDEX ix_chat_sessions_inbox;
CREATE INDEX ix_chat_sessions_inbox ON chat_sessions (tenant_id, ticket_status, activity_at DESC)
  WHERE channel = 'whatsapp';
DROP INDEX ix_chat_sessions_owner_listing;
CREATE INDEX ix_chat_sessions_owner_listing ON chat_sessions (tenant_id, user_id, status, activity_at DESC, id DESC);
ALTER TABLE chat_sessions RESET (fillfactor);
ALTER TABLE chat_sessions DROP COLUMN activity_minute;
DROP FUNCTION papo_activity_minute(timestamptz);
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
