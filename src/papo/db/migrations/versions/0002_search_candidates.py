"""Search candidates through the GIN index despite row-level security.

Revision ID: 0002_search_candidates
Revises: 0001_core

Under RLS, PostgreSQL evaluates a query's own conditions only after the policy conditions unless
their functions are LEAKPROOF, and the full-text match operator `@@` is not. The planner then cannot
use the GIN index at all and scans every message of the tenant. (Marking `@@` leakproof needs a
superuser and changes the whole cluster.)

papo_search_candidates() therefore runs the match as a role that RLS does not apply to
(`papo_search`, NOLOGIN BYPASSRLS) and applies the same rule the policy applies, read from the
same per-transaction context: only the calling user's own web/API messages in the calling tenant.
It returns message ids only; the caller then reads the messages through RLS as usual, so even a
mistake here could not show a row the caller may not read.

Where the migrating role may not create a BYPASSRLS role (some managed services), the function is
created as SECURITY INVOKER instead: search stays correct and isolated, only slower.
"""

from __future__ import annotations

from alembic import op

from papo.db.script import execute_script

revision = "0002_search_candidates"
down_revision = "0001_core"

FUNCTION_SQL = """
CREATE FUNCTION papo_search_candidates(
    p_query tsquery, p_before_created_at timestamptz, p_before_id uuid, p_limit integer)
  RETURNS TABLE (candidate_id uuid, candidate_created_at timestamptz)
  LANGUAGE plpgsql STABLE {security} SET search_path = pg_catalog, public
  AS $$
DECLARE
  ctx_tenant uuid := papo_current_tenant();
  ctx_user text := papo_current_user_id();
BEGIN
  IF ctx_tenant IS NULL OR ctx_user IS NULL THEN
    RETURN;
  END IF;
  -- Dynamic so each call is planned with its actual values: the planner then picks the GIN
  -- index for a rare word and the owner's newest-first index for a common one.
  RETURN QUERY EXECUTE
    'SELECT m.id, m.created_at FROM messages m
      WHERE m.tenant_id = $1 AND m.user_id = $2 AND m.channel <> ''whatsapp''
        AND m.search_vector @@ $3
        AND ($4::timestamptz IS NULL OR (m.created_at, m.id) < ($4, $5))
      ORDER BY m.created_at DESC, m.id DESC
      LIMIT least($6, 5000)'
    USING ctx_tenant, ctx_user, p_query, p_before_created_at, p_before_id, p_limit;
END
$$;
REVOKE ALL ON FUNCTION papo_search_candidates(tsquery, timestamptz, uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_search_candidates(tsquery, timestamptz, uuid, integer) TO papo_runtime;
"""

DEFINER_SQL = """
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'papo_search') THEN
    CREATE ROLE papo_search NOLOGIN NOSUPERUSER BYPASSRLS;
  END IF;
  IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
     AND NOT pg_has_role(current_user, 'papo_search', 'MEMBER') THEN
    EXECUTE format('GRANT papo_search TO %I', current_user);
  END IF;
  GRANT USAGE ON SCHEMA public TO papo_search;
  GRANT SELECT (id, tenant_id, user_id, channel, search_vector, created_at) ON messages TO papo_search;
  GRANT EXECUTE ON FUNCTION papo_current_tenant(), papo_current_user_id() TO papo_search;
  ALTER FUNCTION papo_search_candidates(tsquery, timestamptz, uuid, integer) OWNER TO papo_search;
END
$$;
"""


def upgrade() -> None:
    bind = op.get_bind()
    can_bypass = bind.exec_driver_sql(
        "SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user"
    ).scalar()
    if can_bypass:
        execute_script(FUNCTION_SQL.format(security="SECURITY DEFINER"))
        execute_script(DEFINER_SQL)
    else:
        execute_script(FUNCTION_SQL.format(security="SECURITY INVOKER"))


def downgrade() -> None:
    op.execute("DROP FUNCTION papo_search_candidates(tsquery, timestamptz, uuid, integer)")
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'papo_search') THEN "
        "REVOKE ALL ON messages FROM papo_search; REVOKE ALL ON SCHEMA public FROM papo_search; "
        "REVOKE ALL ON FUNCTION papo_current_tenant(), papo_current_user_id() FROM papo_search; "
        "END IF; END $$"
    )
