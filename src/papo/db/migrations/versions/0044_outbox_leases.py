"""Outbox consumers hold a lease on their cursor instead of a transaction.

Revision ID: 0044_outbox_leases
Revises: 0043_whatsapp_take_in

A consumer (sentiment scoring, outbound webhooks) locked its cursor row and kept that transaction
open while it worked its batch. Sentiment scoring runs in a child process at a low priority, so
under load a batch took seconds, and a transaction that holds a row lock holds an xid: for all that
time no table could prune the row versions that every message leaves behind (a chat's row, the
events' stamps, the webhook queue), and every index lookup walked them
(`make bench-whatsapp`, pg_stat_activity: "idle in transaction" for up to 4 s).

Now a consumer leases its cursor (papo_outbox_lease: a holder and an expiry, in a transaction of its
own), reads its batch, works it with no transaction open, and stores what it found in a short
transaction that first checks it still holds the cursor where it read it (papo_outbox_advance). A
lease expires after its seconds, so a process that died holds nobody up for longer; one that
outlives its lease finds the cursor moved and drops its work.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0044_outbox_leases"
down_revision = "0043_whatsapp_take_in"

UPGRADE_SQL = """
ALTER TABLE outbox_cursors ADD COLUMN holder uuid, ADD COLUMN leased_until timestamptz;
DROP FUNCTION papo_outbox_claim(text);
DROP FUNCTION papo_outbox_advance(text, bigint);

-- The consumer's position, leased to p_holder for p_seconds (renewed when it already holds it);
-- NULL while another holder's lease runs.
CREATE FUNCTION papo_outbox_lease(p_name text, p_holder uuid, p_seconds double precision) RETURNS bigint
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  position bigint;
BEGIN
  INSERT INTO outbox_cursors (name, last_id) VALUES (p_name, 0) ON CONFLICT (name) DO NOTHING;
  UPDATE outbox_cursors
     SET holder = p_holder, leased_until = now() + make_interval(secs => p_seconds)
   WHERE name = p_name AND (holder IS NULL OR holder = p_holder OR leased_until < now())
  RETURNING last_id INTO position;
  RETURN position;
END
$$;

-- Moves the cursor from p_from to p_to if p_holder still holds it there (its lease renewed); false
-- when the lease was lost, and then nothing the holder worked out may be stored.
CREATE FUNCTION papo_outbox_advance(p_name text, p_holder uuid, p_from bigint, p_to bigint, p_seconds double precision)
  RETURNS boolean
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    UPDATE outbox_cursors SET last_id = p_to, leased_until = now() + make_interval(secs => p_seconds)
     WHERE name = p_name AND holder = p_holder AND last_id = p_from
    RETURNING true;
  $$;
"""

DOWNGRADE_SQL = """
DROP FUNCTION papo_outbox_advance(text, uuid, bigint, bigint, double precision);
DROP FUNCTION papo_outbox_lease(text, uuid, double precision);
ALTER TABLE outbox_cursors DROP COLUMN holder, DROP COLUMN leased_until;

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
    own_definer_functions(
        "papo_outbox_lease(text, uuid, double precision)",
        "papo_outbox_advance(text, uuid, bigint, bigint, double precision)",
    )


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
    own_definer_functions("papo_outbox_claim(text)", "papo_outbox_advance(text, bigint)")
