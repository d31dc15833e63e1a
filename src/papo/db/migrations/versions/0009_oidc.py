"""Sign-in with Google or any OpenID Connect provider: find the member by verified e-mail, or join
a tenant that allows sign-up.

Revision ID: 0009_oidc
Revises: 0008_web_sessions

The provider vouches for the e-mail (papo requires `email_verified`), so the person may use any
membership of the user with that e-mail, password or not. Joining creates no password: such a
person signs in through the provider (or an admin sets one up).
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0009_oidc"
down_revision = "0008_web_sessions"

UPGRADE_SQL = """
CREATE FUNCTION papo_member_candidates(p_email text)
  RETURNS TABLE (candidate_user_id text, candidate_tenant_id uuid, candidate_role text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT u.id, m.tenant_id, m.role::text
      FROM users u JOIN memberships m ON m.user_id = u.id
     WHERE u.email = lower(p_email)
     ORDER BY m.created_at;
  $$;

CREATE FUNCTION papo_join_verified(p_tenant uuid, p_new_user_id text, p_email text, p_name text)
  RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  member_id text;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = p_tenant AND coalesce((settings->>'signup_open')::boolean, false)) THEN
    RAISE EXCEPTION 'sign-up is closed' USING ERRCODE = 'insufficient_privilege';
  END IF;
  SELECT id INTO member_id FROM users WHERE email = lower(p_email)
   ORDER BY (password_hash IS NOT NULL) DESC, created_at LIMIT 1;
  IF member_id IS NULL THEN
    INSERT INTO users (id, email, name) VALUES (p_new_user_id, lower(p_email), p_name);
    member_id := p_new_user_id;
  END IF;
  INSERT INTO memberships (tenant_id, user_id, role) VALUES (p_tenant, member_id, 'member')
    ON CONFLICT (tenant_id, user_id) DO NOTHING;
  RETURN member_id;
END
$$;
"""

FUNCTIONS = ["papo_member_candidates(text)", "papo_join_verified(uuid, text, text, text)"]


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(*FUNCTIONS)


def downgrade() -> None:
    execute_script(
        "DROP FUNCTION papo_join_verified(uuid, text, text, text); DROP FUNCTION papo_member_candidates(text);"
    )
