"""Every SECURITY DEFINER function searches pg_temp last; sign-in attempts are reserved before the
password is checked.

Revision ID: 0023_definer_search_path
Revises: 0022_access_changes

1. `SET search_path = pg_catalog, public` does not leave pg_temp out: PostgreSQL then searches the
   session's temporary schema FIRST for tables. A runtime role that runs
   `CREATE TEMP TABLE users (...)` made papo_login_candidates, papo_sign_up and the other definer
   functions read (and write) its own rows with papo_auth's rights. Naming pg_temp last puts it
   behind the real tables. The sweep covers every definer function in the schema, whichever
   migration made it; migrations from here on write the safe form themselves (and
   tests/db/test_definer_functions.py checks that every one does). Applied migrations keep their
   text: a migration that ran must not change.

2. Sign-in guards (papo.ops.ratelimit): per account and per address, a count of failed attempts and
   the moment the next attempt may start. An attempt is reserved (counted as a failure) before the
   password is checked, atomically under the row lock, so concurrent guesses cannot all slip
   through a check made before any of them was counted. After `free` failures each further
   attempt waits an exponentially growing, capped delay; a right password clears the account's
   count. UNLOGGED like the rate-limit buckets: worth nothing after a crash.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0023_definer_search_path"
down_revision = "0022_access_changes"

LEGACY = "pg_catalog, public"

# The definer functions that migrations 0001-0019 created with the legacy search_path (read from a
# database at 0019); the downgrade gives exactly these their old setting back, since 0020 onwards
# write the safe form themselves. papo_prune_rate_limits is recreated whole by the downgrade.
LEGACY_DEFINERS = (
    "papo_authenticate_api_key(text)",
    "papo_authenticate_subject(text,boolean,text,text,text,text,boolean,uuid)",
    "papo_login_candidates(text)",
    "papo_add_member(text,text,text,text,text)",
    "papo_sync_user(text,text,text,boolean)",
    "papo_sync_tenant(text,text,uuid,boolean)",
    "papo_sync_membership(text,text,text,uuid,boolean)",
    "papo_operator_revoke_api_key(uuid)",
    "papo_search_candidates(tsquery,timestamp with time zone,uuid,integer)",
    "papo_purge_deleted_sessions(interval)",
    "papo_events_bounds()",
    "papo_prune_events(interval)",
    "papo_default_assistant(uuid,text,text)",
    "papo_sweep_stale_replies(interval)",
    "papo_authenticate_web_session(text)",
    "papo_public_tenant(uuid)",
    "papo_sign_up(uuid,text,text,text,text)",
    "papo_prune_web_sessions()",
    "papo_member_candidates(text)",
    "papo_join_verified(uuid,text,text,text)",
    "papo_active_whatsapp_sessions()",
    "papo_whatsapp_route(text)",
    "papo_claim_webhook_deliveries(integer)",
    "papo_events_after(bigint,integer)",
    "papo_ops_snapshot()",
    "papo_rate_limit(bytea,double precision,double precision,boolean)",
    "papo_outbox_claim(text)",
    "papo_outbox_advance(text,bigint)",
    "papo_outbox_backlog()",
    "papo_store_sentiments(jsonb)",
    "papo_usage(date,date)",
    "papo_webhook_fan_out(jsonb)",
    "papo_claim_webhook_sends(integer,double precision)",
    "papo_record_webhook_attempt(uuid,bigint,boolean,integer,text,timestamp with time zone)",
    "papo_webhook_backlog()",
    "papo_alert_signals(double precision)",
)

# ALTER FUNCTION ... SET replaces only that setting; grants, owner and body stay as they are.
SWEEP_SQL = """
DO $$
DECLARE
  definer regprocedure;
BEGIN
  FOR definer IN
    SELECT p.oid::regprocedure FROM pg_proc p
     WHERE p.prosecdef AND p.pronamespace = 'public'::regnamespace
       AND NOT coalesce('search_path=pg_catalog, public, pg_temp' = ANY (p.proconfig), false)
  LOOP
    EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, public, pg_temp', definer);
  END LOOP;
END
$$;
"""

RESTORE_SQL = """
DO $$
DECLARE
  definer regprocedure;
BEGIN
  FOR definer IN
    SELECT p.oid::regprocedure FROM pg_proc p
     WHERE p.prosecdef
       AND p.oid IN (SELECT to_regprocedure(name) FROM unnest(%(names)s::text[]) AS name)
  LOOP
    EXECUTE format('ALTER FUNCTION %%s SET search_path = %(legacy)s', definer);
  END LOOP;
