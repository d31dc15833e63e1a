"""Three kinds of assistant tool: a tenant's HTTP endpoint, a tenant's MCP server, or one of papo's own.

Revision ID: 0036_tool_kinds
Revises: 0035_knowledge_text_candidates

- `kind` 'http' (what 0033 created: a signed POST to `url`), 'mcp' (every tool an MCP server at
  `url` lists, over streamable HTTP, their names prefixed with this row's `name`) or 'builtin'
  (papo's own: hand the conversation to a person, look up the customer's earlier conversations).
- `url` and the signing secret only where the kind has them; an MCP server may need a credential
  (sent as the Authorization header), stored encrypted with the server's key like the others.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0036_tool_kinds"
down_revision = "0035_knowledge_text_candidates"

UPGRADE_SQL = """
ALTER TABLE assistant_tools
  ADD COLUMN kind text NOT NULL DEFAULT 'http',
  ADD COLUMN authorization_encrypted text,
  ALTER COLUMN url DROP NOT NULL,
  ALTER COLUMN secret_encrypted DROP NOT NULL,
  ADD CONSTRAINT ck_assistant_tools_kind CHECK (kind IN ('http', 'mcp', 'builtin')),
  ADD CONSTRAINT ck_assistant_tools_shape CHECK (
    CASE kind
      WHEN 'http' THEN url IS NOT NULL AND secret_encrypted IS NOT NULL AND authorization_encrypted IS NULL
      WHEN 'mcp' THEN url IS NOT NULL AND secret_encrypted IS NULL
      ELSE url IS NULL AND secret_encrypted IS NULL AND authorization_encrypted IS NULL
        AND name IN ('hand_over_to_person', 'earlier_conversations')
    END
  );
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(
        "DELETE FROM assistant_tools WHERE kind <> 'http';"
        " ALTER TABLE assistant_tools DROP CONSTRAINT ck_assistant_tools_shape,"
        " DROP CONSTRAINT ck_assistant_tools_kind, DROP COLUMN authorization_encrypted, DROP COLUMN kind,"
        " ALTER COLUMN url SET NOT NULL, ALTER COLUMN secret_encrypted SET NOT NULL;"
    )
