"""Files in a chat with an assistant: images the model may see, documents it answers from.

Revision ID: 0037_chat_files
Revises: 0036_tool_kinds

- `assistants.accepts_images`: the model takes images (vision); a user's photos are then sent to
  it as image parts, otherwise named in the text.
- `chat_document_chunks`: the passages of a document attached in a chat, which that chat's replies
  retrieve from (full text, and the embedding when one could be made). Visible exactly like the
  attachment they come from (its channel and owner, see 0024), deleted with it.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0037_chat_files"
down_revision = "0036_tool_kinds"

STAFF = "('owner', 'admin', 'agent', 'service')"
VISIBLE = f"""
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN {STAFF})
    )"""

UPGRADE_SQL = """
ALTER TABLE assistants ADD COLUMN accepts_images boolean NOT NULL DEFAULT false;

CREATE TABLE chat_document_chunks (
  tenant_id uuid NOT NULL,
  attachment_id uuid NOT NULL,
  ordinal integer NOT NULL,
  session_id uuid NOT NULL,
  channel chat_channel NOT NULL,
  user_id text,
  page integer,
  content text NOT NULL,
  search_vector tsvector GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, papo_fold(content))) STORED,
  embedding real[],
  CONSTRAINT pk_chat_document_chunks PRIMARY KEY (tenant_id, attachment_id, ordinal),
  CONSTRAINT fk_chat_document_chunks_attachment FOREIGN KEY (tenant_id, attachment_id)
    REFERENCES attachments (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX ix_chat_document_chunks_session ON chat_document_chunks (tenant_id, session_id);
ALTER TABLE chat_document_chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE chat_document_chunks FORCE ROW LEVEL SECURITY;
CREATE POLICY chat_document_chunk_access ON chat_document_chunks FOR ALL TO papo_runtime
  USING (<visible>) WITH CHECK (<visible>);
GRANT SELECT, INSERT, DELETE ON chat_document_chunks TO papo_runtime;
""".replace("<visible>", VISIBLE)


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script("DROP TABLE chat_document_chunks; ALTER TABLE assistants DROP COLUMN accepts_images;")
