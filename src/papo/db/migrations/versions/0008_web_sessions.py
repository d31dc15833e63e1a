"""Browser sign-in: server-side web sessions, self sign-up where a tenant allows it.

Revision ID: 0008_web_sessions
Revises: 0007_usage

A browser holds an opaque random token in an HttpOnly cookie; only its SHA-256 is stored, so a
leaked table signs nobody in. Sessions are rows (not long-lived JWTs) so that signing out, "sign
out everywhere" and removing a member end them at once. Removing a membership or a user removes its
sessions (cascade). The cookie is resolved by a definer function, like API keys, before any tenant
context exists.

Self sign-up joins a tenant as a plain member, only where the tenant's settings say
"signup_open": true (tenant admins switch it on the settings page).
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0008_web_sessions"
down_revision = "0007_usage"

UPGRADE_SQL = """
CREATE TABLE web_sessions (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  user_id text NOT NULL,
  token_hash text NOT NULL,
  user_agent text,
  created_at timestamptz NOT NULL DEFAULT now(),
  last_seen_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  CONSTRAINT pk_web_sessions PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_web_sessions_membership FOREIGN KEY (tenant_id, user_id)
    REFERENCES memberships (tenant_id, user_id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX uq_web_sessions_token_hash ON web_sessions (token_hash);
CREATE INDEX ix_web_sessions_user ON web_sessions (tenant_id, user_id);
CREATE INDEX ix_web_sessions_expires_at ON web_sessions (expires_at);

ALTER TABLE web_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE web_sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY web_session_own ON web_sessions FOR ALL TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND user_id = (SELECT papo_current_user_id()))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND user_id = (SELECT papo_current_user_id()));
CREATE POLICY identity_lookup ON web_sessions FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, DELETE ON web_sessions TO papo_runtime;
GRANT SELECT, UPDATE, DELETE ON web_sessions TO papo_auth;

-- The member behind a session cookie; marks the session seen (at most once a minute).
CREATE FUNCTION papo_authenticate_web_session(p_token_hash text)
  RETURNS TABLE (web_tenant_id uuid, web_user_id text, web_role text, web_session_id uuid,
                 web_expires_at timestamptz)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
BEGIN
  RETURN QUERY
    SELECT s.tenant_id, s.user_id, m.role::text, s.id, s.expires_at
      FROM web_sessions s
      JOIN memberships m ON m.tenant_id = s.tenant_id AND m.user_id = s.user_id
     WHERE s.token_hash = p_token_hash AND s.expires_at > now();
  UPDATE web_sessions SET last_seen_at = now()
   WHERE token_hash = p_token_hash AND last_seen_at < now() - interval '1 minute';
END
$$;

-- What a sign-in page may show before anyone is signed in: the tenant's name and brand.
CREATE FUNCTION papo_public_tenant(p_tenant uuid)
  RETURNS TABLE (public_name text, public_brand jsonb, public_signup_open boolean)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT name, coalesce(settings->'brand', '{}'::jsonb), coalesce((settings->>'signup_open')::boolean, false)
      FROM tenants WHERE id = p_tenant;
  $$;

-- Self sign-up as a member of a tenant that allows it. Refuses an e-mail that already has a password.
CREATE FUNCTION papo_sign_up(p_tenant uuid, p_new_user_id text, p_email text, p_name text, p_password_hash text)
  RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = p_tenant AND coalesce((settings->>'signup_open')::boolean, false)) THEN
    RAISE EXCEPTION 'sign-up is closed' USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF EXISTS (SELECT 1 FROM users WHERE email = lower(p_email) AND password_hash IS NOT NULL) THEN
    RAISE EXCEPTION 'an account with this e-mail exists' USING ERRCODE = 'unique_violation';
  END IF;
  INSERT INTO users (id, email, name, password_hash) VALUES (p_new_user_id, lower(p_email), p_name, p_password_hash);
  INSERT INTO memberships (tenant_id, user_id, role) VALUES (p_tenant, p_new_user_id, 'member');
  RETURN p_new_user_id;
END
$$;

CREATE FUNCTION papo_prune_web_sessions() RETURNS bigint
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    WITH gone AS (DELETE FROM web_sessions WHERE expires_at < now() RETURNING 1) SELECT count(*) FROM gone;
  $$;
"""

FUNCTIONS = [
    "papo_authenticate_web_session(text)",
    "papo_public_tenant(uuid)",
    "papo_sign_up(uuid, text, text, text, text)",
    "papo_prune_web_sessions()",
]


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(*FUNCTIONS)


def downgrade() -> None:
    execute_script(
        "DROP FUNCTION papo_prune_web_sessions(); DROP FUNCTION papo_sign_up(uuid, text, text, text, text); "
        "DROP FUNCTION papo_public_tenant(uuid); DROP FUNCTION papo_authenticate_web_session(text); "
        "DROP TABLE web_sessions;"
    )
