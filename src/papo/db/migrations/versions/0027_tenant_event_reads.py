"""One tenant's events after a position, for a process that follows that tenant through NATS.

Revision ID: 0027_tenant_event_reads
Revises: 0026_lean_event_indexes

With NATS fan-out (papo.realtime.nats_fanout) a process no longer reads every tenant's events; when
it must fill a gap in one tenant's feed (after a reconnect, a bridge restart, a stream that was
reset) it reads that tenant's events from the outbox, which stays the source of truth. Like
papo_events_after, it crosses audiences (the process routes each event with Event.visible_to).
`id > p_after` on the partial position index: a feed's position is recent, so the scan is short.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0027_tenant_event_reads"
down_revision = "0026_lean_event_indexes"

UPGRADE_SQL = """
CREATE FUNCTION papo_tenant_events_after(p_tenant uuid, p_after bigint, p_limit integer)
  RETURNS TABLE (event_tenant_id uuid, event_id bigint, event_audience text, event_user_id text,
                 event_type text, event_payload jsonb, event_created_at timestamptz)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    SELECT tenant_id, id, audience, user_id, type, payload, created_at FROM events
     WHERE id > p_after AND tenant_id = p_tenant ORDER BY id LIMIT least(p_limit, 10000);
  $$;
"""

DOWNGRADE_SQL = """
DROP FUNCTION papo_tenant_events_after(uuid, bigint, integer);
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions("papo_tenant_events_after(uuid, bigint, integer)")


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
