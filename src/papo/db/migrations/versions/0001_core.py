"""Core schema: tenants, users, memberships, api keys, chat sessions and messages, with row-level security.

Revision ID: 0001_core
Revises:

Security model (read this before touching a policy):
- The server connects as a login role that is a member of `papo_runtime`: not the owner of
  anything, not superuser, no BYPASSRLS. Every table below has ENABLE and FORCE row level security.
- Each request sets `papo.tenant_id`, `papo.user_id` and `papo.role` with set_config(..., true),
  i.e. for its transaction only. Policies read them through papo_current_*() wrapped in a
  scalar sub-select, so PostgreSQL evaluates them once per statement (an InitPlan), not per row.
  With nothing set they are NULL and every policy is false: zero rows.
- Identity lookups that must happen before a context exists (API key, token subject, password
  login, Clerk webhooks) go through SECURITY DEFINER functions owned by the NOLOGIN role
  `papo_auth`, the only role with policies that see across tenants on the identity tables.
  The runtime role can execute those functions but cannot become `papo_auth`.
- The runtime role has column-level UPDATE grants: it cannot rewrite tenant_id, user_id, channel
  or created_at at all; WITH CHECK policies additionally keep every row in its tenant and owner.
"""

from __future__ import annotations

from alembic import op

from papo.db.script import execute_script

revision = "0001_core"
down_revision = None

ROLES_SQL = """
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'papo_runtime') THEN
    CREATE ROLE papo_runtime NOLOGIN NOSUPERUSER NOBYPASSRLS;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'papo_auth') THEN
    CREATE ROLE papo_auth NOLOGIN NOSUPERUSER NOBYPASSRLS;
  END IF;
  -- A non-superuser migrator needs membership to hand function ownership to papo_auth.
  IF NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
     AND NOT pg_has_role(current_user, 'papo_auth', 'MEMBER') THEN
    EXECUTE format('GRANT papo_auth TO %I', current_user);
  END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
  NULL;  -- another database on this cluster created the roles concurrently
END
$$;
"""

CONTEXT_SQL = """
CREATE FUNCTION papo_current_tenant() RETURNS uuid
  LANGUAGE sql STABLE PARALLEL SAFE
  AS $$ SELECT nullif(current_setting('papo.tenant_id', true), '')::uuid $$;

CREATE FUNCTION papo_current_user_id() RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  AS $$ SELECT nullif(current_setting('papo.user_id', true), '') $$;

CREATE FUNCTION papo_current_role() RETURNS text
  LANGUAGE sql STABLE PARALLEL SAFE
  AS $$ SELECT nullif(current_setting('papo.role', true), '') $$;

-- Accent folding for search without the unaccent extension (absent from the embedded server).
CREATE FUNCTION papo_fold(value text) RETURNS text
  LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT
  AS $$ SELECT lower(translate(value,
    'ÁÀÂÃÄÅáàâãäåÉÈÊËéèêëÍÌÎÏíìîïÓÒÔÕÖóòôõöÚÙÛÜúùûüÇçÑñÝýÿ',
    'AAAAAAaaaaaaEEEEeeeeIIIIiiiiOOOOOoooooUUUUuuuuCcNnYyy')) $$;

CREATE FUNCTION papo_touch_updated_at() RETURNS trigger
  LANGUAGE plpgsql
  AS $$ BEGIN NEW.updated_at := now(); RETURN NEW; END $$;
"""

