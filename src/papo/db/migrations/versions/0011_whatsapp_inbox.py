"""WhatsApp inbox: contacts, conversations (chat sessions with channel `whatsapp` as tickets) and the
WhatsApp side of messages (message id, delivery status).

Revision ID: 0011_whatsapp_inbox
Revises: 0010_whatsapp_sessions

A conversation is a chat session with channel `whatsapp`, linked to the contact and to the company's
WhatsApp session that received it, with the seed's ticket: open / pending / closed and an assigned
agent. At most one conversation per number and contact is not closed. A message keeps WhatsApp's
message id (unique per company: a repeated delivery inserts nothing) and a delivery status that only
moves forward (pending < sent < delivered < read; failed only before delivered).

The process running a WhatsApp session writes inbound messages in the company's context as
"service"; the policies of conversations and messages admit it for channel `whatsapp`.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0011_whatsapp_inbox"
down_revision = "0010_whatsapp_sessions"

STAFF = "('owner', 'admin', 'agent', 'service')"

UPGRADE_SQL = f"""
CREATE TABLE contacts (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  wa_id text NOT NULL,
  name text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_contacts PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_contacts_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT uq_contacts_tenant_wa_id UNIQUE (tenant_id, wa_id)
);
CREATE TRIGGER trg_contacts_updated_at BEFORE UPDATE ON contacts
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();
ALTER TABLE contacts ENABLE ROW LEVEL SECURITY;
ALTER TABLE contacts FORCE ROW LEVEL SECURITY;
CREATE POLICY contact_staff ON contacts FOR ALL TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN {STAFF})
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN {STAFF});
GRANT SELECT, INSERT, UPDATE ON contacts TO papo_runtime;

ALTER TABLE chat_sessions
  ADD COLUMN whatsapp_session_id uuid,
  ADD COLUMN contact_id uuid,
  ADD COLUMN ticket_status text,
  ADD COLUMN assigned_to text,
  ADD COLUMN bot_enabled boolean NOT NULL DEFAULT false,
  ADD COLUMN last_inbound_at timestamptz,
  ADD CONSTRAINT fk_chat_sessions_contact FOREIGN KEY (tenant_id, contact_id) REFERENCES contacts (tenant_id, id),
  ADD CONSTRAINT fk_chat_sessions_whatsapp_session FOREIGN KEY (tenant_id, whatsapp_session_id)
    REFERENCES whatsapp_sessions (tenant_id, id),
  ADD CONSTRAINT ck_chat_sessions_ticket CHECK (
    (channel = 'whatsapp') = (ticket_status IS NOT NULL)
    AND (ticket_status IS NULL OR ticket_status IN ('open', 'pending', 'closed')));
CREATE UNIQUE INDEX uq_chat_sessions_open_conversation ON chat_sessions (tenant_id, whatsapp_session_id, contact_id)
  WHERE channel = 'whatsapp' AND ticket_status <> 'closed';
CREATE INDEX ix_chat_sessions_inbox ON chat_sessions (tenant_id, ticket_status, activity_at DESC)
  WHERE channel = 'whatsapp';
GRANT UPDATE (ticket_status, assigned_to, bot_enabled, last_inbound_at) ON chat_sessions TO papo_runtime;

ALTER TABLE messages
  ADD COLUMN external_id text,
  ADD COLUMN delivery_status text,
  ADD CONSTRAINT ck_messages_delivery CHECK (
    delivery_status IS NULL OR delivery_status IN ('pending', 'sent', 'delivered', 'read', 'failed'));
CREATE UNIQUE INDEX uq_messages_external_id ON messages (tenant_id, external_id) WHERE external_id IS NOT NULL;
GRANT UPDATE (external_id, delivery_status) ON messages TO papo_runtime;

ALTER POLICY chat_session_read ON chat_sessions
  USING (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN {STAFF})
      OR (SELECT papo_current_role()) IN ('owner', 'admin')
    )
  );
ALTER POLICY chat_session_write ON chat_sessions
  USING (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN {STAFF})
    )
  )
  WITH CHECK (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN {STAFF})
    )
  );
ALTER POLICY message_access ON messages
  USING (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN {STAFF})
    )
  )
  WITH CHECK (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN {STAFF})
    )
  );
"""

DOWNGRADE_SQL = """
DROP INDEX uq_messages_external_id;
ALTER TABLE messages DROP CONSTRAINT ck_messages_delivery, DROP COLUMN delivery_status, DROP COLUMN external_id;
DROP INDEX ix_chat_sessions_inbox;
DROP INDEX uq_chat_sessions_open_conversation;
ALTER TABLE chat_sessions DROP CONSTRAINT ck_chat_sessions_ticket, DROP CONSTRAINT fk_chat_sessions_whatsapp_session,
  DROP CONSTRAINT fk_chat_sessions_contact, DROP COLUMN last_inbound_at, DROP COLUMN bot_enabled,
  DROP COLUMN assigned_to, DROP COLUMN ticket_status, DROP COLUMN contact_id, DROP COLUMN whatsapp_session_id;
DROP TABLE contacts;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
    # the policies of 0001 come back with the columns gone (the role lists without "service")
    for statement in UPGRADE_SQL.split("ALTER POLICY")[1:]:
        execute_script("ALTER POLICY" + statement.replace(", 'service')", ")").split(";")[0] + ";")
