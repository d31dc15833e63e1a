"""Tools an assistant may call, and the history role that records each call.

Revision ID: 0033_assistant_tools
Revises: 0032_resume_context

- `assistant_tools`: a tenant's HTTP tools (name, description, JSON-schema parameters, URL,
  timeout, and the signing secret, encrypted with the server's key, that lets the company verify
  each call). Members read them (replies run in the member's context); owners, admins and API keys
  write them.
- `messages.role` may be 'tool': one message per call, holding the result the model was given and,
  in its metadata, the tool, the arguments and how the call went. Written by papo only: the API
  refuses the role from clients.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0033_assistant_tools"
down_revision = "0032_resume_context"

TENANT = "tenant_id = (SELECT papo_current_tenant())"
WRITERS = f"{TENANT} AND (SELECT papo_current_role()) IN ('owner', 'admin', 'service')"

UPGRADE_SQL = """
ALTER TABLE messages DROP CONSTRAINT ck_messages_role;
ALTER TABLE messages ADD CONSTRAINT ck_messages_role CHECK (role IN ('user', 'assistant', 'system', 'tool'));

CREATE TABLE assistant_tools (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  assistant_id uuid NOT NULL,
  name text NOT NULL,
  description text NOT NULL DEFAULT '',
  parameters jsonb NOT NULL DEFAULT '{"type": "object", "properties": {}}'::jsonb,
  url text NOT NULL,
  timeout_seconds integer NOT NULL DEFAULT 10,
  secret_encrypted text NOT NULL,
  enabled boolean NOT NULL DEFAULT true,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_assistant_tools PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_assistant_tools_assistant FOREIGN KEY (tenant_id, assistant_id)
    REFERENCES assistants (tenant_id, id) ON DELETE CASCADE,
  CONSTRAINT ck_assistant_tools_name CHECK (name ~ '^[A-Za-z0-9_-]{1,64}$'),
  CONSTRAINT ck_assistant_tools_timeout CHECK (timeout_seconds BETWEEN 1 AND 60)
);
CREATE UNIQUE INDEX uq_assistant_tools_name ON assistant_tools (tenant_id, assistant_id, name);
CREATE TRIGGER trg_assistant_tools_updated_at BEFORE UPDATE ON assistant_tools
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();
ALTER TABLE assistant_tools ENABLE ROW LEVEL SECURITY;
ALTER TABLE assistant_tools FORCE ROW LEVEL SECURITY;
CREATE POLICY assistant_tools_read ON assistant_tools FOR SELECT TO papo_runtime USING (<tenant>);
CREATE POLICY assistant_tools_insert ON assistant_tools FOR INSERT TO papo_runtime WITH CHECK (<writers>);
CREATE POLICY assistant_tools_update ON assistant_tools FOR UPDATE TO papo_runtime USING (<writers>) WITH CHECK (<writers>);
CREATE POLICY assistant_tools_delete ON assistant_tools FOR DELETE TO papo_runtime USING (<writers>);
GRANT SELECT, INSERT, UPDATE, DELETE ON assistant_tools TO papo_runtime;
""".replace("<tenant>", TENANT).replace("<writers>", WRITERS)


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(
        "DROP TABLE assistant_tools; DELETE FROM messages WHERE role = 'tool';"
        " ALTER TABLE messages DROP CONSTRAINT ck_messages_role;"
        " ALTER TABLE messages ADD CONSTRAINT ck_messages_role CHECK (role IN ('user', 'assistant', 'system'));"
    )
