"""A phone number belongs to one company; webhook deliveries that keep failing end in a dead letter.

Revision ID: 0021_whatsapp_ownership
Revises: 0020_invitations

Who owns a Cloud API number. Anyone can type a `phone_number_id`; only the number's business holds a
token the Graph API accepts for it. So a claim counts once it is *verified*: `verified_number` is the
`phone_number_id` the Graph API accepted this row's token for (set by the transport when the Graph
API answered for that very id; cleared when the number or the token changes, when the Graph API later
refuses the token, or when the row is removed). The rules:

- Inbound is routed only to an active row whose `verified_number` is the delivery's number
  (`papo_whatsapp_route`). A row that was never verified (a token the Graph API refused) never
  receives anything, whatever its status. A verified row keeps receiving while it restarts or is
  stopped, or while the Graph API is unreachable: Meta does not deliver again after a 200, so
  dropping those messages would lose customers' words; refusal by the Graph API ends it.
- At most one active verified row per number, across every company (unique index): the first
  company whose token the Graph API accepts owns it; a later verification of the same number fails
  its row with "this number is already connected to papo".
- An unverified claim blocks nobody. The verified owner registers its number even while another
  company's unverified (squatting) row names it; that row stays unverified and receives nothing.
- A company cannot register a number that is verified by another company, nor its own active
  number twice (one active row per company and number, verified or not): both are 409s that say
  only "this number is already connected to papo" (`papo_whatsapp_number_connected` answers yes or
  no, never whose).

Existing rows: an active Cloud API row that is WORKING was accepted by the Graph API at its last start
(the only way there), so it starts out verified; the old index kept those unique.

Webhook deliveries (queue of 0013): a failed attempt waits (`retry_at`, growing back-off) and records
its error; after `PAPO_WHATSAPP_WEBHOOK_MAX_ATTEMPTS` attempts the delivery is a dead letter
(`dead_at`), kept for the operator to see and replay (`papo whatsapp dead-letters` / `replay`), and
counted in the operations snapshot (`queue_dead_letters`). A delivery whose process died on its last
attempt becomes a dead letter when its claim expires.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0021_whatsapp_ownership"
down_revision = "0020_invitations"

UPGRADE_SQL = """
ALTER TABLE whatsapp_sessions ADD COLUMN verified_number text;
-- Row-level security is forced even on the table's owner; the backfill is the owner's own work
-- (inside this migration's transaction, which holds the table locked).
ALTER TABLE whatsapp_sessions NO FORCE ROW LEVEL SECURITY;
UPDATE whatsapp_sessions SET verified_number = config->>'phone_number_id'
 WHERE transport = 'cloud' AND is_active AND status = 'WORKING' AND config ? 'phone_number_id';
ALTER TABLE whatsapp_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE whatsapp_sessions ADD CONSTRAINT ck_whatsapp_sessions_verified_number
  CHECK (verified_number IS NULL OR (transport = 'cloud' AND verified_number = config->>'phone_number_id'));
DROP INDEX uq_whatsapp_sessions_cloud_number;
CREATE UNIQUE INDEX uq_whatsapp_sessions_verified_number ON whatsapp_sessions (verified_number)
  WHERE is_active AND verified_number IS NOT NULL;
CREATE UNIQUE INDEX uq_whatsapp_sessions_tenant_cloud_number
  ON whatsapp_sessions (tenant_id, (config->>'phone_number_id'))
  WHERE transport = 'cloud' AND is_active AND config ? 'phone_number_id';

CREATE OR REPLACE FUNCTION papo_whatsapp_route(p_phone_number_id text)
  RETURNS TABLE (route_tenant_id uuid, route_session_id uuid)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    SELECT tenant_id, id FROM public.whatsapp_sessions
     WHERE is_active AND verified_number = p_phone_number_id;
  $$;

-- Registration: is this number verified by an active row (of any company) other than p_except?
CREATE FUNCTION papo_whatsapp_number_connected(p_phone_number_id text, p_except uuid)
  RETURNS boolean
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    SELECT EXISTS (SELECT 1 FROM public.whatsapp_sessions
                    WHERE is_active AND verified_number = p_phone_number_id
                      AND id IS DISTINCT FROM p_except);
  $$;

ALTER TABLE whatsapp_webhook_deliveries
  ADD COLUMN retry_at timestamptz,
  ADD COLUMN last_error text,
  ADD COLUMN dead_at timestamptz;
DROP INDEX ix_whatsapp_webhook_deliveries_queue;
CREATE INDEX ix_whatsapp_webhook_deliveries_waiting ON whatsapp_webhook_deliveries (id) WHERE dead_at IS NULL;
CREATE INDEX ix_whatsapp_webhook_deliveries_dead ON whatsapp_webhook_deliveries (id) WHERE dead_at IS NOT NULL;
-- The process that handled a delivery records a failed attempt in the company's context.
GRANT UPDATE (claimed_at, retry_at, last_error, dead_at) ON whatsapp_webhook_deliveries TO papo_runtime;

DROP FUNCTION papo_claim_webhook_deliveries(integer);
CREATE FUNCTION papo_claim_webhook_deliveries(p_limit integer, p_max_attempts integer)
  RETURNS TABLE (delivery_tenant_id uuid, delivery_id bigint, delivery_session_id uuid, delivery_payload jsonb,
                 delivery_attempts integer)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
BEGIN
  -- Out of attempts and nobody working on it (its process died on the last one, or the limit
  -- was lowered): a dead letter.
  UPDATE public.whatsapp_webhook_deliveries
     SET dead_at = now(), claimed_at = NULL,
         last_error = coalesce(last_error, 'the process working on it stopped')
   WHERE dead_at IS NULL AND attempts >= greatest(p_max_attempts, 1)
     AND (claimed_at IS NULL OR claimed_at < now() - interval '1 minute');
  RETURN QUERY
  UPDATE public.whatsapp_webhook_deliveries d SET claimed_at = now(), attempts = d.attempts + 1
   WHERE (d.tenant_id, d.id) IN (
     SELECT w.tenant_id, w.id FROM public.whatsapp_webhook_deliveries w
      WHERE w.dead_at IS NULL AND w.attempts < greatest(p_max_attempts, 1)
        AND (w.claimed_at IS NULL OR w.claimed_at < now() - interval '1 minute')
        AND (w.retry_at IS NULL OR w.retry_at <= now())
      ORDER BY w.id LIMIT least(p_limit, 500)
      FOR UPDATE SKIP LOCKED)
  RETURNING d.tenant_id, d.id, d.session_id, d.payload, d.attempts;
END
$$;

CREATE OR REPLACE FUNCTION papo_ops_snapshot()
  RETURNS TABLE (metric text, label text, value double precision)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    SELECT 'whatsapp_sessions', status, count(*)::double precision FROM public.whatsapp_sessions GROUP BY status
    UNION ALL
    SELECT 'queue_depth', 'whatsapp_webhooks', count(*)::double precision
      FROM public.whatsapp_webhook_deliveries WHERE dead_at IS NULL
    UNION ALL
    SELECT 'queue_oldest_seconds', 'whatsapp_webhooks',
           coalesce(extract(epoch FROM now() - min(received_at)), 0)::double precision
      FROM public.whatsapp_webhook_deliveries WHERE dead_at IS NULL
    UNION ALL
    SELECT 'queue_dead_letters', 'whatsapp_webhooks', count(*)::double precision
      FROM public.whatsapp_webhook_deliveries WHERE dead_at IS NOT NULL;
  $$;

-- Operator only (the CLI, connected as the migration owner): dead letters of every company, and
-- replaying one (or, with NULL, all): waiting again with a fresh set of attempts.
CREATE FUNCTION papo_operator_whatsapp_dead_letters()
  RETURNS TABLE (delivery_id bigint, delivery_tenant_id uuid, delivery_session_id uuid, delivery_attempts integer,
                 delivery_received_at timestamptz, delivery_dead_at timestamptz, delivery_last_error text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    SELECT id, tenant_id, session_id, attempts, received_at, dead_at, last_error
      FROM public.whatsapp_webhook_deliveries WHERE dead_at IS NOT NULL ORDER BY id;
  $$;

CREATE FUNCTION papo_operator_whatsapp_replay(p_id bigint) RETURNS integer
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    WITH replayed AS (
      UPDATE public.whatsapp_webhook_deliveries
         SET dead_at = NULL, attempts = 0, claimed_at = NULL, retry_at = NULL
       WHERE dead_at IS NOT NULL AND (p_id IS NULL OR id = p_id)
      RETURNING 1)
    SELECT count(*)::integer FROM replayed;
  $$;

-- Operator only: which tenants a legacy `companyId` names (by id, else by identity-provider
-- organization id, else by name ignoring case; the best kind of match only).
CREATE FUNCTION papo_operator_tenants_named(p_ref text) RETURNS SETOF uuid
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    WITH matches AS (
      SELECT id, 1 AS rank FROM public.tenants WHERE id::text = lower(btrim(p_ref))
      UNION ALL SELECT id, 2 FROM public.tenants WHERE external_id = btrim(p_ref)
      UNION ALL SELECT id, 3 FROM public.tenants WHERE lower(name) = lower(btrim(p_ref)))
    SELECT DISTINCT id FROM matches WHERE rank = (SELECT min(rank) FROM matches);
  $$;
"""

OPERATOR_FUNCTIONS = (
    "papo_operator_whatsapp_dead_letters()",
    "papo_operator_whatsapp_replay(bigint)",
    "papo_operator_tenants_named(text)",
)

DOWNGRADE_SQL = """
DROP FUNCTION papo_operator_tenants_named(text);
DROP FUNCTION papo_operator_whatsapp_replay(bigint);
DROP FUNCTION papo_operator_whatsapp_dead_letters();
CREATE OR REPLACE FUNCTION papo_ops_snapshot()
  RETURNS TABLE (metric text, label text, value double precision)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    SELECT 'whatsapp_sessions', status, count(*)::double precision FROM public.whatsapp_sessions GROUP BY status
    UNION ALL
    SELECT 'queue_depth', 'whatsapp_webhooks', count(*)::double precision FROM public.whatsapp_webhook_deliveries
    UNION ALL
    SELECT 'queue_oldest_seconds', 'whatsapp_webhooks',
           coalesce(extract(epoch FROM now() - min(received_at)), 0)::double precision
      FROM public.whatsapp_webhook_deliveries;
  $$;
DROP FUNCTION papo_claim_webhook_deliveries(integer, integer);
CREATE FUNCTION papo_claim_webhook_deliveries(p_limit integer)
  RETURNS TABLE (delivery_tenant_id uuid, delivery_id bigint, delivery_session_id uuid, delivery_payload jsonb)
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    UPDATE public.whatsapp_webhook_deliveries d SET claimed_at = now(), attempts = d.attempts + 1
     WHERE (d.tenant_id, d.id) IN (
       SELECT tenant_id, id FROM public.whatsapp_webhook_deliveries
        WHERE claimed_at IS NULL OR claimed_at < now() - interval '1 minute'
        ORDER BY id LIMIT least(p_limit, 500)
        FOR UPDATE SKIP LOCKED)
    RETURNING d.tenant_id, d.id, d.session_id, d.payload;
  $$;
REVOKE UPDATE (claimed_at, retry_at, last_error, dead_at) ON whatsapp_webhook_deliveries FROM papo_runtime;
DROP INDEX ix_whatsapp_webhook_deliveries_dead;
DROP INDEX ix_whatsapp_webhook_deliveries_waiting;
CREATE INDEX ix_whatsapp_webhook_deliveries_queue ON whatsapp_webhook_deliveries (id);
ALTER TABLE whatsapp_webhook_deliveries DROP COLUMN dead_at, DROP COLUMN last_error, DROP COLUMN retry_at;

DROP FUNCTION papo_whatsapp_number_connected(text, uuid);
CREATE OR REPLACE FUNCTION papo_whatsapp_route(p_phone_number_id text)
  RETURNS TABLE (route_tenant_id uuid, route_session_id uuid)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    SELECT tenant_id, id FROM public.whatsapp_sessions
     WHERE transport = 'cloud' AND is_active AND config->>'phone_number_id' = p_phone_number_id;
  $$;
-- One active row per number again: unverified claims on a number someone else holds give way.
ALTER TABLE whatsapp_sessions NO FORCE ROW LEVEL SECURITY;
UPDATE whatsapp_sessions s SET is_active = false, status = 'STOPPED',
       status_reason = 'deactivated: the number is connected by another session'
 WHERE s.transport = 'cloud' AND s.is_active AND s.verified_number IS NULL AND s.config ? 'phone_number_id'
   AND EXISTS (SELECT 1 FROM whatsapp_sessions o
                WHERE o.transport = 'cloud' AND o.is_active AND o.config->>'phone_number_id' = s.config->>'phone_number_id'
                  AND (o.verified_number IS NOT NULL OR o.created_at < s.created_at OR (o.created_at = s.created_at AND o.id < s.id)));
ALTER TABLE whatsapp_sessions FORCE ROW LEVEL SECURITY;
DROP INDEX uq_whatsapp_sessions_tenant_cloud_number;
DROP INDEX uq_whatsapp_sessions_verified_number;
ALTER TABLE whatsapp_sessions DROP CONSTRAINT ck_whatsapp_sessions_verified_number;
ALTER TABLE whatsapp_sessions DROP COLUMN verified_number;
CREATE UNIQUE INDEX uq_whatsapp_sessions_cloud_number ON whatsapp_sessions ((config->>'phone_number_id'))
  WHERE transport = 'cloud' AND is_active AND config ? 'phone_number_id';
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(
        "papo_whatsapp_route(text)",
        "papo_whatsapp_number_connected(text, uuid)",
        "papo_claim_webhook_deliveries(integer, integer)",
        "papo_ops_snapshot()",
    )
    for signature in OPERATOR_FUNCTIONS:
        # handed to papo_auth like the others, but not callable by the runtime role
        execute_script(
            f"ALTER FUNCTION {signature} OWNER TO papo_auth; REVOKE ALL ON FUNCTION {signature} FROM PUBLIC;"
        )


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
    own_definer_functions("papo_claim_webhook_deliveries(integer)")