TABLES_SQL = """
CREATE TYPE membership_role AS ENUM ('owner', 'admin', 'agent', 'member');
CREATE TYPE chat_session_status AS ENUM ('active', 'archived', 'deleted');
CREATE TYPE chat_channel AS ENUM ('web', 'api', 'whatsapp');
CREATE TYPE message_status AS ENUM ('sent', 'delivered', 'error');

CREATE TABLE tenants (
  id uuid NOT NULL,
  name text NOT NULL,
  external_id text,
  settings jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_tenants PRIMARY KEY (id),
  CONSTRAINT uq_tenants_external_id UNIQUE (external_id)
);

CREATE TABLE users (
  id text NOT NULL,
  email text,
  name text,
  password_hash text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_users PRIMARY KEY (id)
);
CREATE INDEX ix_users_email ON users (email);
CREATE UNIQUE INDEX uq_users_login_email ON users (email) WHERE password_hash IS NOT NULL;

CREATE TABLE memberships (
  tenant_id uuid NOT NULL,
  user_id text NOT NULL,
  role membership_role NOT NULL DEFAULT 'member',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_memberships PRIMARY KEY (tenant_id, user_id),
  CONSTRAINT fk_memberships_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT fk_memberships_user_id_users FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_memberships_user_id ON memberships (user_id);

CREATE TABLE api_keys (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  name text NOT NULL,
  prefix text NOT NULL,
  key_hash text NOT NULL,
  created_by text,
  created_at timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz,
  revoked_at timestamptz,
  CONSTRAINT pk_api_keys PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_api_keys_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX uq_api_keys_tenant_id_key_hash ON api_keys (tenant_id, key_hash);
CREATE INDEX ix_api_keys_key_hash ON api_keys (key_hash);

CREATE TABLE chat_sessions (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  user_id text,
  title text,
  status chat_session_status NOT NULL DEFAULT 'active',
  channel chat_channel NOT NULL DEFAULT 'api',
  last_message_at timestamptz,
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
  deleted_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  -- Sort key of the dashboard: a chat without messages yet ranks by its creation.
  activity_at timestamptz GENERATED ALWAYS AS (coalesce(last_message_at, created_at)) STORED,
  CONSTRAINT pk_chat_sessions PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_chat_sessions_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT fk_chat_sessions_user_id_users FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
);
-- The dashboard query: one owner's sessions in one status, most recent activity first.
CREATE INDEX ix_chat_sessions_owner_listing
  ON chat_sessions (tenant_id, user_id, status, activity_at DESC, id DESC);
CREATE INDEX ix_chat_sessions_deleted_at ON chat_sessions (deleted_at) WHERE deleted_at IS NOT NULL;

CREATE TABLE messages (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  session_id uuid NOT NULL,
  user_id text,
  channel chat_channel NOT NULL,
  role text NOT NULL,
  content text NOT NULL,
  status message_status NOT NULL DEFAULT 'sent',
  metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  search_vector tsvector GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, papo_fold(content))) STORED,
  CONSTRAINT pk_messages PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_messages_tenant_id_session_id_chat_sessions FOREIGN KEY (tenant_id, session_id)
    REFERENCES chat_sessions (tenant_id, id) ON DELETE CASCADE,
  CONSTRAINT ck_messages_role CHECK (role IN ('user', 'assistant', 'system'))
);
-- History pages: keyset over (created_at, id) inside one session.
CREATE INDEX ix_messages_session_keyset ON messages (tenant_id, session_id, created_at, id);
-- Search is scoped to the caller's own messages first, then matched.
CREATE INDEX ix_messages_owner_recent ON messages (tenant_id, user_id, created_at DESC);
CREATE INDEX ix_messages_search_vector ON messages USING gin (search_vector);
"""

TRIGGERS_SQL = """
CREATE TRIGGER trg_tenants_updated_at BEFORE UPDATE ON tenants
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();
CREATE TRIGGER trg_users_updated_at BEFORE UPDATE ON users
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();
CREATE TRIGGER trg_memberships_updated_at BEFORE UPDATE ON memberships
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();
CREATE TRIGGER trg_chat_sessions_updated_at BEFORE UPDATE ON chat_sessions
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();
CREATE TRIGGER trg_messages_updated_at BEFORE UPDATE ON messages
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();

-- Runs as the inserting role, so the session lookup is subject to that role's policies:
-- a session the caller may not write is "not found" (SQLSTATE P0002).
-- The UPDATE locks the session row until commit, so inserts into one session serialise and
-- created_at, taken after the lock and never below the previous one, follows commit order.
-- A reader paging by (created_at, id) therefore never skips a message committed after it read.
CREATE FUNCTION papo_messages_before_insert() RETURNS trigger
  LANGUAGE plpgsql
  AS $$
DECLARE
  session_owner text;
  session_channel chat_channel;
  stamp timestamptz;
BEGIN
  UPDATE chat_sessions s
     SET last_message_at = greatest(clock_timestamp(), s.last_message_at + interval '1 microsecond')
   WHERE s.tenant_id = NEW.tenant_id AND s.id = NEW.session_id AND s.status <> 'deleted'
  RETURNING s.user_id, s.channel, s.last_message_at INTO session_owner, session_channel, stamp;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'chat session % not found', NEW.session_id USING ERRCODE = 'no_data_found';
  END IF;
  NEW.user_id := session_owner;
  NEW.channel := session_channel;
  NEW.created_at := stamp;
  NEW.updated_at := stamp;
  RETURN NEW;
END
$$;
CREATE TRIGGER trg_messages_before_insert BEFORE INSERT ON messages
  FOR EACH ROW EXECUTE FUNCTION papo_messages_before_insert();
"""

