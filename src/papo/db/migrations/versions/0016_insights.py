"""Insights: sentiment per message, the admins' usage report, and cursors for outbox consumers.

Revision ID: 0016_insights
Revises: 0015_rate_limits

Sentiment is scored in the background from the events outbox (each message.created event carries
the message), so sending a message costs nothing more. Scores live beside the messages, visible
exactly when the message is: the read policy asks the messages table, whose own policy decides.

Outbox consumers (sentiment, outbound webhooks) keep a cursor each; a consumer's batch holds its
cursor row locked, so one process at a time works a consumer and a crash only repeats a batch.

The usage report counts across the tenant's chats without showing any of them: papo_usage() is a
definer function that returns numbers only, to owners and admins of the current tenant.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0016_insights"
down_revision = "0015_rate_limits"

UPGRADE_SQL = """
CREATE TABLE outbox_cursors (
  name text PRIMARY KEY,
  last_id bigint NOT NULL
);
ALTER TABLE outbox_cursors ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox_cursors FORCE ROW LEVEL SECURITY;
CREATE POLICY outbox_consumer ON outbox_cursors FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE ON outbox_cursors TO papo_auth;

-- The consumer's position, locked for this transaction; NULL while another process holds it.
CREATE FUNCTION papo_outbox_claim(p_name text) RETURNS bigint
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  position bigint;
BEGIN
  INSERT INTO outbox_cursors (name, last_id) VALUES (p_name, 0) ON CONFLICT (name) DO NOTHING;
  SELECT last_id INTO position FROM outbox_cursors WHERE name = p_name FOR UPDATE SKIP LOCKED;
  RETURN position;
END
$$;

CREATE FUNCTION papo_outbox_advance(p_name text, p_last_id bigint) RETURNS void
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$ UPDATE outbox_cursors SET last_id = greatest(last_id, p_last_id) WHERE name = p_name; $$;

-- For metrics: how many events each consumer still has to work through.
CREATE FUNCTION papo_outbox_backlog()
  RETURNS TABLE (metric text, label text, value double precision)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT 'queue_depth', 'outbox:' || c.name,
           greatest(0, coalesce((SELECT max(id) FROM events), 0) - c.last_id)::double precision
      FROM outbox_cursors c;
  $$;

CREATE TABLE message_sentiments (
  tenant_id uuid NOT NULL,
  message_id uuid NOT NULL,
  session_id uuid NOT NULL,
  score real NOT NULL,
  label text NOT NULL,
  language text NOT NULL,
  scored_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_message_sentiments PRIMARY KEY (tenant_id, message_id),
  CONSTRAINT fk_message_sentiments_message FOREIGN KEY (tenant_id, message_id)
    REFERENCES messages (tenant_id, id) ON DELETE CASCADE,
  CONSTRAINT ck_message_sentiments_label CHECK (label IN ('positive', 'neutral', 'negative')),
  CONSTRAINT ck_message_sentiments_score CHECK (score BETWEEN -1 AND 1)
);
CREATE INDEX ix_message_sentiments_session ON message_sentiments (tenant_id, session_id);
ALTER TABLE message_sentiments ENABLE ROW LEVEL SECURITY;
ALTER TABLE message_sentiments FORCE ROW LEVEL SECURITY;
CREATE POLICY sentiment_read ON message_sentiments FOR SELECT TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant())
         AND EXISTS (SELECT 1 FROM messages m WHERE m.tenant_id = message_sentiments.tenant_id
                                                AND m.id = message_sentiments.message_id));
GRANT SELECT ON message_sentiments TO papo_runtime;
CREATE POLICY sentiment_writer ON message_sentiments FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT ON message_sentiments TO papo_auth;

-- What the definer functions below read: counts and labels, never content.
CREATE POLICY insights_read ON messages FOR SELECT TO papo_auth USING (true);
GRANT SELECT (tenant_id, id, session_id, user_id, channel, role, created_at, metadata) ON messages TO papo_auth;
CREATE POLICY insights_read ON chat_sessions FOR SELECT TO papo_auth USING (true);
GRANT SELECT (tenant_id, id, channel, created_at, whatsapp_session_id) ON chat_sessions TO papo_auth;

-- Scores for messages that still exist (one deleted meanwhile is skipped).
CREATE FUNCTION papo_store_sentiments(p_scores jsonb) RETURNS integer
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    WITH stored AS (
      INSERT INTO message_sentiments (tenant_id, message_id, session_id, score, label, language)
      SELECT m.tenant_id, m.id, m.session_id, s.score, s.label, s.language
        FROM jsonb_to_recordset(p_scores) AS s(tenant_id uuid, message_id uuid, score real, label text, language text)
        JOIN messages m ON m.tenant_id = s.tenant_id AND m.id = s.message_id
      ON CONFLICT (tenant_id, message_id) DO NOTHING
      RETURNING 1)
    SELECT count(*)::integer FROM stored;
  $$;