END
$$;
"""

GUARDS_SQL = """
CREATE UNLOGGED TABLE sign_in_guards (
  key bytea PRIMARY KEY,
  failures integer NOT NULL DEFAULT 0,      -- counted attempts, the ones under way included
  not_before double precision NOT NULL DEFAULT 0,  -- epoch seconds: the next attempt may start then
  forget_at double precision NOT NULL DEFAULT 0    -- epoch seconds: a quiet key starts afresh then
);
ALTER TABLE sign_in_guards ENABLE ROW LEVEL SECURITY;
ALTER TABLE sign_in_guards FORCE ROW LEVEL SECURITY;
CREATE POLICY sign_in_guard_owner ON sign_in_guards FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON sign_in_guards TO papo_auth;

-- One attempt: refused while the key waits (nothing changes), otherwise counted as a failure at once
-- and the next attempt pushed back by the delay this count earns: none for the first p_free - 1,
-- then p_first_delay doubling per failure up to p_max_delay. p_forget: quiet seconds (after the
-- last delay ran out) after which the count starts afresh.
CREATE FUNCTION papo_sign_in_attempt(p_key bytea, p_free integer, p_first_delay double precision,
                                     p_max_delay double precision, p_forget double precision,
                                     OUT allowed boolean, OUT failures integer,
                                     OUT not_before double precision, OUT now_epoch double precision)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  stored sign_in_guards%ROWTYPE;
BEGIN
  -- The row exists before it is locked, so two first attempts cannot both start from nothing.
  INSERT INTO sign_in_guards (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
  SELECT * INTO stored FROM sign_in_guards g WHERE g.key = p_key FOR UPDATE;
  now_epoch := extract(epoch FROM clock_timestamp());
  failures := stored.failures;
  not_before := stored.not_before;
  IF now_epoch >= stored.forget_at THEN
    failures := 0;
    not_before := 0;
  END IF;
  IF now_epoch < not_before THEN
    allowed := false;
    RETURN;
  END IF;
  allowed := true;
  failures := failures + 1;
  not_before := now_epoch + CASE WHEN failures < p_free THEN 0
                            ELSE least(p_max_delay, p_first_delay * power(2, least(failures - p_free, 60))) END;
  UPDATE sign_in_guards g SET failures = papo_sign_in_attempt.failures,
                              not_before = papo_sign_in_attempt.not_before,
                              forget_at = papo_sign_in_attempt.not_before + p_forget
   WHERE g.key = p_key;
END
$$;

-- The outcome of an admitted attempt that was not a wrong password. p_clear: the password was right
-- (the key starts afresh). Otherwise the attempt is taken back: one failure less, and the delay it
-- set (p_not_before, as papo_sign_in_attempt answered it) back to p_started (its now_epoch) unless a
-- later attempt has moved it since.
CREATE FUNCTION papo_sign_in_settle(p_key bytea, p_clear boolean, p_not_before double precision,
                                    p_started double precision) RETURNS void
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    DELETE FROM sign_in_guards g WHERE g.key = p_key AND p_clear;
    UPDATE sign_in_guards g
       SET failures = greatest(g.failures - 1, 0),
           not_before = CASE WHEN g.not_before = p_not_before THEN p_started ELSE g.not_before END
     WHERE g.key = p_key AND NOT p_clear;
  $$;

-- Buckets whose allowance is whole again, and guards gone quiet, carry no information.
CREATE OR REPLACE FUNCTION papo_prune_rate_limits() RETURNS bigint
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    WITH gone AS (DELETE FROM rate_limit_buckets WHERE tat < extract(epoch FROM clock_timestamp()) RETURNING 1),
         quiet AS (DELETE FROM sign_in_guards WHERE forget_at < extract(epoch FROM clock_timestamp()) RETURNING 1)
    SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM quiet);
  $$;
"""

# Migration 0015's text, restored by the downgrade.
LEGACY_PRUNE_SQL = """
CREATE OR REPLACE FUNCTION papo_prune_rate_limits() RETURNS bigint
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    WITH gone AS (DELETE FROM rate_limit_buckets WHERE tat < extract(epoch FROM clock_timestamp()) RETURNING 1)
    SELECT count(*) FROM gone;
  $$;
"""

GUARD_FUNCTIONS = (
    "papo_sign_in_attempt(bytea, integer, double precision, double precision, double precision)",
    "papo_sign_in_settle(bytea, boolean, double precision, double precision)",
)


def upgrade() -> None:
    execute_script(GUARDS_SQL)
    own_definer_functions(*GUARD_FUNCTIONS)
    execute_script(SWEEP_SQL)


def downgrade() -> None:
    execute_script(
        "".join(f"DROP FUNCTION {signature};\n" for signature in GUARD_FUNCTIONS) + "DROP TABLE sign_in_guards;\n"
    )
    execute_script(LEGACY_PRUNE_SQL)
    names = "ARRAY[" + ", ".join(f"'{name}'" for name in LEGACY_DEFINERS) + "]"
    execute_script(RESTORE_SQL % {"names": names, "legacy": LEGACY})