POLICIES_SQL = """
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE users FORCE ROW LEVEL SECURITY;
ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE api_keys FORCE ROW LEVEL SECURITY;
ALTER TABLE chat_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE chat_sessions FORCE ROW LEVEL SECURITY;
ALTER TABLE messages ENABLE ROW LEVEL SECURITY;
ALTER TABLE messages FORCE ROW LEVEL SECURITY;

-- Identity definer functions see every identity row; nobody else does.
CREATE POLICY identity_lookup ON tenants FOR ALL TO papo_auth USING (true) WITH CHECK (true);
CREATE POLICY identity_lookup ON users FOR ALL TO papo_auth USING (true) WITH CHECK (true);
CREATE POLICY identity_lookup ON memberships FOR ALL TO papo_auth USING (true) WITH CHECK (true);
CREATE POLICY identity_lookup ON api_keys FOR ALL TO papo_auth USING (true) WITH CHECK (true);

CREATE POLICY tenant_read ON tenants FOR SELECT TO papo_runtime
  USING (id = (SELECT papo_current_tenant()));
-- A new tenant can only be created as the tenant the context names (the CLI does this).
CREATE POLICY tenant_create ON tenants FOR INSERT TO papo_runtime
  WITH CHECK (id = (SELECT papo_current_tenant()));
CREATE POLICY tenant_admin_update ON tenants FOR UPDATE TO papo_runtime
  USING (id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'))
  WITH CHECK (id = (SELECT papo_current_tenant()));

CREATE POLICY user_read ON users FOR SELECT TO papo_runtime
  USING (
    id = (SELECT papo_current_user_id())
    OR EXISTS (SELECT 1 FROM memberships m
               WHERE m.user_id = users.id AND m.tenant_id = (SELECT papo_current_tenant()))
  );
CREATE POLICY user_update_self ON users FOR UPDATE TO papo_runtime
  USING (id = (SELECT papo_current_user_id()))
  WITH CHECK (id = (SELECT papo_current_user_id()));

CREATE POLICY membership_read ON memberships FOR SELECT TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()));
CREATE POLICY membership_admin_update ON memberships FOR UPDATE TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()));
CREATE POLICY membership_admin_delete ON memberships FOR DELETE TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'));

CREATE POLICY api_key_admin ON api_keys FOR ALL TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'));

-- Web and API chats belong to their owner. WhatsApp conversations belong to the tenant's
-- staff. Admins may read session rows (not messages) of their tenant for support.
CREATE POLICY chat_session_read ON chat_sessions FOR SELECT TO papo_runtime
  USING (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent'))
      OR (SELECT papo_current_role()) IN ('owner', 'admin')
    )
  );
CREATE POLICY chat_session_write ON chat_sessions FOR ALL TO papo_runtime
  USING (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent'))
    )
  )
  WITH CHECK (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent'))
    )
  );

CREATE POLICY message_access ON messages FOR ALL TO papo_runtime
  USING (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent'))
    )
  )
  WITH CHECK (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent'))
    )
  );
"""

