"""Operations: what a metrics scrape reads from the database, and when each event was written.

Revision ID: 0014_ops_metrics
Revises: 0013_webhook_queue

papo_ops_snapshot() gives counts across every tenant (WhatsApp sessions by status, queue depths)
without handing the runtime role the rows themselves: only numbers leave the function.
papo_events_after() now also returns created_at, so the relay can measure how late events arrive.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0014_ops_metrics"
down_revision = "0013_webhook_queue"

UPGRADE_SQL = """
DROP FUNCTION papo_events_after(bigint, integer);
CREATE FUNCTION papo_events_after(p_after bigint, p_limit integer)
  RETURNS TABLE (event_tenant_id uuid, event_id bigint, event_audience text, event_user_id text,
                 event_type text, event_payload jsonb, event_created_at timestamptz)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT tenant_id, id, audience, user_id, type, payload, created_at FROM events
     WHERE id > p_after ORDER BY id LIMIT least(p_limit, 10000);
  $$;

CREATE POLICY ops_snapshot ON whatsapp_webhook_deliveries FOR SELECT TO papo_auth USING (true);

CREATE FUNCTION papo_ops_snapshot()
  RETURNS TABLE (metric text, label text, value double precision)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT 'whatsapp_sessions', status, count(*)::double precision FROM whatsapp_sessions GROUP BY status
    UNION ALL
    SELECT 'queue_depth', 'whatsapp_webhooks', count(*)::double precision FROM whatsapp_webhook_deliveries
    UNION ALL
    SELECT 'queue_oldest_seconds', 'whatsapp_webhooks',
           coalesce(extract(epoch FROM now() - min(received_at)), 0)::double precision
      FROM whatsapp_webhook_deliveries;
  $$;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions("papo_events_after(bigint, integer)", "papo_ops_snapshot()")


def downgrade() -> None:
    execute_script(
        """
DROP FUNCTION papo_ops_snapshot();
DROP POLICY ops_snapshot ON whatsapp_webhook_deliveries;
DROP FUNCTION papo_events_after(bigint, integer);
CREATE FUNCTION papo_events_after(p_after bigint, p_limit integer)
  RETURNS TABLE (event_tenant_id uuid, event_id bigint, event_audience text, event_user_id text,
                 event_type text, event_payload jsonb)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT tenant_id, id, audience, user_id, type, payload FROM events
     WHERE id > p_after ORDER BY id LIMIT least(p_limit, 10000);
  $$;
"""
    )
    own_definer_functions("papo_events_after(bigint, integer)")
