"""The agents' inbox: what each agent has read, and labels on conversations.

Revision ID: 0039_inbox_reads_labels
Revises: 0038_inbox_notes_canned

- `conversation_reads`: when an agent last read a conversation, so the list counts the customer's
  messages since then (unread). Each agent reads and writes only their own marks.
- `chat_sessions.labels`: a conversation's labels (lowercase words, at most 10), set by the staff
  and used to filter the inbox.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0039_inbox_reads_labels"
down_revision = "0038_inbox_notes_canned"

OWN = (
    "tenant_id = (SELECT papo_current_tenant()) AND user_id = (SELECT papo_current_user_id())"
    " AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent')"
)

UPGRADE_SQL = """
CREATE TABLE conversation_reads (
  tenant_id uuid NOT NULL,
  session_id uuid NOT NULL,
  user_id text NOT NULL,
  read_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_conversation_reads PRIMARY KEY (tenant_id, session_id, user_id),
  CONSTRAINT fk_conversation_reads_session FOREIGN KEY (tenant_id, session_id)
    REFERENCES chat_sessions (tenant_id, id) ON DELETE CASCADE
);
ALTER TABLE conversation_reads ENABLE ROW LEVEL SECURITY;
ALTER TABLE conversation_reads FORCE ROW LEVEL SECURITY;
CREATE POLICY conversation_reads_own ON conversation_reads FOR ALL TO papo_runtime USING (<own>) WITH CHECK (<own>);
GRANT SELECT, INSERT, UPDATE, DELETE ON conversation_reads TO papo_runtime;

ALTER TABLE chat_sessions ADD COLUMN labels text[] NOT NULL DEFAULT '{}';
ALTER TABLE chat_sessions ADD CONSTRAINT ck_chat_sessions_labels CHECK (cardinality(labels) <= 10);
GRANT UPDATE (labels) ON chat_sessions TO papo_runtime;
""".replace("<own>", OWN)


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(
        "DROP TABLE conversation_reads;"
        " ALTER TABLE chat_sessions DROP CONSTRAINT ck_chat_sessions_labels, DROP COLUMN labels;"
    )
