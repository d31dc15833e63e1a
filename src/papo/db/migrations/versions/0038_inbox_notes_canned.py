"""The agents' inbox: private notes and canned responses.

Revision ID: 0038_inbox_notes_canned
Revises: 0037_chat_files

- `messages.role` may be 'note': an agent's private note in a conversation. Conversations on
  WhatsApp are staff-only already (row-level security by channel); a note is never sent to the
  customer, never given to the bot's model, and says so by its role.
- `canned_responses`: a company's saved replies, typed as `/shortcut` in the inbox. Staff read
  them; owners, admins and API keys write them.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0038_inbox_notes_canned"
down_revision = "0037_chat_files"

STAFF = "tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent', 'service')"
WRITERS = "tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin', 'service')"

UPGRADE_SQL = """
ALTER TABLE messages DROP CONSTRAINT ck_messages_role;
ALTER TABLE messages ADD CONSTRAINT ck_messages_role CHECK (role IN ('user', 'assistant', 'system', 'tool', 'note'));

CREATE TABLE canned_responses (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  shortcut text NOT NULL,
  content text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_canned_responses PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_canned_responses_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT ck_canned_responses_shortcut CHECK (shortcut ~ '^[a-z0-9_-]{1,32}$'),
  CONSTRAINT ck_canned_responses_content CHECK (length(content) BETWEEN 1 AND 4096)
);
CREATE UNIQUE INDEX uq_canned_responses_shortcut ON canned_responses (tenant_id, shortcut);
CREATE TRIGGER trg_canned_responses_updated_at BEFORE UPDATE ON canned_responses
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();
ALTER TABLE canned_responses ENABLE ROW LEVEL SECURITY;
ALTER TABLE canned_responses FORCE ROW LEVEL SECURITY;
CREATE POLICY canned_responses_read ON canned_responses FOR SELECT TO papo_runtime USING (<staff>);
CREATE POLICY canned_responses_insert ON canned_responses FOR INSERT TO papo_runtime WITH CHECK (<writers>);
CREATE POLICY canned_responses_update ON canned_responses FOR UPDATE TO papo_runtime USING (<writers>) WITH CHECK (<writers>);
CREATE POLICY canned_responses_delete ON canned_responses FOR DELETE TO papo_runtime USING (<writers>);
GRANT SELECT, INSERT, UPDATE, DELETE ON canned_responses TO papo_runtime;
""".replace("<staff>", STAFF).replace("<writers>", WRITERS)


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(
        "DROP TABLE canned_responses; DELETE FROM messages WHERE role = 'note';"
        " ALTER TABLE messages DROP CONSTRAINT ck_messages_role;"
        " ALTER TABLE messages ADD CONSTRAINT ck_messages_role CHECK (role IN ('user', 'assistant', 'system', 'tool'));"
    )
