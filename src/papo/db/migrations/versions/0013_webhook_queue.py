"""WhatsApp webhook deliveries are queued in the database before the 200 goes back.

Revision ID: 0013_webhook_queue
Revises: 0012_whatsapp_cloud

Meta does not deliver again after a 200, so a delivery is written (one insert) before answering, and
processed afterwards by any server process: claimed with SKIP LOCKED, deleted once done, claimed
again if its process died. Processing is idempotent (message ids are unique), so doing one twice
is harmless.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0013_webhook_queue"
down_revision = "0012_whatsapp_cloud"

UPGRADE_SQL = """
CREATE TABLE whatsapp_webhook_deliveries (
  tenant_id uuid NOT NULL,
  id bigint GENERATED ALWAYS AS IDENTITY,
  session_id uuid NOT NULL,
  payload jsonb NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  claimed_at timestamptz,
  attempts integer NOT NULL DEFAULT 0,
  CONSTRAINT pk_whatsapp_webhook_deliveries PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_whatsapp_webhook_deliveries_session FOREIGN KEY (tenant_id, session_id)
    REFERENCES whatsapp_sessions (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX ix_whatsapp_webhook_deliveries_queue ON whatsapp_webhook_deliveries (id);
ALTER TABLE whatsapp_webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE whatsapp_webhook_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY webhook_delivery_service ON whatsapp_webhook_deliveries FOR ALL TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) = 'service')
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) = 'service');
GRANT SELECT, INSERT, DELETE ON whatsapp_webhook_deliveries TO papo_runtime;
CREATE POLICY webhook_delivery_claim ON whatsapp_webhook_deliveries FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, UPDATE ON whatsapp_webhook_deliveries TO papo_auth;

-- Any process takes the oldest waiting deliveries (and ones whose process died a minute ago).
CREATE FUNCTION papo_claim_webhook_deliveries(p_limit integer)
  RETURNS TABLE (delivery_tenant_id uuid, delivery_id bigint, delivery_session_id uuid, delivery_payload jsonb)
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    UPDATE whatsapp_webhook_deliveries d SET claimed_at = now(), attempts = d.attempts + 1
     WHERE (d.tenant_id, d.id) IN (
       SELECT tenant_id, id FROM whatsapp_webhook_deliveries
        WHERE claimed_at IS NULL OR claimed_at < now() - interval '1 minute'
        ORDER BY id LIMIT least(p_limit, 500)
        FOR UPDATE SKIP LOCKED)
    RETURNING d.tenant_id, d.id, d.session_id, d.payload;
  $$;
ALTER FUNCTION papo_claim_webhook_deliveries(integer) OWNER TO papo_auth;
REVOKE ALL ON FUNCTION papo_claim_webhook_deliveries(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_claim_webhook_deliveries(integer) TO papo_runtime;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script("DROP FUNCTION papo_claim_webhook_deliveries(integer); DROP TABLE whatsapp_webhook_deliveries;")
