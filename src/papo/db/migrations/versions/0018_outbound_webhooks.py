"""Outbound webhooks: tenants subscribe URLs to event types; each matching event becomes a delivery,
retried with backoff for a day, logged, and replayable.

Revision ID: 0018_outbound_webhooks
Revises: 0017_tenant_changes

Endpoints and deliveries belong to the tenant's owners and admins (policies check the role). The
fan-out from the outbox and the sender's claim run across tenants, so they are definer functions
owned by papo_auth; deliveries are claimed with SKIP LOCKED and a lease, so any number of
processes send, and one that dies mid-send leaves its claims to be retried.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0018_outbound_webhooks"
down_revision = "0017_tenant_changes"

UPGRADE_SQL = """
CREATE TABLE webhook_endpoints (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  url text NOT NULL,
  description text,
  event_types text[] NOT NULL,
  secret_sealed text NOT NULL,
  is_active boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_webhook_endpoints PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_webhook_endpoints_tenant FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT ck_webhook_endpoints_types CHECK (cardinality(event_types) BETWEEN 1 AND 50)
);
CREATE TRIGGER trg_webhook_endpoints_updated_at BEFORE UPDATE ON webhook_endpoints
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();

CREATE TABLE webhook_deliveries (
  tenant_id uuid NOT NULL,
  id bigint GENERATED ALWAYS AS IDENTITY,
  endpoint_id uuid NOT NULL,
  event_id bigint,
  event_type text NOT NULL,
  payload jsonb NOT NULL,
  status text NOT NULL DEFAULT 'pending',
  attempts integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  last_attempt_at timestamptz,
  last_status_code integer,
  last_error text,
  delivered_at timestamptz,
  replay_of bigint,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_webhook_deliveries PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_webhook_deliveries_endpoint FOREIGN KEY (tenant_id, endpoint_id)
    REFERENCES webhook_endpoints (tenant_id, id) ON DELETE CASCADE,
  CONSTRAINT ck_webhook_deliveries_status CHECK (status IN ('pending', 'delivered', 'failed'))
);
CREATE INDEX ix_webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX ix_webhook_deliveries_log ON webhook_deliveries (tenant_id, endpoint_id, id DESC);
-- one delivery per event and endpoint, however often the fan-out repeats a batch
CREATE UNIQUE INDEX uq_webhook_deliveries_event ON webhook_deliveries (tenant_id, endpoint_id, event_id)
  WHERE replay_of IS NULL AND event_id IS NOT NULL;

ALTER TABLE webhook_endpoints ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_endpoints FORCE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries ENABLE ROW LEVEL SECURITY;
ALTER TABLE webhook_deliveries FORCE ROW LEVEL SECURITY;
CREATE POLICY webhook_admin ON webhook_endpoints FOR ALL TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'));
CREATE POLICY webhook_admin ON webhook_deliveries FOR ALL TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'));
GRANT SELECT, INSERT, UPDATE, DELETE ON webhook_endpoints TO papo_runtime;
GRANT SELECT, INSERT ON webhook_deliveries TO papo_runtime;

CREATE POLICY webhook_worker ON webhook_endpoints FOR SELECT TO papo_auth USING (true);
CREATE POLICY webhook_worker ON webhook_deliveries FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT ON webhook_endpoints TO papo_auth;
GRANT SELECT, INSERT, UPDATE ON webhook_deliveries TO papo_auth;

-- The outbox's new events (as a JSON array) become deliveries for every active subscription.
CREATE FUNCTION papo_webhook_fan_out(p_events jsonb) RETURNS integer
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    WITH added AS (
      INSERT INTO webhook_deliveries (tenant_id, endpoint_id, event_id, event_type, payload)
      SELECT e.tenant_id, w.id, e.event_id, e.event_type, e.payload
        FROM jsonb_to_recordset(p_events) AS e(tenant_id uuid, event_id bigint, event_type text, payload jsonb)
        JOIN webhook_endpoints w ON w.tenant_id = e.tenant_id AND w.is_active
                                 AND e.event_type = ANY (w.event_types)
      ON CONFLICT DO NOTHING
      RETURNING 1)
    SELECT count(*)::integer FROM added;
  $$;

-- Due deliveries, leased to the caller for p_lease seconds (a sender that dies lets them come back).
CREATE FUNCTION papo_claim_webhook_sends(p_limit integer, p_lease double precision)
  RETURNS TABLE (delivery_tenant_id uuid, delivery_id bigint, delivery_endpoint_id uuid, delivery_url text,
                 delivery_secret text, delivery_payload jsonb, delivery_attempts integer, delivery_created_at timestamptz)
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    UPDATE webhook_deliveries d
       SET next_attempt_at = now() + make_interval(secs => p_lease)
      FROM webhook_endpoints w
     WHERE w.tenant_id = d.tenant_id AND w.id = d.endpoint_id
       AND (d.tenant_id, d.id) IN (
         SELECT tenant_id, id FROM webhook_deliveries
          WHERE status = 'pending' AND next_attempt_at <= now()
          ORDER BY next_attempt_at LIMIT least(p_limit, 200)
          FOR UPDATE SKIP LOCKED)
    RETURNING d.tenant_id, d.id, d.endpoint_id, w.url, w.secret_sealed, d.payload, d.attempts, d.created_at;
  $$;

-- The outcome of one attempt: delivered, retry at p_retry_at, or (p_retry_at NULL) given up.
CREATE FUNCTION papo_record_webhook_attempt(p_tenant uuid, p_id bigint, p_delivered boolean,
                                            p_status_code integer, p_error text, p_retry_at timestamptz)
  RETURNS void
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    UPDATE webhook_deliveries
       SET attempts = attempts + 1,
           last_attempt_at = now(),
           last_status_code = p_status_code,
           last_error = p_error,
           status = CASE WHEN p_delivered THEN 'delivered' WHEN p_retry_at IS NULL THEN 'failed' ELSE 'pending' END,
           delivered_at = CASE WHEN p_delivered THEN now() END,
           next_attempt_at = coalesce(p_retry_at, next_attempt_at)
     WHERE tenant_id = p_tenant AND id = p_id;
  $$;

-- For metrics: deliveries waiting, and how long the oldest has waited.
CREATE FUNCTION papo_webhook_backlog()
  RETURNS TABLE (metric text, label text, value double precision)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT 'queue_depth', 'outbound_webhooks', count(*)::double precision
      FROM webhook_deliveries WHERE status = 'pending'
    UNION ALL
    SELECT 'queue_oldest_seconds', 'outbound_webhooks',
           coalesce(extract(epoch FROM now() - min(created_at)), 0)::double precision
      FROM webhook_deliveries WHERE status = 'pending';
  $$;
"""

DOWNGRADE_SQL = """
DROP FUNCTION papo_webhook_backlog();
DROP FUNCTION papo_record_webhook_attempt(uuid, bigint, boolean, integer, text, timestamptz);
DROP FUNCTION papo_claim_webhook_sends(integer, double precision);
DROP FUNCTION papo_webhook_fan_out(jsonb);
DROP TABLE webhook_deliveries;
DROP TABLE webhook_endpoints;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(
        "papo_webhook_fan_out(jsonb)",
        "papo_claim_webhook_sends(integer, double precision)",
        "papo_record_webhook_attempt(uuid, bigint, boolean, integer, text, timestamptz)",
        "papo_webhook_backlog()",
    )


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