-- The current tenant's usage by UTC day, for its owners and admins only.
CREATE FUNCTION papo_usage(p_since date, p_until date)
  RETURNS TABLE (metric text, day date, label text, value double precision, extra double precision)
  LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  tenant uuid := papo_current_tenant();
  first_moment timestamptz := p_since::timestamp AT TIME ZONE 'UTC';
  last_moment timestamptz := (p_until + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
  IF tenant IS NULL OR papo_current_role() NOT IN ('owner', 'admin') THEN
    RAISE EXCEPTION 'usage is for tenant admins' USING ERRCODE = '42501';
  END IF;
  RETURN QUERY
    SELECT 'messages', (m.created_at AT TIME ZONE 'UTC')::date, m.channel::text || ':' || m.role,
           count(*)::double precision, NULL::double precision
      FROM messages m
     WHERE m.tenant_id = tenant AND m.created_at >= first_moment AND m.created_at < last_moment
     GROUP BY 2, 3
    UNION ALL
    SELECT 'active_users', (m.created_at AT TIME ZONE 'UTC')::date, '', count(DISTINCT m.user_id), NULL
      FROM messages m
     WHERE m.tenant_id = tenant AND m.created_at >= first_moment AND m.created_at < last_moment
       AND m.role = 'user' AND m.channel <> 'whatsapp' AND m.user_id IS NOT NULL
     GROUP BY 2
    UNION ALL
    SELECT 'active_users_window', p_until, '', count(DISTINCT m.user_id), NULL
      FROM messages m
     WHERE m.tenant_id = tenant AND m.created_at >= first_moment AND m.created_at < last_moment
       AND m.role = 'user' AND m.channel <> 'whatsapp' AND m.user_id IS NOT NULL
    UNION ALL
    SELECT 'sessions_created', (s.created_at AT TIME ZONE 'UTC')::date, s.channel::text, count(*), NULL
      FROM chat_sessions s
     WHERE s.tenant_id = tenant AND s.created_at >= first_moment AND s.created_at < last_moment
     GROUP BY 2, 3
    UNION ALL
    SELECT 'ai_tokens', (m.created_at AT TIME ZONE 'UTC')::date, coalesce(m.metadata->>'model', 'unknown'),
           sum(coalesce((m.metadata->'usage'->>'prompt_tokens')::double precision, 0)),
           sum(coalesce((m.metadata->'usage'->>'completion_tokens')::double precision, 0))
      FROM messages m
     WHERE m.tenant_id = tenant AND m.created_at >= first_moment AND m.created_at < last_moment
       AND m.role = 'assistant' AND m.metadata ? 'model'
     GROUP BY 2, 3
    UNION ALL
    SELECT 'whatsapp_messages', (m.created_at AT TIME ZONE 'UTC')::date,
           coalesce(w.name, 'removed') || ' (' || coalesce(w.phone_number, '?') || ')' || CASE
             WHEN m.role = 'user' THEN ':in' ELSE ':out' END,
           count(*), NULL
      FROM messages m
      JOIN chat_sessions s ON s.tenant_id = m.tenant_id AND s.id = m.session_id
      LEFT JOIN whatsapp_sessions w ON w.tenant_id = s.tenant_id AND w.id = s.whatsapp_session_id
     WHERE m.tenant_id = tenant AND m.created_at >= first_moment AND m.created_at < last_moment
       AND m.channel = 'whatsapp'
     GROUP BY 2, 3
    UNION ALL
    SELECT 'sentiment', (m.created_at AT TIME ZONE 'UTC')::date, x.label, count(*), avg(x.score)
      FROM message_sentiments x
      JOIN messages m ON m.tenant_id = x.tenant_id AND m.id = x.message_id
     WHERE x.tenant_id = tenant AND m.created_at >= first_moment AND m.created_at < last_moment
     GROUP BY 2, 3;
END
$$;

-- The report reads a tenant's messages by time.
CREATE INDEX ix_messages_tenant_created ON messages (tenant_id, created_at);
"""

DOWNGRADE_SQL = """
DROP INDEX ix_messages_tenant_created;
DROP FUNCTION papo_usage(date, date);
DROP FUNCTION papo_store_sentiments(jsonb);
DROP POLICY insights_read ON chat_sessions;
DROP POLICY insights_read ON messages;
REVOKE SELECT (channel, role, created_at) ON messages FROM papo_auth;
REVOKE SELECT (channel, created_at, whatsapp_session_id) ON chat_sessions FROM papo_auth;
DROP TABLE message_sentiments;
DROP FUNCTION papo_outbox_backlog();
DROP FUNCTION papo_outbox_advance(text, bigint);
DROP FUNCTION papo_outbox_claim(text);
DROP TABLE outbox_cursors;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(
        "papo_outbox_claim(text)",
        "papo_outbox_advance(text, bigint)",
        "papo_outbox_backlog()",
        "papo_store_sentiments(jsonb)",
        "papo_usage(date, date)",
    )


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