GRANTS_SQL = """
GRANT USAGE ON SCHEMA public TO papo_runtime, papo_auth;
GRANT EXECUTE ON FUNCTION papo_current_tenant(), papo_current_user_id(), papo_current_role(), papo_fold(text)
  TO papo_runtime, papo_auth;

GRANT SELECT, INSERT ON tenants TO papo_runtime;
GRANT UPDATE (name, settings) ON tenants TO papo_runtime;
GRANT SELECT ON users TO papo_runtime;
GRANT UPDATE (name) ON users TO papo_runtime;
GRANT SELECT, DELETE ON memberships TO papo_runtime;
GRANT UPDATE (role) ON memberships TO papo_runtime;
GRANT SELECT, INSERT, DELETE ON api_keys TO papo_runtime;
GRANT UPDATE (name, revoked_at) ON api_keys TO papo_runtime;
GRANT SELECT, INSERT, DELETE ON chat_sessions TO papo_runtime;
GRANT UPDATE (title, status, metadata, last_message_at, deleted_at) ON chat_sessions TO papo_runtime;
GRANT SELECT, INSERT, DELETE ON messages TO papo_runtime;
GRANT UPDATE (status, metadata) ON messages TO papo_runtime;

GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, users, memberships TO papo_auth;
GRANT SELECT ON api_keys TO papo_auth;
GRANT UPDATE (last_used_at, revoked_at) ON api_keys TO papo_auth;
"""

