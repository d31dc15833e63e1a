"""Retention: remove sessions their owners deleted, once the retention period has passed.

Revision ID: 0003_retention
Revises: 0002_search_candidates

A soft-deleted session (status `deleted`) stays restorable by support for a while and is then
removed for good, with its messages (ON DELETE CASCADE). The sweep crosses tenants, so it runs as a
definer function owned by `papo_auth`, whose policies on chat_sessions let it see and delete only
rows that are already soft-deleted: it cannot touch a live chat.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0003_retention"
down_revision = "0002_search_candidates"

UPGRADE_SQL = """
GRANT SELECT (tenant_id, id, status, deleted_at), DELETE ON chat_sessions TO papo_auth;
CREATE POLICY retention_read ON chat_sessions FOR SELECT TO papo_auth
  USING (status = 'deleted' AND deleted_at IS NOT NULL);
CREATE POLICY retention_delete ON chat_sessions FOR DELETE TO papo_auth
  USING (status = 'deleted' AND deleted_at IS NOT NULL);

CREATE FUNCTION papo_purge_deleted_sessions(p_older_than interval) RETURNS bigint
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    WITH purged AS (
      DELETE FROM chat_sessions
       WHERE status = 'deleted' AND deleted_at < now() - greatest(p_older_than, interval '0')
      RETURNING 1
    )
    SELECT count(*) FROM purged;
  $$;
ALTER FUNCTION papo_purge_deleted_sessions(interval) OWNER TO papo_auth;
REVOKE ALL ON FUNCTION papo_purge_deleted_sessions(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION papo_purge_deleted_sessions(interval) TO papo_runtime;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(
        """
        DROP FUNCTION papo_purge_deleted_sessions(interval);
        DROP POLICY retention_delete ON chat_sessions;
        DROP POLICY retention_read ON chat_sessions;
        REVOKE ALL ON chat_sessions FROM papo_auth;
        """
    )
