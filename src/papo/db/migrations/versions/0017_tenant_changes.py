"""Every process caches what pages read about a tenant (name, brand, sign-up switch); a change to a
tenant row, by whatever path, is announced on the `papo_tenant_changed` channel at commit so each
process drops its copy.

Revision ID: 0017_tenant_changes
Revises: 0016_insights
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0017_tenant_changes"
down_revision = "0016_insights"

UPGRADE_SQL = """
CREATE FUNCTION papo_announce_tenant_change() RETURNS trigger
  LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('papo_tenant_changed', OLD.id::text);
  RETURN NULL;
END
$$;
CREATE TRIGGER trg_tenants_announce AFTER UPDATE OR DELETE ON tenants
  FOR EACH ROW EXECUTE FUNCTION papo_announce_tenant_change();
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script("DROP TRIGGER trg_tenants_announce ON tenants; DROP FUNCTION papo_announce_tenant_change();")
