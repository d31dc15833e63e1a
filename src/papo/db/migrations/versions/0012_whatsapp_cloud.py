"""WhatsApp Cloud API webhooks are routed to a company by the receiving number's phone_number_id.

Revision ID: 0012_whatsapp_cloud
Revises: 0011_whatsapp_inbox

A webhook arrives before any company context exists, so the lookup is a definer function; an active
Cloud API number belongs to one session only (unique index), so routing is never ambiguous.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0012_whatsapp_cloud"
down_revision = "0011_whatsapp_inbox"

UPGRADE_SQL = """
CREATE UNIQUE INDEX uq_whatsapp_sessions_cloud_number ON whatsapp_sessions ((config->>'phone_number_id'))
  WHERE transport = 'cloud' AND is_active AND config ? 'phone_number_id';

CREATE FUNCTION papo_whatsapp_route(p_phone_number_id text)
  RETURNS TABLE (route_tenant_id uuid, route_session_id uuid)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT tenant_id, id FROM whatsapp_sessions
     WHERE transport = 'cloud' AND is_active AND config->>'phone_number_id' = p_phone_number_id;
  $$;
ALTER FUNCTION papo_whatsapp_route(text) OWNER TO papo_auth;
REVOKE ALL ON FUNCTION papo_whatsapp_route(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_whatsapp_route(text) TO papo_runtime;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script("DROP FUNCTION papo_whatsapp_route(text); DROP INDEX uq_whatsapp_sessions_cloud_number;")
