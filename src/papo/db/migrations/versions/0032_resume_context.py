"""A remembered principal is checked again by the database at every BEGIN.

Revision ID: 0032_resume_context
Revises: 0031_knowledge

A process remembers who a credential is for a minute (papo.auth.principal_cache), so a request
from a caller it has just seen skips the token check and the authentication query. What the
credential grants is still the database's to say, at every request: papo_resume_context() is sent
in the same simple query as the BEGIN and sets the context only if the membership still has that
role, the API key is not revoked and the browser session has not ended; otherwise it raises
PAP01 and the request authenticates from scratch. Access withdrawn by any process (or by SQL) is
therefore refused from the next request on, with no notice to wait for.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0032_resume_context"
down_revision = "0031_knowledge"

SIGNATURE = "papo_resume_context(uuid, text, text, uuid, uuid)"
UPGRADE_SQL = """
CREATE FUNCTION papo_resume_context(p_tenant uuid, p_user text, p_role text, p_api_key uuid, p_web_session uuid)
  RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
BEGIN
  IF (p_api_key IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM api_keys k WHERE k.tenant_id = p_tenant AND k.id = p_api_key AND k.revoked_at IS NULL))
     OR (p_user IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM memberships m WHERE m.tenant_id = p_tenant AND m.user_id = p_user AND m.role::text = p_role))
     OR (p_web_session IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM web_sessions s WHERE s.id = p_web_session AND s.tenant_id = p_tenant AND s.expires_at > now()))
     OR (p_api_key IS NULL AND p_user IS NULL) THEN
    RAISE EXCEPTION 'the remembered principal no longer holds' USING ERRCODE = 'PAP01';
  END IF;
  PERFORM papo_set_context(p_tenant, p_user, p_role);
  IF p_api_key IS NOT NULL THEN
    PERFORM set_config('papo.api_key_id', p_api_key::text, true);
  END IF;
END
$$;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(SIGNATURE)


def downgrade() -> None:
    execute_script(f"DROP FUNCTION {SIGNATURE};")
