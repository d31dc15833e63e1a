"""Realtime outbox: events written in the same transaction as the change, numbered in commit order.

Revision ID: 0004_events
Revises: 0003_retention

Why numbers from a plain sequence are not enough: transaction A can take id 10, transaction B id 11,
and B commit first. A reader that saw 11 and moves its cursor past it would never see 10.

How papo numbers events instead: every transaction publishes all its events in one call,
papo_publish_events(), as its last statement. The call first takes a transaction-level advisory lock,
then draws the ids, then NOTIFYs once. The lock is held until the transaction has committed (and
become visible), so the next publisher draws its ids only after the previous one is visible: id order
is commit order. A reader that has seen event N has therefore already been able to see every event
below N, and `WHERE id > N` never skips one. The price is that publishing transactions commit one at a
time, as transactions that NOTIFY already do in PostgreSQL.

Reading: clients replay their own stream through RLS (same rule as messages: a user's own events;
tenant staff for the WhatsApp inbox later). Each server process's relay reads new events of every
tenant through papo_events_after(), a definer function owned by papo_auth, and routes each event only
to subscribers of the same tenant and audience.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0004_events"
down_revision = "0003_retention"

UPGRADE_SQL = """
CREATE SEQUENCE events_id_seq AS bigint;

CREATE TABLE events (
  tenant_id uuid NOT NULL,
  id bigint NOT NULL,
  -- user: the stream of user_id; staff: every owner/admin/agent of the tenant.
  audience text NOT NULL,
  user_id text,
  type text NOT NULL,
  payload jsonb NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_events PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_events_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT ck_events_audience CHECK (
    (audience = 'user' AND user_id IS NOT NULL) OR (audience = 'staff' AND user_id IS NULL))
);
CREATE INDEX ix_events_id ON events (id);
CREATE INDEX ix_events_stream ON events (tenant_id, user_id, id);
CREATE INDEX ix_events_created_at ON events (created_at);

-- The highest id removed by retention: a client asking to resume below it must resync.
CREATE TABLE events_retention (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  pruned_through bigint NOT NULL DEFAULT 0
);
INSERT INTO events_retention DEFAULT VALUES;
ALTER TABLE events_retention ENABLE ROW LEVEL SECURITY;
ALTER TABLE events_retention FORCE ROW LEVEL SECURITY;
CREATE POLICY retention_bookkeeping ON events_retention FOR ALL TO papo_auth USING (true) WITH CHECK (true);

ALTER TABLE events ENABLE ROW LEVEL SECURITY;
ALTER TABLE events FORCE ROW LEVEL SECURITY;
CREATE POLICY event_read ON events FOR SELECT TO papo_runtime
  USING (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (audience = 'user' AND user_id = (SELECT papo_current_user_id()))
      OR (audience = 'staff' AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent'))
    )
  );
-- Publishing needs no read access: a row may be written only into the context's tenant, and a
-- user's stream only by that user (or a service acting as them).
CREATE POLICY event_publish ON events FOR INSERT TO papo_runtime
  WITH CHECK (
    tenant_id = (SELECT papo_current_tenant())
    AND (
      (audience = 'user' AND user_id = (SELECT papo_current_user_id()))
      OR (audience = 'staff' AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent', 'service'))
    )
  );
CREATE POLICY relay_read ON events FOR SELECT TO papo_auth USING (true);
CREATE POLICY retention_delete ON events FOR DELETE TO papo_auth USING (true);

GRANT SELECT, INSERT ON events TO papo_runtime;
GRANT USAGE ON SEQUENCE events_id_seq TO papo_runtime;
GRANT SELECT, DELETE ON events TO papo_auth;
GRANT SELECT, UPDATE ON events_retention TO papo_auth;

-- p_events: a JSON array of {"tenant_id", "audience", "user_id", "type", "payload"}, in order.
-- Returns the highest id given out. Must be the transaction's last statement (see above).
CREATE FUNCTION papo_publish_events(p_events jsonb) RETURNS bigint
  LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, public
  AS $$
DECLARE
  last_id bigint;
BEGIN
  PERFORM pg_advisory_xact_lock(7070707070);
  WITH incoming AS (
    SELECT e.value AS event, e.ordinality
      FROM jsonb_array_elements(p_events) WITH ORDINALITY AS e
     ORDER BY e.ordinality
  ), numbered AS (
    SELECT nextval('events_id_seq') AS id, event FROM incoming
  ), inserted AS (
    INSERT INTO events (tenant_id, id, audience, user_id, type, payload)
    SELECT (event->>'tenant_id')::uuid, id, event->>'audience', event->>'user_id', event->>'type', event->'payload'
      FROM numbered
    RETURNING id
  )
  SELECT max(id) INTO last_id FROM inserted;
  PERFORM pg_notify('papo_events', last_id::text);
  RETURN last_id;
END
$$;
REVOKE ALL ON FUNCTION papo_publish_events(jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_publish_events(jsonb) TO papo_runtime;

-- The relay's read: new events of every tenant, in id order.
CREATE FUNCTION papo_events_after(p_after bigint, p_limit integer)
  RETURNS TABLE (event_tenant_id uuid, event_id bigint, event_audience text, event_user_id text,
                 event_type text, event_payload jsonb)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT tenant_id, id, audience, user_id, type, payload FROM events
     WHERE id > p_after ORDER BY id LIMIT least(p_limit, 10000);
  $$;

-- Where a resume can start (pruned_through) and the newest id committed so far.
CREATE FUNCTION papo_events_bounds(OUT pruned_through bigint, OUT head bigint)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT r.pruned_through, coalesce((SELECT max(id) FROM events), r.pruned_through)
      FROM events_retention r;
  $$;

CREATE FUNCTION papo_prune_events(p_older_than interval) RETURNS bigint
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  removed bigint;
  highest bigint;
BEGIN
  WITH gone AS (
    DELETE FROM events WHERE created_at < now() - greatest(p_older_than, interval '0') RETURNING id
  )
  SELECT count(*), max(id) INTO removed, highest FROM gone;
  IF highest IS NOT NULL THEN
    UPDATE events_retention SET pruned_through = greatest(pruned_through, highest);
  END IF;
  RETURN removed;
END
$$;

ALTER FUNCTION papo_events_after(bigint, integer) OWNER TO papo_auth;
ALTER FUNCTION papo_events_bounds() OWNER TO papo_auth;
ALTER FUNCTION papo_prune_events(interval) OWNER TO papo_auth;
REVOKE ALL ON FUNCTION papo_events_after(bigint, integer), papo_events_bounds(), papo_prune_events(interval)
  FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_events_after(bigint, integer), papo_events_bounds(), papo_prune_events(interval)
  TO papo_runtime;
"""

DOWNGRADE_SQL = """
DROP FUNCTION papo_prune_events(interval), papo_events_bounds(), papo_events_after(bigint, integer),
  papo_publish_events(jsonb);
DROP TABLE events_retention, events;
DROP SEQUENCE events_id_seq;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
