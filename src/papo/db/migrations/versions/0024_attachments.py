"""Attachments: the files and structured parts of a message (photos, voice notes, videos, documents,
stickers, a location, shared contacts), and the blobs to remove once their rows are gone.

Revision ID: 0024_attachments
Revises: 0023_definer_search_path

An attachment is visible exactly when its message is: it copies the message's channel and owner
(as messages copy the session's) and carries the same policy, so no join is needed per row. Its
bytes live in the blob store (papo.blobs), named by `blob_key`; the row's `state` says where the
download stands: `pending` (waiting or retrying with backoff: `attempts`, `next_attempt_at`),
`stored`, `unavailable` (WhatsApp no longer gives it, or out of attempts) or `rejected` (over the
size limit, empty, a type that is not what it says, or over the tenant's quota; `error` says which).

A blob must outlive no row and no row may name a missing blob. Rows go with their message (cascade
from messages, which go with their session); a trigger then queues the blob's key in
`blob_deletions`, in the same transaction, and a worker deletes the queued blobs afterwards. A blob
written for a download whose transaction then fails is named after the attachment's id, so the
retry overwrites it.

Downloads are claimed across tenants by papo_claim_media_downloads() (SKIP LOCKED with a lease,
like the webhook queue); the work itself runs in the tenant's context.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0024_attachments"
down_revision = "0023_definer_search_path"

STAFF = "('owner', 'admin', 'agent', 'service')"
VISIBLE = f"""
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (channel <> 'whatsapp' AND user_id = (SELECT papo_current_user_id()))
      OR (channel = 'whatsapp' AND (SELECT papo_current_role()) IN {STAFF})
    )"""

UPGRADE_SQL = """
CREATE TABLE attachments (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  message_id uuid NOT NULL,
  session_id uuid NOT NULL,
  channel chat_channel NOT NULL,
  user_id text,
  kind text NOT NULL,
  state text NOT NULL DEFAULT 'pending',
  mime_type text,
  size bigint,
  sha256 text,
  file_name text,
  caption text,
  source jsonb NOT NULL DEFAULT '{}'::jsonb,
  data jsonb,
  blob_key text,
  error text,
  transcript text,
  attempts integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz,
  claimed_at timestamptz,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_attachments PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_attachments_message FOREIGN KEY (tenant_id, message_id)
    REFERENCES messages (tenant_id, id) ON DELETE CASCADE,
  CONSTRAINT ck_attachments_kind CHECK (kind IN
    ('image', 'audio', 'voice', 'video', 'document', 'sticker', 'location', 'contacts')),
  CONSTRAINT ck_attachments_state CHECK (state IN ('pending', 'stored', 'unavailable', 'rejected')),
  CONSTRAINT ck_attachments_size CHECK (size IS NULL OR size >= 0),
  CONSTRAINT ck_attachments_stored CHECK (state <> 'stored' OR kind IN ('location', 'contacts') OR blob_key IS NOT NULL)
);
CREATE INDEX ix_attachments_message ON attachments (tenant_id, message_id);
CREATE INDEX ix_attachments_pending ON attachments (next_attempt_at) WHERE state = 'pending';
CREATE INDEX ix_attachments_stored_size ON attachments (tenant_id) INCLUDE (size) WHERE blob_key IS NOT NULL;
ALTER TABLE attachments ENABLE ROW LEVEL SECURITY;
ALTER TABLE attachments FORCE ROW LEVEL SECURITY;
CREATE POLICY attachment_access ON attachments FOR ALL TO papo_runtime
  USING (<visible>)
  WITH CHECK (<visible>);
GRANT SELECT, INSERT, UPDATE, DELETE ON attachments TO papo_runtime;
CREATE POLICY attachment_claim ON attachments FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, UPDATE ON attachments TO papo_auth;

CREATE TABLE blob_deletions (
  id bigint GENERATED ALWAYS AS IDENTITY,
  blob_key text NOT NULL,
  queued_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_blob_deletions PRIMARY KEY (id)
);
ALTER TABLE blob_deletions ENABLE ROW LEVEL SECURITY;
ALTER TABLE blob_deletions FORCE ROW LEVEL SECURITY;
CREATE POLICY blob_deletion_worker ON blob_deletions FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON blob_deletions TO papo_auth;  -- UPDATE: FOR UPDATE needs it

-- A removed attachment's blob is queued for deletion in the transaction that removed the row.
CREATE FUNCTION papo_queue_blob_deletion() RETURNS trigger
  LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
BEGIN
  IF OLD.blob_key IS NOT NULL THEN
    INSERT INTO blob_deletions (blob_key) VALUES (OLD.blob_key);
  END IF;
  RETURN NULL;
END
$$;
CREATE TRIGGER tr_attachments_blob_deletion AFTER DELETE ON attachments
  FOR EACH ROW EXECUTE FUNCTION papo_queue_blob_deletion();

-- The oldest downloads that are due (and ones whose process died a minute ago), across tenants.
CREATE FUNCTION papo_claim_media_downloads(p_limit integer)
  RETURNS TABLE (media_tenant_id uuid, media_id uuid, media_attempts integer)
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    UPDATE attachments a SET claimed_at = now(), attempts = a.attempts + 1
     WHERE (a.tenant_id, a.id) IN (
       SELECT tenant_id, id FROM attachments
        WHERE state = 'pending' AND coalesce(next_attempt_at, created_at) <= now()
          AND (claimed_at IS NULL OR claimed_at < now() - interval '1 minute')
        ORDER BY coalesce(next_attempt_at, created_at) LIMIT least(p_limit, 100)
        FOR UPDATE SKIP LOCKED)
    RETURNING a.tenant_id, a.id, a.attempts;
  $$;

-- Blob keys whose rows are gone, for the deleting worker (which removes them once deleted).
CREATE FUNCTION papo_claim_blob_deletions(p_limit integer)
  RETURNS TABLE (deletion_id bigint, deletion_blob_key text)
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    DELETE FROM blob_deletions WHERE id IN (
      SELECT id FROM blob_deletions ORDER BY id LIMIT least(p_limit, 500) FOR UPDATE SKIP LOCKED)
    RETURNING id, blob_key;
  $$;
""".replace("<visible>", VISIBLE)

DEFINERS = (
    "papo_queue_blob_deletion()",
    "papo_claim_media_downloads(integer)",
    "papo_claim_blob_deletions(integer)",
)


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(*DEFINERS)


def downgrade() -> None:
    execute_script(
        "DROP TABLE attachments; DROP TABLE blob_deletions; DROP FUNCTION papo_queue_blob_deletion();"
        " DROP FUNCTION papo_claim_media_downloads(integer); DROP FUNCTION papo_claim_blob_deletions(integer);"
    )
