"""Branches: regenerate and edit-and-resend keep the older versions instead of destroying them.

Revision ID: 0006_branches
Revises: 0005_assistants

A chat shows one current line of messages. Regenerating a reply, or editing a user message and
resending, retires the messages being replaced (`superseded_at` set) and appends their new versions,
which point at what they replace through `branch_of`. Retired messages stay readable
(`?include_superseded=true`) and are never sent to the model again.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0006_branches"
down_revision = "0005_assistants"

UPGRADE_SQL = """
ALTER TABLE messages ADD COLUMN superseded_at timestamptz;
ALTER TABLE messages ADD COLUMN branch_of uuid;
ALTER TABLE messages ADD CONSTRAINT fk_messages_tenant_id_branch_of_messages
  FOREIGN KEY (tenant_id, branch_of) REFERENCES messages (tenant_id, id) ON DELETE SET NULL (branch_of);
CREATE INDEX ix_messages_branch_of ON messages (tenant_id, branch_of) WHERE branch_of IS NOT NULL;
GRANT UPDATE (superseded_at) ON messages TO papo_runtime;
"""

DOWNGRADE_SQL = """
DROP INDEX ix_messages_branch_of;
ALTER TABLE messages DROP CONSTRAINT fk_messages_tenant_id_branch_of_messages;
ALTER TABLE messages DROP COLUMN branch_of;
ALTER TABLE messages DROP COLUMN superseded_at;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
