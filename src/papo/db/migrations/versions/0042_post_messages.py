"""Messages posted by callers this process remembers, several in one statement.

Revision ID: 0042_post_messages
Revises: 0041_post_message

papo_post_message() (0041) made a remembered caller's message POST one statement, committing on
its own. Under load each POST was still its own commit: a WAL flush, the chat's row locked from
the INSERT's trigger until that flush (so on a busy chat every other writer waited for it), a
relay read and a stamping each. papo_post_messages() takes the posts of one caller that arrived
together (papo.chat.posts_at_once gathers them like a group commit) and does for all of them what
papo_post_message() did for one, in one transaction:

- papo_resume_context confirms the remembered principal (PAP01 when it no longer holds);
- the messages of chats the caller may write (the caller's row-level security decides), in the
  order they arrived, are inserted by the same INSERT (the same trigger: a chat's row is locked
  once for all of its messages in the batch);
- `message.created` is published for each, in insertion order.

A post whose chat the caller cannot see (another tenant's, deleted, unknown) is not written and
comes back 'missing'; a user's message in a chat with an assistant is not written and comes back
'reply' (it starts a reply, which the full request path does). The others come back 'stored' with
their timestamp. A statement that fails (a chat deleted while it ran, unstorable text that the API
did not catch) writes nothing; the caller then posts each message alone, so each gets its own answer.
"""

from __future__ import annotations

import runpy
from pathlib import Path

from papo.db.script import execute_script

revision = "0042_post_messages"
down_revision = "0041_post_message"

SIGNATURE = "papo_post_messages(uuid, text, text, uuid, uuid, uuid[], uuid[], text[], text[], text[], text[])"
UPGRADE_SQL = """
DROP FUNCTION papo_post_message(uuid, text, text, uuid, uuid, uuid, uuid, text, text, jsonb, jsonb);

-- The posts in the order they arrived: ids, chats, roles, contents, metadata and the event payloads
-- without their two timestamps and metadata (JSON text). One row per post, in the same order, with
-- the metadata as stored. A chat's row locked by another transaction for longer than lock_timeout
-- fails the statement (55P03, nothing written): the caller hands those posts to the full request
-- path, so a locked chat holds up none of the process's few statements for long.
CREATE FUNCTION papo_post_messages(
  p_tenant uuid, p_user text, p_role text, p_api_key uuid, p_web_session uuid,
  p_ids uuid[], p_sessions uuid[], p_roles text[], p_contents text[], p_metadata text[], p_payloads text[]
) RETURNS TABLE (id uuid, outcome text, created_at timestamptz, metadata jsonb)
  LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp SET lock_timeout = '200ms'
  AS $$
#variable_conflict use_column
DECLARE
  written uuid[];
  stamps timestamptz[];
  stored_metadata jsonb[];
BEGIN
  PERFORM papo_resume_context(p_tenant, p_user, p_role, p_api_key, p_web_session);
  WITH posts AS (
    SELECT p.* FROM unnest(p_ids, p_sessions, p_roles, p_contents, p_metadata)
      WITH ORDINALITY AS p(id, session_id, role, content, metadata, n)
  ), inserted AS (
    INSERT INTO messages AS m (tenant_id, id, session_id, role, content, status, metadata)
    SELECT p_tenant, posts.id, posts.session_id, posts.role, posts.content, 'sent', posts.metadata::jsonb
      FROM posts
      JOIN chat_sessions s ON s.tenant_id = p_tenant AND s.id = posts.session_id AND s.status <> 'deleted'
     WHERE posts.role <> 'user' OR s.assistant_id IS NULL
     ORDER BY posts.n
    RETURNING m.id, m.created_at, m.metadata
  )
  SELECT array_agg(i.id ORDER BY i.created_at), array_agg(i.created_at ORDER BY i.created_at),
         array_agg(i.metadata ORDER BY i.created_at)
    INTO written, stamps, stored_metadata
    FROM inserted i;
  IF written IS NOT NULL THEN
    PERFORM papo_publish_events((
      SELECT jsonb_agg(jsonb_build_object(
               'tenant_id', p_tenant, 'audience', 'user', 'user_id', p_user, 'type', 'message.created',
               'payload', pl.payload::jsonb || jsonb_build_object('metadata', w.metadata,
                 'created_at', papo_json_time(w.stamp), 'updated_at', papo_json_time(w.stamp)))
             ORDER BY w.n)
        FROM unnest(written, stamps, stored_metadata) WITH ORDINALITY AS w(id, stamp, metadata, n)
        JOIN unnest(p_ids, p_payloads) AS pl(id, payload) ON pl.id = w.id));
  END IF;
  RETURN QUERY
    SELECT p.id,
           CASE WHEN w.stamp IS NOT NULL THEN 'stored'
                WHEN EXISTS (SELECT 1 FROM chat_sessions s
                              WHERE s.tenant_id = p_tenant AND s.id = p.session_id AND s.status <> 'deleted')
                THEN 'reply'
                ELSE 'missing' END,
           w.stamp,
           w.metadata
      FROM unnest(p_ids, p_sessions) WITH ORDINALITY AS p(id, session_id, n)
      LEFT JOIN unnest(written, stamps, stored_metadata) AS w(id, stamp, metadata) ON w.id = p.id
     ORDER BY p.n;
END
$$;
REVOKE ALL ON FUNCTION papo_post_messages(uuid, text, text, uuid, uuid, uuid[], uuid[], text[], text[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_post_messages(uuid, text, text, uuid, uuid, uuid[], uuid[], text[], text[], text[], text[]) TO papo_runtime;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(
        "DROP FUNCTION papo_post_messages(uuid, text, text, uuid, uuid, uuid[], uuid[], text[], text[], text[], text[]); DROP FUNCTION papo_json_time(timestamptz);"
    )
    # back to 0041's single post (papo_json_time with it)
    execute_script(runpy.run_path(str(Path(__file__).with_name("0041_post_message.py")))["UPGRADE_SQL"])
