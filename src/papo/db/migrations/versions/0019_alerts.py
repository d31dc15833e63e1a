"""Alerts: what the evaluator remembers between rounds (one row per alert: firing or not, since when,
when it last notified), the processes' recent error counts, and the signals read across tenants.

Revision ID: 0019_alerts
Revises: 0018_outbound_webhooks

These are the operator's tables, not any tenant's: they hold counts and short summaries. Row-level
security is on with a policy for the runtime role only. The cross-tenant signals (failed AI
replies, WhatsApp numbers down) come from a definer function that returns summaries, not rows.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0019_alerts"
down_revision = "0018_outbound_webhooks"

UPGRADE_SQL = """
CREATE TABLE alert_states (
  key text PRIMARY KEY,
  rule text NOT NULL,
  firing boolean NOT NULL,
  summary text NOT NULL,
  value double precision,
  since timestamptz NOT NULL DEFAULT now(),
  last_notified_at timestamptz,
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE ops_observations (
  process text NOT NULL,
  name text NOT NULL,
  value double precision NOT NULL,
  observed_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_ops_observations PRIMARY KEY (process, name)
);
ALTER TABLE alert_states ENABLE ROW LEVEL SECURITY;
ALTER TABLE alert_states FORCE ROW LEVEL SECURITY;
ALTER TABLE ops_observations ENABLE ROW LEVEL SECURITY;
ALTER TABLE ops_observations FORCE ROW LEVEL SECURITY;
CREATE POLICY operator ON alert_states FOR ALL TO papo_runtime USING (true) WITH CHECK (true);
CREATE POLICY operator ON ops_observations FOR ALL TO papo_runtime USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON alert_states, ops_observations TO papo_runtime;

CREATE FUNCTION papo_alert_signals(p_window_seconds double precision)
  RETURNS TABLE (key text, rule text, value double precision, summary text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT 'ai_failures', 'ai_failures', count(*)::double precision,
           count(*) || ' AI replies failed in the last '
           || CASE WHEN p_window_seconds < 120 THEN round(p_window_seconds) || ' s'
                   ELSE round(p_window_seconds / 60) || ' min' END
      FROM messages
     WHERE reply_state = 'failed' AND updated_at > now() - make_interval(secs => p_window_seconds)
    UNION ALL
    SELECT 'whatsapp:' || w.id, 'whatsapp_down', 1,
           'WhatsApp number "' || w.name || '" of ' || t.name || ' is '
           || CASE WHEN w.status = 'FAILED' THEN 'FAILED' ELSE 'logged out' END
           || coalesce(': ' || left(w.status_reason, 200), '')
      FROM whatsapp_sessions w JOIN tenants t ON t.id = w.tenant_id
     WHERE w.is_active AND (w.status = 'FAILED' OR (w.status = 'STOPPED' AND w.status_reason LIKE 'logged out%'));
  $$;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions("papo_alert_signals(double precision)")


def downgrade() -> None:
    execute_script(
        "DROP FUNCTION papo_alert_signals(double precision); DROP TABLE ops_observations; DROP TABLE alert_states;"
    )