# Definer functions: owned by papo_auth, fixed search_path, EXECUTE granted explicitly.
IDENTITY_FUNCTIONS_SQL = """
CREATE FUNCTION papo_set_context(p_tenant uuid, p_user text, p_role text) RETURNS void
  LANGUAGE sql VOLATILE
  AS $$
    SELECT set_config('papo.tenant_id', coalesce(p_tenant::text, ''), true),
           set_config('papo.user_id', coalesce(p_user, ''), true),
           set_config('papo.role', coalesce(p_role, ''), true);
  $$;

-- Resolves a tenant API key (by its SHA-256) and sets the request context to the tenant.
CREATE FUNCTION papo_authenticate_api_key(p_key_hash text)
  RETURNS TABLE (key_id uuid, key_tenant_id uuid)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  found_key record;
BEGIN
  SELECT k.id, k.tenant_id, k.last_used_at INTO found_key
    FROM api_keys k WHERE k.key_hash = p_key_hash AND k.revoked_at IS NULL;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  -- Record use at most once a minute, and never wait for another request holding the row.
  IF found_key.last_used_at IS NULL OR found_key.last_used_at < now() - interval '1 minute' THEN
    UPDATE api_keys SET last_used_at = now()
     WHERE (tenant_id, id) IN (SELECT k.tenant_id, k.id FROM api_keys k
                               WHERE k.tenant_id = found_key.tenant_id AND k.id = found_key.id
                               FOR UPDATE SKIP LOCKED);
  END IF;
  PERFORM papo_set_context(found_key.tenant_id, NULL, 'service');
  PERFORM set_config('papo.api_key_id', found_key.id::text, true);
  key_id := found_key.id;
  key_tenant_id := found_key.tenant_id;
  RETURN NEXT;
END
$$;

-- Maps a verified token to (tenant, user, role) and sets the request context.
-- p_provision: create the tenant (by external id), the user and the membership on first
-- sight, and follow admin/member changes made at the identity provider.
CREATE FUNCTION papo_authenticate_subject(
    p_tenant_ref text, p_tenant_is_external boolean, p_user_id text, p_email text, p_name text,
    p_role text, p_provision boolean, p_new_tenant_id uuid)
  RETURNS TABLE (subject_tenant_id uuid, subject_user_id text, subject_role text)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  found_tenant uuid;
  found_role membership_role;
BEGIN
  IF p_tenant_is_external THEN
    SELECT t.id INTO found_tenant FROM tenants t WHERE t.external_id = p_tenant_ref;
    IF NOT FOUND THEN
      IF NOT p_provision THEN RETURN; END IF;
      INSERT INTO tenants (id, name, external_id) VALUES (p_new_tenant_id, p_tenant_ref, p_tenant_ref)
        ON CONFLICT (external_id) DO NOTHING;
      SELECT t.id INTO found_tenant FROM tenants t WHERE t.external_id = p_tenant_ref;
    END IF;
  ELSE
    SELECT t.id INTO found_tenant FROM tenants t WHERE t.id = p_tenant_ref::uuid;
    IF NOT FOUND THEN RETURN; END IF;
  END IF;

  SELECT m.role INTO found_role FROM memberships m
   WHERE m.tenant_id = found_tenant AND m.user_id = p_user_id;
  IF NOT FOUND THEN
    IF NOT p_provision THEN RETURN; END IF;
    INSERT INTO users (id, email, name) VALUES (p_user_id, lower(p_email), p_name)
      ON CONFLICT (id) DO NOTHING;
    INSERT INTO memberships (tenant_id, user_id, role)
      VALUES (found_tenant, p_user_id, coalesce(p_role, 'member')::membership_role)
      ON CONFLICT (tenant_id, user_id) DO NOTHING;
    SELECT m.role INTO found_role FROM memberships m
     WHERE m.tenant_id = found_tenant AND m.user_id = p_user_id;
  ELSIF p_provision AND (
      (p_role = 'admin' AND found_role IN ('member', 'agent'))
      OR (p_role = 'member' AND found_role = 'admin')) THEN
    UPDATE memberships m SET role = p_role::membership_role
     WHERE m.tenant_id = found_tenant AND m.user_id = p_user_id;
    found_role := p_role::membership_role;
  END IF;

  PERFORM papo_set_context(found_tenant, p_user_id, found_role::text);
  subject_tenant_id := found_tenant;
  subject_user_id := p_user_id;
  subject_role := found_role::text;
  RETURN NEXT;
END
$$;

-- Password sign-in: the built-in accounts with this e-mail and the tenants they belong to.
CREATE FUNCTION papo_login_candidates(p_email text)
  RETURNS TABLE (login_user_id text, login_password_hash text, login_tenant_id uuid, login_role text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT u.id, u.password_hash, m.tenant_id, m.role::text
      FROM users u JOIN memberships m ON m.user_id = u.id
     WHERE u.email = lower(p_email) AND u.password_hash IS NOT NULL
     ORDER BY m.created_at;
  $$;

-- Adds a member to the context tenant (admins, owners and API keys only). Reuses the user with
-- this e-mail when one exists; a password is only ever set on a user this call creates, so one
-- tenant can never change the credentials of a person who also belongs to another.
CREATE FUNCTION papo_add_member(p_new_user_id text, p_email text, p_name text, p_password_hash text, p_role text)
  RETURNS TABLE (member_user_id text, member_created boolean)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  ctx_tenant uuid := papo_current_tenant();
  ctx_role text := papo_current_role();
  existing_user text;
BEGIN
  IF ctx_tenant IS NULL OR ctx_role IS NULL OR ctx_role NOT IN ('owner', 'admin', 'service') THEN
    RAISE EXCEPTION 'only tenant admins can add members' USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF p_role = 'owner' AND ctx_role <> 'owner' THEN
    RAISE EXCEPTION 'only owners can add owners' USING ERRCODE = 'insufficient_privilege';
  END IF;
  SELECT u.id INTO existing_user FROM users u
    LEFT JOIN memberships m ON m.user_id = u.id AND m.tenant_id = ctx_tenant
   WHERE u.email = lower(p_email)
   ORDER BY (m.user_id IS NOT NULL) DESC, (u.password_hash IS NOT NULL) DESC, u.created_at
   LIMIT 1;
  member_created := existing_user IS NULL;
  IF member_created THEN
    INSERT INTO users (id, email, name, password_hash)
      VALUES (p_new_user_id, lower(p_email), p_name, p_password_hash);
    existing_user := p_new_user_id;
  END IF;
  INSERT INTO memberships (tenant_id, user_id, role)
    VALUES (ctx_tenant, existing_user, coalesce(p_role, 'member')::membership_role)
    ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = coalesce(p_role::membership_role, memberships.role);
  member_user_id := existing_user;
  RETURN NEXT;
END
$$;

-- Clerk webhooks: keep users and memberships in step with the identity provider.
CREATE FUNCTION papo_sync_user(p_user_id text, p_email text, p_name text, p_deleted boolean)
  RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
BEGIN
  IF p_deleted THEN
    DELETE FROM users WHERE id = p_user_id;
    RETURN;
  END IF;
  INSERT INTO users (id, email, name) VALUES (p_user_id, lower(p_email), p_name)
    ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name;
END
$$;

CREATE FUNCTION papo_sync_tenant(p_external_id text, p_name text, p_new_tenant_id uuid, p_deleted boolean)
  RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
BEGIN
  IF p_deleted THEN
    DELETE FROM tenants WHERE external_id = p_external_id;
    RETURN;
  END IF;
  INSERT INTO tenants (id, name, external_id) VALUES (p_new_tenant_id, coalesce(p_name, p_external_id), p_external_id)
    ON CONFLICT (external_id) DO UPDATE SET name = coalesce(EXCLUDED.name, tenants.name);
END
$$;

CREATE FUNCTION papo_sync_membership(
    p_external_tenant_id text, p_user_id text, p_role text, p_new_tenant_id uuid, p_deleted boolean)
  RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  found_tenant uuid;
BEGIN
  IF p_deleted THEN
    DELETE FROM memberships m USING tenants t
     WHERE t.external_id = p_external_tenant_id AND m.tenant_id = t.id AND m.user_id = p_user_id;
    RETURN;
  END IF;
  INSERT INTO tenants (id, name, external_id) VALUES (p_new_tenant_id, p_external_tenant_id, p_external_tenant_id)
    ON CONFLICT (external_id) DO NOTHING;
  SELECT t.id INTO found_tenant FROM tenants t WHERE t.external_id = p_external_tenant_id;
  INSERT INTO users (id) VALUES (p_user_id) ON CONFLICT (id) DO NOTHING;
  INSERT INTO memberships (tenant_id, user_id, role) VALUES (found_tenant, p_user_id, p_role::membership_role)
    ON CONFLICT (tenant_id, user_id) DO UPDATE
      SET role = CASE WHEN memberships.role = 'owner' THEN memberships.role ELSE EXCLUDED.role END;
END
$$;

-- Operator only (the CLI, connected as the migration owner): revoke a key knowing only its id.
CREATE FUNCTION papo_operator_revoke_api_key(p_key_id uuid) RETURNS boolean
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
BEGIN
  UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = p_key_id;
  RETURN FOUND;
END
$$;
"""

