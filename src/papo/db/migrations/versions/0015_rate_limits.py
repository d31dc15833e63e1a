"""Rate limits shared by every server process.

Revision ID: 0015_rate_limits
Revises: 0014_ops_metrics

One row per limited key (a hash: the keys name users and addresses), holding the GCRA "theoretical
arrival time": the moment the key's allowance is whole again. A check is one call, atomic under
the row lock, and uses the database's clock, so processes on different hosts agree. UNLOGGED:
limits are worth nothing after a crash, and they cost no WAL. The runtime role reaches the table
only through the functions.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0015_rate_limits"
down_revision = "0014_ops_metrics"

UPGRADE_SQL = """
CREATE UNLOGGED TABLE rate_limit_buckets (
  key bytea PRIMARY KEY,
  tat double precision NOT NULL  -- epoch seconds
);
ALTER TABLE rate_limit_buckets ENABLE ROW LEVEL SECURITY;
ALTER TABLE rate_limit_buckets FORCE ROW LEVEL SECURITY;
CREATE POLICY rate_limit_owner ON rate_limit_buckets FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON rate_limit_buckets TO papo_auth;

-- p_interval: seconds one unit costs (period / limit); p_period: the window (a full allowance).
-- Returns whether it is allowed, and the bucket's arrival time and the clock, from which the
-- caller derives remaining, reset and retry-after. p_consume false only looks.
CREATE FUNCTION papo_rate_limit(p_key bytea, p_interval double precision, p_period double precision,
                                p_consume boolean, OUT allowed boolean, OUT tat double precision,
                                OUT now_epoch double precision)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  stored double precision;
  next_tat double precision;
BEGIN
  -- A new key's row exists before it is locked, so two first requests cannot both start from empty.
  INSERT INTO rate_limit_buckets (key, tat) VALUES (p_key, 0) ON CONFLICT (key) DO NOTHING;
  SELECT b.tat INTO stored FROM rate_limit_buckets b WHERE b.key = p_key FOR UPDATE;
  now_epoch := extract(epoch FROM clock_timestamp());
  tat := greatest(stored, now_epoch);
  next_tat := tat + p_interval;
  allowed := next_tat - p_period <= now_epoch;
  IF allowed AND p_consume THEN
    UPDATE rate_limit_buckets SET tat = next_tat WHERE key = p_key;
    tat := next_tat;
  END IF;
END
$$;

-- Buckets whose allowance is whole again carry no information.
CREATE FUNCTION papo_prune_rate_limits() RETURNS bigint
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    WITH gone AS (DELETE FROM rate_limit_buckets WHERE tat < extract(epoch FROM clock_timestamp()) RETURNING 1)
    SELECT count(*) FROM gone;
  $$;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(
        "papo_rate_limit(bytea, double precision, double precision, boolean)", "papo_prune_rate_limits()"
    )


def downgrade() -> None:
    execute_script(
        "DROP FUNCTION papo_prune_rate_limits();"
        "DROP FUNCTION papo_rate_limit(bytea, double precision, double precision, boolean);"
        "DROP TABLE rate_limit_buckets;"
    )
