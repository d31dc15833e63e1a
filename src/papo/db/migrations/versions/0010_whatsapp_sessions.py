"""WhatsApp sessions per company (seed 004's WhatsappSession), with the status state machine.

Revision ID: 0010_whatsapp_sessions
Revises: 0009_oidc

Every field of the seed's model is here (`company` is `tenant_id`), plus the transport kind, the
reason of the last status change and the assistant that answers on this number. A tenant's staff
(owner, admin, agent) may read its sessions; only owners and admins change them. The transport's
device credentials (neonize's store) are not in this row: they live in the transport's own store,
so a row can be shown to an agent without exposing them.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0010_whatsapp_sessions"
down_revision = "0009_oidc"

UPGRADE_SQL = """
CREATE TABLE whatsapp_sessions (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  name text NOT NULL,
  phone_number text,
  qr_code text,
  status text NOT NULL DEFAULT 'STOPPED',
  status_reason text,
  is_active boolean NOT NULL DEFAULT true,
  last_seen timestamptz,
  config jsonb NOT NULL DEFAULT '{}'::jsonb,
  transport text NOT NULL,
  assistant_id uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_whatsapp_sessions PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_whatsapp_sessions_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT ck_whatsapp_sessions_status CHECK (status IN ('STOPPED', 'STARTING', 'SCAN_QR_CODE', 'WORKING', 'FAILED')),
  CONSTRAINT ck_whatsapp_sessions_name CHECK (length(name) BETWEEN 1 AND 100)
);
CREATE UNIQUE INDEX uq_whatsapp_sessions_tenant_name ON whatsapp_sessions (tenant_id, lower(name)) WHERE is_active;
CREATE INDEX ix_whatsapp_sessions_active ON whatsapp_sessions (is_active) WHERE is_active;
CREATE TRIGGER trg_whatsapp_sessions_updated_at BEFORE UPDATE ON whatsapp_sessions
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();

ALTER TABLE whatsapp_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE whatsapp_sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY whatsapp_session_read ON whatsapp_sessions FOR SELECT TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant())
         AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent', 'service'));
CREATE POLICY whatsapp_session_write ON whatsapp_sessions FOR ALL TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin', 'service'))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin', 'service'));
GRANT SELECT, INSERT, UPDATE, DELETE ON whatsapp_sessions TO papo_runtime;
CREATE POLICY identity_lookup ON whatsapp_sessions FOR SELECT TO papo_auth USING (true);
GRANT SELECT ON whatsapp_sessions TO papo_auth;

-- Session events are published by the process running the session, in the company's context with
-- the role "service". Publishing returns the new ids, and RETURNING needs the row to be readable:
-- the staff stream becomes readable to "service" too (a tenant API key acts for the company anyway).
ALTER POLICY event_read ON events
  USING (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (audience = 'user' AND user_id = (SELECT papo_current_user_id()))
      OR (audience = 'staff' AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent', 'service'))
    )
  );

-- At start-up a process loads every company's active sessions (seed: loadExistingSessions):
-- just the keys, then each session is handled in its own company's context.
CREATE FUNCTION papo_active_whatsapp_sessions()
  RETURNS TABLE (wa_tenant_id uuid, wa_session_id uuid)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$ SELECT tenant_id, id FROM whatsapp_sessions WHERE is_active ORDER BY created_at $$;
ALTER FUNCTION papo_active_whatsapp_sessions() OWNER TO papo_auth;
REVOKE ALL ON FUNCTION papo_active_whatsapp_sessions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_active_whatsapp_sessions() TO papo_runtime;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(
        "DROP FUNCTION papo_active_whatsapp_sessions(); DROP TABLE whatsapp_sessions;\n"
        "ALTER POLICY event_read ON events USING (tenant_id = (SELECT papo_current_tenant()) AND ("
        "(audience = 'user' AND user_id = (SELECT papo_current_user_id())) OR (audience = 'staff' AND "
        "(SELECT papo_current_role()) IN ('owner', 'admin', 'agent'))));"
    )
