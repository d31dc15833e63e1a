"""Assistants (papo's own, on any OpenAI-compatible endpoint) and streamed replies.

Revision ID: 0005_assistants
Revises: 0004_events

- `assistants`: per tenant; members read them (to chat), admins write them. The provider API key is
  stored encrypted with the server's key, or named by an environment variable; it is never returned.
- `chat_sessions.assistant_id`: the assistant that answers in this chat (NULL: a plain chat, no AI).
- `messages.reply_state`: for assistant replies only — streaming, complete, stopped, failed or
  interrupted (the process died mid-stream; the start-up sweep sets it). `status` keeps seed 000's
  meaning: sent while streaming, delivered when complete, error when it failed.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0005_assistants"
down_revision = "0004_events"

UPGRADE_SQL = """
CREATE TABLE assistants (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  name text NOT NULL,
  instructions text NOT NULL DEFAULT '',
  provider text NOT NULL DEFAULT 'openai',
  model text NOT NULL,
  base_url text,
  api_key_encrypted text,
  api_key_env text,
  parameters jsonb NOT NULL DEFAULT '{}'::jsonb,
  context_token_budget integer NOT NULL DEFAULT 8000,
  is_default boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_assistants PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_assistants_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT ck_assistants_provider CHECK (provider IN ('openai', 'demo')),
  CONSTRAINT ck_assistants_budget CHECK (context_token_budget BETWEEN 256 AND 2000000)
);
CREATE UNIQUE INDEX uq_assistants_tenant_id_default ON assistants (tenant_id) WHERE is_default;
CREATE TRIGGER trg_assistants_updated_at BEFORE UPDATE ON assistants
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();

ALTER TABLE assistants ENABLE ROW LEVEL SECURITY;
ALTER TABLE assistants FORCE ROW LEVEL SECURITY;
CREATE POLICY assistant_read ON assistants FOR SELECT TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()));
CREATE POLICY assistant_admin_insert ON assistants FOR INSERT TO papo_runtime
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'));
CREATE POLICY assistant_admin_update ON assistants FOR UPDATE TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()));
CREATE POLICY assistant_admin_delete ON assistants FOR DELETE TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'));
GRANT SELECT, INSERT, DELETE ON assistants TO papo_runtime;
GRANT UPDATE (name, instructions, provider, model, base_url, api_key_encrypted, api_key_env, parameters,
              context_token_budget, is_default) ON assistants TO papo_runtime;

-- Any member's first AI chat creates the tenant's default assistant from the server settings
-- (provider, model; no key stored: it uses the server's). Only that, and only once.
CREATE POLICY default_assistant_bootstrap ON assistants FOR ALL TO papo_auth
  USING (tenant_id = (SELECT papo_current_tenant()))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND is_default AND api_key_encrypted IS NULL);
GRANT SELECT, INSERT ON assistants TO papo_auth;
CREATE FUNCTION papo_default_assistant(p_new_id uuid, p_provider text, p_model text) RETURNS uuid
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  default_id uuid;
BEGIN
  SELECT id INTO default_id FROM assistants WHERE tenant_id = papo_current_tenant() AND is_default;
  IF FOUND THEN
    RETURN default_id;
  END IF;
  INSERT INTO assistants (tenant_id, id, name, provider, model, is_default)
    VALUES (papo_current_tenant(), p_new_id, 'Assistant', p_provider, p_model, true)
    ON CONFLICT (tenant_id) WHERE is_default DO NOTHING;
  SELECT id INTO default_id FROM assistants WHERE tenant_id = papo_current_tenant() AND is_default;
  RETURN default_id;
END
$$;
ALTER FUNCTION papo_default_assistant(uuid, text, text) OWNER TO papo_auth;
REVOKE ALL ON FUNCTION papo_default_assistant(uuid, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_default_assistant(uuid, text, text) TO papo_runtime;

ALTER TABLE chat_sessions ADD COLUMN assistant_id uuid;
ALTER TABLE chat_sessions ADD CONSTRAINT fk_chat_sessions_tenant_id_assistant_id_assistants
  FOREIGN KEY (tenant_id, assistant_id) REFERENCES assistants (tenant_id, id) ON DELETE SET NULL (assistant_id);
GRANT UPDATE (assistant_id) ON chat_sessions TO papo_runtime;

ALTER TABLE messages ADD COLUMN reply_state text;
ALTER TABLE messages ADD CONSTRAINT ck_messages_reply_state
  CHECK (reply_state IN ('streaming', 'complete', 'stopped', 'failed', 'interrupted'));
CREATE INDEX ix_messages_streaming ON messages (updated_at) WHERE reply_state = 'streaming';
GRANT UPDATE (content, reply_state) ON messages TO papo_runtime;

-- Start-up/periodic sweep across tenants: replies left streaming by a dead process become
-- 'interrupted' errors that can be retried. Only such rows are visible to, and changed by, it.
-- (RETURNING must see the row after the change too, hence 'interrupted' in the read policy.)
CREATE POLICY stale_reply_read ON messages FOR SELECT TO papo_auth USING (reply_state IN ('streaming', 'interrupted'));
CREATE POLICY stale_reply_update ON messages FOR UPDATE TO papo_auth
  USING (reply_state = 'streaming') WITH CHECK (reply_state = 'interrupted');
GRANT SELECT (tenant_id, id, session_id, user_id, reply_state, updated_at, metadata) ON messages TO papo_auth;
GRANT UPDATE (status, reply_state, metadata) ON messages TO papo_auth;
CREATE FUNCTION papo_sweep_stale_replies(p_idle interval) RETURNS TABLE (stale_tenant_id uuid, stale_id uuid,
    stale_session_id uuid, stale_user_id text)
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    UPDATE messages
       SET status = 'error', reply_state = 'interrupted',
           metadata = metadata || jsonb_build_object('error', 'interrupted: the server stopped while this reply was being written')
     WHERE reply_state = 'streaming' AND updated_at < now() - p_idle
    RETURNING tenant_id, id, session_id, user_id;
  $$;
ALTER FUNCTION papo_sweep_stale_replies(interval) OWNER TO papo_auth;
REVOKE ALL ON FUNCTION papo_sweep_stale_replies(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_sweep_stale_replies(interval) TO papo_runtime;
"""

DOWNGRADE_SQL = """
DROP FUNCTION papo_sweep_stale_replies(interval);
DROP FUNCTION papo_default_assistant(uuid, text, text);
DROP POLICY stale_reply_update ON messages;
DROP POLICY stale_reply_read ON messages;
REVOKE ALL ON messages FROM papo_auth;
DROP INDEX ix_messages_streaming;
ALTER TABLE messages DROP CONSTRAINT ck_messages_reply_state;
ALTER TABLE messages DROP COLUMN reply_state;
ALTER TABLE chat_sessions DROP CONSTRAINT fk_chat_sessions_tenant_id_assistant_id_assistants;
ALTER TABLE chat_sessions DROP COLUMN assistant_id;
DROP TABLE assistants;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