IDENTITY_FUNCTIONS = [
    "papo_authenticate_api_key(text)",
    "papo_authenticate_subject(text, boolean, text, text, text, text, boolean, uuid)",
    "papo_login_candidates(text)",
    "papo_add_member(text, text, text, text, text)",
    "papo_sync_user(text, text, text, boolean)",
    "papo_sync_tenant(text, text, uuid, boolean)",
    "papo_sync_membership(text, text, text, uuid, boolean)",
    "papo_operator_revoke_api_key(uuid)",
]
RUNTIME_FUNCTIONS = [f for f in IDENTITY_FUNCTIONS if not f.startswith("papo_operator_")]


def upgrade() -> None:
    execute_script(ROLES_SQL)
    execute_script(CONTEXT_SQL)
    execute_script(TABLES_SQL)
    execute_script(TRIGGERS_SQL)
    execute_script(POLICIES_SQL)
    execute_script(GRANTS_SQL)
    execute_script(IDENTITY_FUNCTIONS_SQL)
    op.execute("REVOKE ALL ON FUNCTION papo_set_context(uuid, text, text) FROM PUBLIC")
    op.execute("GRANT EXECUTE ON FUNCTION papo_set_context(uuid, text, text) TO papo_runtime, papo_auth")
    for signature in IDENTITY_FUNCTIONS:
        op.execute(f"ALTER FUNCTION {signature} OWNER TO papo_auth")
        op.execute(f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC")
    for signature in RUNTIME_FUNCTIONS:
        op.execute(f"GRANT EXECUTE ON FUNCTION {signature} TO papo_runtime")


def downgrade() -> None:
    for signature in IDENTITY_FUNCTIONS:
        op.execute(f"DROP FUNCTION {signature}")
    op.execute("DROP FUNCTION papo_set_context(uuid, text, text)")
    op.execute("DROP TABLE messages, chat_sessions, api_keys, memberships, users, tenants")
    op.execute("DROP FUNCTION papo_messages_before_insert(), papo_touch_updated_at()")
    op.execute("DROP FUNCTION papo_fold(text), papo_current_role(), papo_current_user_id(), papo_current_tenant()")
    op.execute("DROP TYPE message_status, chat_channel, chat_session_status, membership_role")
    op.execute("REVOKE ALL ON SCHEMA public FROM papo_runtime, papo_auth")
    # The roles are cluster-wide and may serve other databases; they are left in place.
