"""A run of a number's inbound WhatsApp messages stored by one statement.

Revision ID: 0043_whatsapp_take_in
Revises: 0042_post_messages

Each customer message took four round trips inside its lane's transaction (papo.whatsapp.ingest):
the contact's upsert, the open conversation's upsert, the message's insert and a read of the
conversation for the inbox's rules. At a few hundred messages a second those round trips were most of
the ingest worker's time, in the driver and in the event loop between them (`make bench-whatsapp`).

papo_whatsapp_take_in() runs the same statements for every message of a run, in order, inside the
caller's transaction and under its row-level security (it is not SECURITY DEFINER): each statement
takes its own snapshot, exactly as when they were sent one by one, so a contact another transaction
created meanwhile is still found. One row per message, in order (`n`): the conversation as the inbox
reads it after that message (c_*) and the message as stored (m_*, all NULL when WhatsApp delivered
it before). What the inbox then decides per message (handoff, the bot's reply) stays in Python.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0043_whatsapp_take_in"
down_revision = "0042_post_messages"

UPGRADE_SQL = """
CREATE FUNCTION papo_whatsapp_take_in(
  p_tenant uuid, p_number uuid, p_assistant uuid, p_wa_ids text[], p_names text[], p_titles text[],
  p_contact_ids uuid[], p_conversation_ids uuid[], p_message_ids uuid[], p_external_ids text[],
  p_contents text[], p_metadata text[]
)
RETURNS TABLE (
  n integer, c_id uuid, c_title text, c_ticket_status text, c_assigned_to text, c_bot_enabled boolean,
  c_last_inbound_at timestamptz, c_last_message_at timestamptz, c_whatsapp_session_id uuid, c_contact_id uuid,
  c_wa_id text, c_contact_name text, c_created_at timestamptz, c_labels text[], c_team_id uuid,
  m_id uuid, m_session_id uuid, m_role text, m_content text, m_status text, m_metadata jsonb, m_reply_state text,
  m_superseded_at timestamptz, m_branch_of uuid, m_created_at timestamptz, m_updated_at timestamptz,
  m_external_id text, m_delivery_status text
) LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
  v_contact uuid;
  v_conversation uuid;
  v_message uuid;
BEGIN
  FOR i IN 1 .. coalesce(array_length(p_wa_ids, 1), 0) LOOP
    -- The contact, created if new; its name written only when it changed. An existing row is
    -- locked either way; its id comes from the second branch, unless another transaction created
    -- it after this statement's snapshot (then the next statement, with a new snapshot, finds it).
    WITH written AS (
      INSERT INTO contacts AS k (tenant_id, id, wa_id, name)
      VALUES (p_tenant, p_contact_ids[i], p_wa_ids[i], p_names[i])
      ON CONFLICT (tenant_id, wa_id) DO UPDATE SET name = EXCLUDED.name
        WHERE EXCLUDED.name IS NOT NULL AND k.name IS DISTINCT FROM EXCLUDED.name
      RETURNING k.id
    )
    SELECT found.id INTO v_contact FROM (
      SELECT written.id FROM written
      UNION ALL
      SELECT k.id FROM contacts k WHERE k.tenant_id = p_tenant AND k.wa_id = p_wa_ids[i]
      LIMIT 1
    ) found;
    IF v_contact IS NULL THEN
      SELECT k.id INTO v_contact FROM contacts k WHERE k.tenant_id = p_tenant AND k.wa_id = p_wa_ids[i];
    END IF;
    -- The customer's open conversation on the number, started if there is none and locked either
    -- way, its customer's last word stamped now (found through the unique index as the arbiter).
    INSERT INTO chat_sessions AS c (tenant_id, id, title, channel, ticket_status, bot_enabled,
                                    whatsapp_session_id, contact_id, assistant_id, last_inbound_at)
    VALUES (p_tenant, p_conversation_ids[i], p_titles[i], 'whatsapp', 'open', p_assistant IS NOT NULL,
            p_number, v_contact, p_assistant, now())
    ON CONFLICT (tenant_id, whatsapp_session_id, contact_id) WHERE channel = 'whatsapp' AND ticket_status <> 'closed'
      DO UPDATE SET last_inbound_at = now()
    RETURNING c.id INTO v_conversation;
    -- The message, once by its WhatsApp id.
    v_message := NULL;
    INSERT INTO messages AS m (tenant_id, id, session_id, role, content, status, metadata, external_id)
    VALUES (p_tenant, p_message_ids[i], v_conversation, 'user', p_contents[i], 'delivered', p_metadata[i]::jsonb,
            p_external_ids[i])
    ON CONFLICT (tenant_id, external_id) WHERE external_id IS NOT NULL DO NOTHING
    RETURNING m.id INTO v_message;
    RETURN QUERY
      SELECT i, c.id, c.title, c.ticket_status, c.assigned_to, c.bot_enabled, c.last_inbound_at, c.last_message_at,
             c.whatsapp_session_id, c.contact_id, k.wa_id, k.name, c.created_at, c.labels, c.team_id,
             m.id, m.session_id, m.role, m.content, m.status::text, m.metadata, m.reply_state, m.superseded_at,
             m.branch_of, m.created_at, m.updated_at, m.external_id, m.delivery_status
        FROM chat_sessions c
        JOIN contacts k ON k.tenant_id = c.tenant_id AND k.id = c.contact_id
        LEFT JOIN messages m ON m.tenant_id = c.tenant_id AND m.id = v_message
       WHERE c.tenant_id = p_tenant AND c.id = v_conversation;
  END LOOP;
END
$$;
REVOKE ALL ON FUNCTION papo_whatsapp_take_in(uuid, uuid, uuid, text[], text[], text[], uuid[], uuid[], uuid[], text[], text[], text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_whatsapp_take_in(uuid, uuid, uuid, text[], text[], text[], uuid[], uuid[], uuid[], text[], text[], text[]) TO papo_runtime;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(
        "DROP FUNCTION papo_whatsapp_take_in(uuid, uuid, uuid, text[], text[], text[], uuid[], uuid[], uuid[], text[], text[], text[]);"
    )
