"""A Cloud API webhook delivery is queued in one statement.

Revision ID: 0030_whatsapp_queue_statement
Revises: 0029_webhook_fan_out_order

The webhook answered Meta after five round trips (BEGIN, the route of each change's number, the
company's context, the insert, COMMIT). papo_queue_whatsapp_deliveries routes every change of a
delivery through papo_whatsapp_route (so a number binds to a company exactly as before: only an
active row of that company holds it) and queues the routed ones, in the delivery's order, as one
statement that commits on its own: the 200 goes out after one round trip, the delivery durable.
It returns the numbers it queued, so the caller can log the changes no company holds.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0030_whatsapp_queue_statement"
down_revision = "0029_webhook_fan_out_order"

SIGNATURE = "papo_queue_whatsapp_deliveries(jsonb)"
UPGRADE_SQL = """
GRANT INSERT ON whatsapp_webhook_deliveries TO papo_auth;
CREATE FUNCTION papo_queue_whatsapp_deliveries(p_changes jsonb) RETURNS text[]
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    WITH added AS (
      INSERT INTO public.whatsapp_webhook_deliveries (tenant_id, session_id, payload)
      SELECT r.route_tenant_id, r.route_session_id, c.change->'payload'
        FROM jsonb_array_elements(p_changes) WITH ORDINALITY AS c(change, position)
        CROSS JOIN LATERAL public.papo_whatsapp_route(c.change->>'phone_number_id') AS r
       ORDER BY c.position
      RETURNING payload->'metadata'->>'phone_number_id' AS number
    )
    SELECT coalesce(array_agg(number), '{}') FROM added;
  $$;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(SIGNATURE)


def downgrade() -> None:
    execute_script(f"DROP FUNCTION {SIGNATURE};\nREVOKE INSERT ON whatsapp_webhook_deliveries FROM papo_auth;")
