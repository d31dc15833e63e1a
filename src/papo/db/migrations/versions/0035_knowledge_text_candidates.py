"""Knowledge passages matched through the GIN index despite row-level security.

Revision ID: 0035_knowledge_text_candidates
Revises: 0034_knowledge_vector_index

As for messages (0002): under RLS the full-text match `@@`, which is not LEAKPROOF, is evaluated
only after the policy's tenant condition, so the planner reads every passage of the tenant and
never uses the GIN index (bench-knowledge: 60-280 ms per question at 30,000-100,000 passages).
papo_knowledge_candidates() runs the match as papo_search (NOLOGIN BYPASSRLS) and applies the
policy's own rule from the same per-transaction context: the calling tenant's passages, in the
collections asked for. It returns passage keys only; the caller reads the passages through RLS.
Where the migrating role may not use a BYPASSRLS role, the function is SECURITY INVOKER: correct
and isolated, only slower.
"""

from __future__ import annotations

from alembic import op

from papo.db.script import execute_script

revision = "0035_knowledge_text_candidates"
down_revision = "0034_knowledge_vector_index"

SIGNATURE = "papo_knowledge_candidates(uuid[], tsquery, integer)"
FUNCTION_SQL = """
CREATE FUNCTION papo_knowledge_candidates(p_collections uuid[], p_query tsquery, p_limit integer)
  RETURNS TABLE (candidate_document_id uuid, candidate_ordinal integer)
  LANGUAGE plpgsql STABLE {security} ROWS 50 SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  ctx_tenant uuid := papo_current_tenant();
BEGIN
  IF ctx_tenant IS NULL THEN
    RETURN;
  END IF;
  RETURN QUERY EXECUTE
    'SELECT c.document_id, c.ordinal FROM knowledge_chunks c
      WHERE c.search_vector @@ $3 AND c.tenant_id = $1 AND c.collection_id = ANY($2)
      LIMIT least($4, 100000)'
    USING ctx_tenant, p_collections, p_query, p_limit;
END
$$;
REVOKE ALL ON FUNCTION <signature> FROM PUBLIC;
GRANT EXECUTE ON FUNCTION <signature> TO papo_runtime;
""".replace("<signature>", SIGNATURE)

DEFINER_SQL = f"""
DO $$
BEGIN
  GRANT SELECT (tenant_id, document_id, ordinal, collection_id, search_vector) ON knowledge_chunks TO papo_search;
  ALTER FUNCTION {SIGNATURE} OWNER TO papo_search;
END
$$;
"""


def upgrade() -> None:
    bind = op.get_bind()
    can_bypass = bind.exec_driver_sql(
        "SELECT (rolsuper OR rolbypassrls OR pg_has_role(current_user, 'papo_search', 'MEMBER')) "
        "AND EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'papo_search') FROM pg_roles WHERE rolname = current_user"
    ).scalar()
    if can_bypass:
        execute_script(FUNCTION_SQL.format(security="SECURITY DEFINER"))
        execute_script(DEFINER_SQL)
    else:
        execute_script(FUNCTION_SQL.format(security="SECURITY INVOKER"))


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
    op.execute(
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'papo_search') THEN "
        "REVOKE ALL ON knowledge_chunks FROM papo_search; END IF; END $$"
    )
