"""Outbound webhook deliveries numbered, claimed and sent in event order.

Revision ID: 0029_webhook_fan_out_order
Revises: 0028_tenant_keyed_uniques

papo_webhook_fan_out inserts a batch of events' deliveries at once; the join with the endpoints may
produce them in any order, and the identity numbers follow that order. Since events are stamped in
gathered batches (0025 and papo.realtime.service.Stamper), one fan-out batch often holds a chat's
`session.created` and its first `message.created`: the log (newest first, by delivery id) must show
them in the order they happened. Sends are claimed oldest first (ties by id), and the sender sends
one endpoint's deliveries one after another in id order (papo.webhooks.service).
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0029_webhook_fan_out_order"
down_revision = "0028_tenant_keyed_uniques"

ORDERED = "       ORDER BY e.event_id, w.id\n"
FAN_OUT_SQL = """
CREATE OR REPLACE FUNCTION papo_webhook_fan_out(p_events jsonb) RETURNS integer
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    WITH added AS (
      INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id, event_type, payload)
      SELECT e.tenant_id, w.id, e.event_id, e.event_type, e.payload
        FROM jsonb_to_recordset(p_events) AS e(tenant_id uuid, event_id bigint, event_type text, payload jsonb)
        JOIN webhook_endpoints w ON w.tenant_id = e.tenant_id AND w.is_active
                                 AND e.event_type = ANY (w.event_types)
{ordered}      ON CONFLICT DO NOTHING
      RETURNING 1)
    SELECT count(*)::integer FROM added;
  $$;
"""


CLAIM_SQL = """
CREATE OR REPLACE FUNCTION papo_claim_webhook_sends(p_limit integer, p_lease double precision)
  RETURNS TABLE (delivery_tenant_id uuid, delivery_id bigint, delivery_endpoint_id uuid, delivery_url text,
                 delivery_secret text, delivery_payload jsonb, delivery_attempts integer, delivery_created_at timestamptz)
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    UPDATE webhook_deliveries d
       SET next_attempt_at = now() + make_interval(secs => p_lease)
      FROM webhook_endpoints w
     WHERE w.tenant_id = d.tenant_id AND w.id = d.endpoint_id
       AND (d.tenant_id, d.id) IN (
         SELECT tenant_id, id FROM webhook_deliveries
          WHERE status = 'pending' AND next_attempt_at <= now()
          ORDER BY next_attempt_at{tie} LIMIT least(p_limit, 200)
          FOR UPDATE SKIP LOCKED)
    RETURNING d.tenant_id, d.id, d.endpoint_id, w.url, w.secret_sealed, d.payload, d.attempts, d.created_at;
  $$;
"""


def upgrade() -> None:
    execute_script(FAN_OUT_SQL.format(ordered=ORDERED) + CLAIM_SQL.format(tie=", id"))


def downgrade() -> None:
    execute_script(FAN_OUT_SQL.format(ordered="") + CLAIM_SQL.format(tie=""))
