"""Token usage per user and day, for admins' reports and the optional daily quota.

Revision ID: 0007_usage
Revises: 0006_branches

Counts only (no content), so a tenant's admins may read every member's row; each member writes only
their own (the reply runner works in the member's context). The quota itself lives in
tenants.settings ("daily_token_quota_per_user").
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0007_usage"
down_revision = "0006_branches"

UPGRADE_SQL = """
CREATE TABLE usage_daily (
  tenant_id uuid NOT NULL,
  user_id text NOT NULL,
  day date NOT NULL,
  replies integer NOT NULL DEFAULT 0,
  prompt_tokens bigint NOT NULL DEFAULT 0,
  completion_tokens bigint NOT NULL DEFAULT 0,
  CONSTRAINT pk_usage_daily PRIMARY KEY (tenant_id, user_id, day),
  CONSTRAINT fk_usage_daily_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT fk_usage_daily_user_id_users FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_usage_daily_tenant_day ON usage_daily (tenant_id, day);
ALTER TABLE usage_daily ENABLE ROW LEVEL SECURITY;
ALTER TABLE usage_daily FORCE ROW LEVEL SECURITY;
CREATE POLICY usage_read ON usage_daily FOR SELECT TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant())
         AND (user_id = (SELECT papo_current_user_id()) OR (SELECT papo_current_role()) IN ('owner', 'admin')));
CREATE POLICY usage_record ON usage_daily FOR INSERT TO papo_runtime
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND user_id = (SELECT papo_current_user_id()));
CREATE POLICY usage_accumulate ON usage_daily FOR UPDATE TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND user_id = (SELECT papo_current_user_id()))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND user_id = (SELECT papo_current_user_id()));
GRANT SELECT, INSERT ON usage_daily TO papo_runtime;
GRANT UPDATE (replies, prompt_tokens, completion_tokens) ON usage_daily TO papo_runtime;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script("DROP TABLE usage_daily;")
