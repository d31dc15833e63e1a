"""Outbox consumers hold no transaction id while they work a batch out.

Revision ID: 0044_outbox_batches_without_xid
Revises: 0043_whatsapp_take_in

A consumer (sentiment scoring, outbound webhooks) locked its cursor's row (papo_outbox_claim: FOR
UPDATE SKIP LOCKED) and kept that transaction open while it worked its batch. Sentiment scoring runs
in a child process at idle priority, so under load a batch took seconds; a row lock gives the
transaction an xid, and while it ran no table could prune the row versions that every message
leaves behind (a chat's row, the events' stamps, the webhook queue), and every index lookup walked
them (`make bench-whatsapp`, pg_stat_activity: "idle in transaction" for up to 4 s).

One process at a time per consumer is now a transaction-level advisory lock (which takes no xid),
and the cursor is read without locking it (papo_outbox_position). In READ COMMITTED a transaction
holds no snapshot between its statements, so while the batch is worked out the open transaction
keeps nothing from being pruned; the lock goes with the transaction, also when its connection dies.
papo_outbox_advance moves the cursor only from where it was read, so a batch stored twice is not
possible even if the lock were lost.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0044_outbox_batches_without_xid"
down_revision = "0043_whatsapp_take_in"

UPGRADE_SQL = """
DROP FUNCTION papo_outbox_claim(text);
DROP FUNCTION papo_outbox_advance(text, bigint);

-- The consumer's position, read without a lock (so without a transaction id); the row is made the
-- first time.
CREATE FUNCTION papo_outbox_position(p_name text) RETURNS bigint
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  position bigint;
BEGIN
  SELECT last_id INTO position FROM outbox_cursors WHERE name = p_name;
  IF position IS NULL THEN
    INSERT INTO outbox_cursors (name, last_id) VALUES (p_name, 0) ON CONFLICT (name) DO NOTHING;
    SELECT last_id INTO position FROM outbox_cursors WHERE name = p_name;
  END IF;
  RETURN position;
END
$$;

-- Moves the cursor forward from p_from to p_to; false when it was no longer at p_from (then nothing
-- the caller worked out from there may be stored) or p_to is not ahead (never backwards: a replay
-- would send old events again).
CREATE FUNCTION papo_outbox_advance(p_name text, p_from bigint, p_to bigint) RETURNS boolean
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    UPDATE outbox_cursors SET last_id = p_to WHERE name = p_name AND last_id = p_from AND p_to > p_from
    RETURNING true;
  $$;
"""

DOWNGRADE_SQL = """
DROP FUNCTION papo_outbox_advance(text, bigint, bigint);
DROP FUNCTION papo_outbox_position(text);

CREATE FUNCTION papo_outbox_claim(p_name text) RETURNS bigint
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
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
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$ UPDATE outbox_cursors SET last_id = greatest(last_id, p_last_id) WHERE name = p_name; $$;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions("papo_outbox_position(text)", "papo_outbox_advance(text, bigint, bigint)")


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
    own_definer_functions("papo_outbox_claim(text)", "papo_outbox_advance(text, bigint)")
