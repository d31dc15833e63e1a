"""The agents' inbox: teams, and conversations assigned to a team.

Revision ID: 0040_inbox_teams
Revises: 0039_inbox_reads_labels

- `teams` and `team_members`: a company's teams of staff (a member leaving the company leaves its
  teams). Staff read them; owners, admins and API keys write them.
- `chat_sessions.team_id`: the team a conversation is assigned to (beside, or instead of, an agent);
  a deleted team leaves its conversations unassigned.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0040_inbox_teams"
down_revision = "0039_inbox_reads_labels"

STAFF = "tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin', 'agent', 'service')"
WRITERS = "tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin', 'service')"

UPGRADE_SQL = """
CREATE TABLE teams (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  name text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_teams PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_teams_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT ck_teams_name CHECK (length(name) BETWEEN 1 AND 80)
);
CREATE UNIQUE INDEX uq_teams_name ON teams (tenant_id, lower(name));
CREATE TRIGGER trg_teams_updated_at BEFORE UPDATE ON teams FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();

CREATE TABLE team_members (
  tenant_id uuid NOT NULL,
  team_id uuid NOT NULL,
  user_id text NOT NULL,
  CONSTRAINT pk_team_members PRIMARY KEY (tenant_id, team_id, user_id),
  CONSTRAINT fk_team_members_team FOREIGN KEY (tenant_id, team_id) REFERENCES teams (tenant_id, id) ON DELETE CASCADE,
  CONSTRAINT fk_team_members_membership FOREIGN KEY (tenant_id, user_id)
    REFERENCES memberships (tenant_id, user_id) ON DELETE CASCADE
);
CREATE INDEX ix_team_members_user ON team_members (tenant_id, user_id);

ALTER TABLE chat_sessions ADD COLUMN team_id uuid;
ALTER TABLE chat_sessions ADD CONSTRAINT fk_chat_sessions_team FOREIGN KEY (tenant_id, team_id)
  REFERENCES teams (tenant_id, id) ON DELETE SET NULL (team_id);
CREATE INDEX ix_chat_sessions_team ON chat_sessions (tenant_id, team_id) WHERE team_id IS NOT NULL;
GRANT UPDATE (team_id) ON chat_sessions TO papo_runtime;
"""
for table in ("teams", "team_members"):
    UPGRADE_SQL += f"""
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
CREATE POLICY {table}_read ON {table} FOR SELECT TO papo_runtime USING ({STAFF});
CREATE POLICY {table}_insert ON {table} FOR INSERT TO papo_runtime WITH CHECK ({WRITERS});
CREATE POLICY {table}_update ON {table} FOR UPDATE TO papo_runtime USING ({WRITERS}) WITH CHECK ({WRITERS});
CREATE POLICY {table}_delete ON {table} FOR DELETE TO papo_runtime USING ({WRITERS});
GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO papo_runtime;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(
        "ALTER TABLE chat_sessions DROP CONSTRAINT fk_chat_sessions_team;"
        " DROP INDEX ix_chat_sessions_team; ALTER TABLE chat_sessions DROP COLUMN team_id;"
        " DROP TABLE team_members; DROP TABLE teams;"
    )
