"""Open streams follow the principal: membership, browser-session and API-key changes are announced.

Revision ID: 0022_access_changes
Revises: 0021_whatsapp_ownership

A WebSocket or SSE stream authenticates once and then stays open for hours (a cookie stream for
as long as the browser session lives). Whatever withdraws access therefore announces it, at
commit, on the `papo_access` channel: a role change or removal of a membership, a deleted user,
an ended browser session, a revoked or deleted API key. Every app process listens (NOTIFY reaches
every session of the database), re-checks the streams the notice concerns with
papo_stream_access() and closes those that lost access. The notice carries ids only; what a
stream may still see is always read from the tables.

A browser session deleted after it expired is not announced: the stream closed at its expiry
already, and the hourly clean-up would otherwise announce every expired session.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0022_access_changes"
down_revision = "0021_whatsapp_ownership"

UPGRADE_SQL = """
-- Not a definer function: pg_notify needs no rights, and the trigger runs as whoever made the change.
CREATE FUNCTION papo_announce_access_change() RETURNS trigger
  LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
  AS $$
BEGIN
  IF TG_TABLE_NAME = 'memberships' THEN
    PERFORM pg_notify('papo_access', json_build_object(
      'kind', 'membership', 'tenant_id', OLD.tenant_id, 'user_id', OLD.user_id)::text);
  ELSIF TG_TABLE_NAME = 'users' THEN
    PERFORM pg_notify('papo_access', json_build_object('kind', 'user', 'user_id', OLD.id)::text);
  ELSIF TG_TABLE_NAME = 'web_sessions' THEN
    PERFORM pg_notify('papo_access', json_build_object(
      'kind', 'web_session', 'tenant_id', OLD.tenant_id, 'user_id', OLD.user_id, 'web_session_id', OLD.id)::text);
  ELSIF TG_TABLE_NAME = 'api_keys' THEN
    PERFORM pg_notify('papo_access', json_build_object(
      'kind', 'api_key', 'tenant_id', OLD.tenant_id, 'api_key_id', OLD.id)::text);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER papo_access_membership_changed AFTER UPDATE OF tenant_id, user_id, role ON memberships
  FOR EACH ROW WHEN (OLD.role IS DISTINCT FROM NEW.role OR OLD.tenant_id IS DISTINCT FROM NEW.tenant_id
                     OR OLD.user_id IS DISTINCT FROM NEW.user_id)
  EXECUTE FUNCTION papo_announce_access_change();
CREATE TRIGGER papo_access_membership_removed AFTER DELETE ON memberships
  FOR EACH ROW EXECUTE FUNCTION papo_announce_access_change();
CREATE TRIGGER papo_access_user_removed AFTER DELETE ON users
  FOR EACH ROW EXECUTE FUNCTION papo_announce_access_change();
CREATE TRIGGER papo_access_web_session_ended AFTER DELETE ON web_sessions
  FOR EACH ROW WHEN (OLD.expires_at > now())
  EXECUTE FUNCTION papo_announce_access_change();
CREATE TRIGGER papo_access_api_key_revoked AFTER UPDATE OF revoked_at ON api_keys
  FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
  EXECUTE FUNCTION papo_announce_access_change();
CREATE TRIGGER papo_access_api_key_removed AFTER DELETE ON api_keys
  FOR EACH ROW WHEN (OLD.revoked_at IS NULL)
  EXECUTE FUNCTION papo_announce_access_change();

-- What each open stream may hold now, for a batch of streams of any tenants (the relay's view, like
-- papo_events_after). Per input position: the member's current role (NULL without a membership) and
-- what was lost, if anything: 'api_key' (revoked or gone), 'membership' (removed), 'web_session'
-- (the browser was signed out or its session expired).
CREATE FUNCTION papo_stream_access(p_tenants uuid[], p_users text[], p_web_sessions uuid[], p_api_keys uuid[])
  RETURNS TABLE (access_ordinal bigint, access_role text, access_lost text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    SELECT s.ordinal, m.role::text,
           CASE
             WHEN s.api_key_id IS NOT NULL AND k.id IS NULL THEN 'api_key'
             WHEN s.user_id IS NOT NULL AND m.user_id IS NULL THEN 'membership'
             WHEN s.web_session_id IS NOT NULL AND w.id IS NULL THEN 'web_session'
           END
      FROM unnest(p_tenants, p_users, p_web_sessions, p_api_keys)
             WITH ORDINALITY AS s(tenant_id, user_id, web_session_id, api_key_id, ordinal)
      LEFT JOIN public.memberships m ON m.tenant_id = s.tenant_id AND m.user_id = s.user_id
      LEFT JOIN public.web_sessions w
        ON w.tenant_id = s.tenant_id AND w.id = s.web_session_id AND w.user_id = s.user_id AND w.expires_at > now()
      LEFT JOIN public.api_keys k ON k.tenant_id = s.tenant_id AND k.id = s.api_key_id AND k.revoked_at IS NULL;
  $$;
"""

FUNCTIONS = ["papo_stream_access(uuid[], text[], uuid[], uuid[])"]

DOWNGRADE_SQL = """
DROP FUNCTION papo_stream_access(uuid[], text[], uuid[], uuid[]);
DROP TRIGGER papo_access_api_key_removed ON api_keys;
DROP TRIGGER papo_access_api_key_revoked ON api_keys;
DROP TRIGGER papo_access_web_session_ended ON web_sessions;
DROP TRIGGER papo_access_user_removed ON users;
DROP TRIGGER papo_access_membership_removed ON memberships;
DROP TRIGGER papo_access_membership_changed ON memberships;
DROP FUNCTION papo_announce_access_change();
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(*FUNCTIONS)


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
