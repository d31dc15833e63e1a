"""A message posted by a caller this process has just seen, in one statement.

Revision ID: 0041_post_message
Revises: 0040_inbox_teams

The API's message POST took three round trips in one transaction: BEGIN with the remembered
principal, the INSERT, the event's publish with the COMMIT. The INSERT's trigger locks the chat's
row until the COMMIT (migration 0001: created_at follows commit order), so on a busy chat every
other writer waited for those round trips and for this process's event loop between them.

papo_post_message() does the same work as one statement, which PostgreSQL runs as its own
transaction: it confirms the remembered principal (papo_resume_context, PAP01 when it no longer
holds), inserts the message under the caller's row-level security (the same INSERT, the same
trigger), and publishes `message.created` with it. The caller sends the event's payload without its
two timestamps, which only the trigger knows; papo_json_time() writes them as the API does.

It returns no row, and writes nothing, for a user's message in a chat with an assistant: that one
starts a reply, which the full request path does (papo.chat.api.send_message).
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0041_post_message"
down_revision = "0040_inbox_teams"

SIGNATURE = "papo_post_message(uuid, text, text, uuid, uuid, uuid, uuid, text, text, jsonb, jsonb)"
UPGRADE_SQL = """
-- A timestamp as the API's JSON writes it (pydantic): UTC, 'Z', microseconds only when not zero.
CREATE FUNCTION papo_json_time(p_time timestamptz) RETURNS text
  LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE SET search_path = pg_catalog
  RETURN to_char(p_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
      || CASE WHEN extract(microseconds FROM p_time)::bigint % 1000000 = 0 THEN ''
              ELSE to_char(p_time AT TIME ZONE 'UTC', '.US') END
      || 'Z';

CREATE FUNCTION papo_post_message(
  p_tenant uuid, p_user text, p_role text, p_api_key uuid, p_web_session uuid,
  p_id uuid, p_session uuid, p_message_role text, p_content text, p_metadata jsonb, p_payload jsonb
) RETURNS TABLE (
  id uuid, session_id uuid, role text, content text, status text, metadata jsonb, reply_state text,
  branch_of uuid, created_at timestamptz, updated_at timestamptz
)
  LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp
  AS $$
#variable_conflict use_column
DECLARE
  stamp timestamptz;
BEGIN
  PERFORM papo_resume_context(p_tenant, p_user, p_role, p_api_key, p_web_session);
  IF p_message_role = 'user' AND EXISTS (
       SELECT 1 FROM chat_sessions s
        WHERE s.tenant_id = p_tenant AND s.id = p_session AND s.assistant_id IS NOT NULL) THEN
    RETURN;
  END IF;
  INSERT INTO messages AS m (tenant_id, id, session_id, role, content, status, metadata)
  VALUES (p_tenant, p_id, p_session, p_message_role, p_content, 'sent', p_metadata)
  RETURNING m.created_at INTO stamp;
  PERFORM papo_publish_events(jsonb_build_array(jsonb_build_object(
    'tenant_id', p_tenant, 'audience', 'user', 'user_id', p_user, 'type', 'message.created',
    'payload', p_payload || jsonb_build_object('created_at', papo_json_time(stamp), 'updated_at', papo_json_time(stamp))
  )));
  RETURN QUERY
    SELECT p_id, p_session, p_message_role, p_content, 'sent'::text, p_metadata, NULL::text, NULL::uuid,
           stamp, stamp;
END
$$;
REVOKE ALL ON FUNCTION papo_post_message(uuid, text, text, uuid, uuid, uuid, uuid, text, text, jsonb, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_post_message(uuid, text, text, uuid, uuid, uuid, uuid, text, text, jsonb, jsonb)
  TO papo_runtime;
REVOKE ALL ON FUNCTION papo_json_time(timestamptz) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_json_time(timestamptz) TO papo_runtime;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(f"DROP FUNCTION {SIGNATURE}; DROP FUNCTION papo_json_time(timestamptz);")
