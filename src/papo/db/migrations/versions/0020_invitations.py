"""Accounts join tenants by proof: invitations, verified e-mail, external identities by issuer + subject.

Revision ID: 0020_invitations
Revises: 0019_alerts

Before this revision an e-mail address was enough to tie an account to a tenant: adding a member
reused whatever account had that address, so an attacker who signed up anywhere as
`cfo@victim.test` received the victim company's admin role when its operator later added that
address. From here on:

- `users.email_verified_at` says someone proved control of the address (an invitation or
  verification link that reached the mailbox, or an identity provider that marks it verified).
  Only verified addresses are matched across tenants (OIDC sign-in, invitations for accounts that
  already exist).
- Adding a person who already has an account creates an **invitation**: a one-time, expiring
  token bound to (tenant, e-mail, role). No membership exists until it is accepted, and accepting
  for an existing account needs that account's password as well as the token; only a token that
  went to the mailbox (e-mail, or printed for the trusted operator) may reset such an account's
  password, like any "forgot password" link. A token shown to a tenant admin (no SMTP configured)
  proves nothing about the address, so it can neither verify it nor take over an account.
- Each invitation owns an account shell (`invitations.user_id`: no password, no membership) so a
  back-office system can open chats for the invitee at once; when an existing account accepts,
  the shell's chats in that tenant move to it and the shell goes away.
- `users.issuer` names the external issuer whose subject is the user id (NULL: papo's own
  account). A token from issuer X can never speak for a papo account or for issuer Y's subject.
  Accounts created by Clerk webhooks or before this revision are marked '*' and bound to the first
  configured external issuer that presents them. Web OIDC sign-ins are linked by
  (issuer, subject) in `user_identities`; the e-mail is used only the first time, and only when
  both sides have it verified.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0020_invitations"
down_revision = "0019_alerts"

UPGRADE_SQL = """
ALTER TABLE users ADD COLUMN email_verified_at timestamptz;
ALTER TABLE users ADD COLUMN issuer text;
-- The owner is bound by FORCE row-level security too (and may not be superuser): lift it for the backfill.
ALTER TABLE users NO FORCE ROW LEVEL SECURITY;
UPDATE users SET issuer = '*'
 WHERE password_hash IS NULL AND id !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$';
ALTER TABLE users FORCE ROW LEVEL SECURITY;

CREATE TABLE user_identities (
  issuer text NOT NULL,
  subject text NOT NULL,
  user_id text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_user_identities PRIMARY KEY (issuer, subject),
  CONSTRAINT fk_user_identities_user_id_users FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE INDEX ix_user_identities_user_id ON user_identities (user_id);
ALTER TABLE user_identities ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_identities FORCE ROW LEVEL SECURITY;
CREATE POLICY identity_lookup ON user_identities FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, DELETE ON user_identities TO papo_auth;

CREATE TABLE invitations (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  email text NOT NULL,
  role membership_role NOT NULL,
  user_id text NOT NULL,
  token_hash text NOT NULL,
  proves_email boolean NOT NULL,
  invited_by text,
  created_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  accepted_at timestamptz,
  accepted_by text,
  revoked_at timestamptz,
  CONSTRAINT pk_invitations PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_invitations_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT fk_invitations_user_id_users FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX uq_invitations_token_hash ON invitations (token_hash);
CREATE UNIQUE INDEX uq_invitations_pending ON invitations (tenant_id, email)
  WHERE accepted_at IS NULL AND revoked_at IS NULL;
ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY invitation_admin ON invitations FOR ALL TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin', 'service'))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin', 'service'));
CREATE POLICY identity_lookup ON invitations FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT ON invitations TO papo_runtime;
GRANT UPDATE (revoked_at) ON invitations TO papo_runtime;
GRANT SELECT, INSERT, UPDATE, DELETE ON invitations TO papo_auth;
GRANT SELECT, UPDATE, DELETE ON chat_sessions, messages TO papo_auth;
CREATE POLICY identity_lookup ON chat_sessions FOR ALL TO papo_auth USING (true) WITH CHECK (true);
CREATE POLICY identity_lookup ON messages FOR ALL TO papo_auth USING (true) WITH CHECK (true);

-- A member an admin removed is not provisioned again by the next token of an outside issuer; an
-- accepted invitation or the provider's own membership event brings them back.
CREATE TABLE membership_removals (
  tenant_id uuid NOT NULL,
  user_id text NOT NULL,
  removed_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_membership_removals PRIMARY KEY (tenant_id, user_id),
  CONSTRAINT fk_membership_removals_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT fk_membership_removals_user_id_users FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE
);
ALTER TABLE membership_removals ENABLE ROW LEVEL SECURITY;
ALTER TABLE membership_removals FORCE ROW LEVEL SECURITY;
CREATE POLICY membership_removal_admin ON membership_removals FOR ALL TO papo_runtime
  USING (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'))
  WITH CHECK (tenant_id = (SELECT papo_current_tenant()) AND (SELECT papo_current_role()) IN ('owner', 'admin'));
CREATE POLICY identity_lookup ON membership_removals FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, INSERT, UPDATE, DELETE ON membership_removals TO papo_runtime, papo_auth;

-- Someone other than the shell already owns this address: a password, a membership, an outside
-- identity or a verified address makes it an account a person uses.
CREATE FUNCTION papo_account_for_email(p_email text, p_except text)
  RETURNS TABLE (account_id text, account_has_password boolean, account_verified boolean)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    SELECT u.id, u.password_hash IS NOT NULL, u.email_verified_at IS NOT NULL
      FROM users u
     WHERE u.email = lower(p_email) AND u.id IS DISTINCT FROM p_except
       AND (u.password_hash IS NOT NULL OR u.email_verified_at IS NOT NULL OR u.issuer IS NOT NULL
            OR EXISTS (SELECT 1 FROM memberships m WHERE m.user_id = u.id)
            OR EXISTS (SELECT 1 FROM user_identities i WHERE i.user_id = u.id))
     ORDER BY (u.password_hash IS NOT NULL) DESC, (u.email_verified_at IS NOT NULL) DESC, u.created_at
     LIMIT 1;
  $$;

-- Invite an address to the context tenant (owners, admins, API keys; owners only invite owners).
-- Re-inviting a pending address replaces its token (the old link stops working).
CREATE FUNCTION papo_invite(p_new_id uuid, p_new_user_id text, p_email text, p_role text, p_token_hash text,
                            p_proves_email boolean, p_ttl interval, p_invited_by text)
  RETURNS TABLE (invitation_id uuid, invitation_user_id text, invitation_expires_at timestamptz)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  ctx_tenant uuid := papo_current_tenant();
  ctx_role text := papo_current_role();
  pending invitations%ROWTYPE;
BEGIN
  IF ctx_tenant IS NULL OR ctx_role IS NULL OR ctx_role NOT IN ('owner', 'admin', 'service') THEN
    RAISE EXCEPTION 'only tenant admins can invite' USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF p_role = 'owner' AND ctx_role <> 'owner' THEN
    RAISE EXCEPTION 'only owners can invite owners' USING ERRCODE = 'insufficient_privilege';
  END IF;
  -- An API key acts for members; it cannot mint staff (a leaked key must not make an admin).
  IF ctx_role = 'service' AND p_role IS DISTINCT FROM 'member' THEN
    RAISE EXCEPTION 'API keys invite members only' USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF EXISTS (SELECT 1 FROM memberships m JOIN users u ON u.id = m.user_id
              WHERE m.tenant_id = ctx_tenant AND u.email = lower(p_email)) THEN
    RAISE EXCEPTION 'already a member' USING ERRCODE = 'unique_violation';
  END IF;
  SELECT * INTO pending FROM invitations
   WHERE tenant_id = ctx_tenant AND email = lower(p_email) AND accepted_at IS NULL AND revoked_at IS NULL
   FOR UPDATE;
  IF FOUND THEN
    UPDATE invitations
       SET token_hash = p_token_hash, role = p_role::membership_role, proves_email = p_proves_email,
           expires_at = now() + p_ttl, invited_by = p_invited_by
     WHERE tenant_id = ctx_tenant AND id = pending.id;
    invitation_id := pending.id;
    invitation_user_id := pending.user_id;
  ELSE
    INSERT INTO users (id, email) VALUES (p_new_user_id, lower(p_email));
    INSERT INTO invitations (tenant_id, id, email, role, user_id, token_hash, proves_email, invited_by, expires_at)
      VALUES (ctx_tenant, p_new_id, lower(p_email), p_role::membership_role, p_new_user_id, p_token_hash,
              p_proves_email, p_invited_by, now() + p_ttl);
    invitation_id := p_new_id;
    invitation_user_id := p_new_user_id;
  END IF;
  invitation_expires_at := now() + p_ttl;
  RETURN NEXT;
END
$$;

-- What the acceptance page may show to whoever holds the link (and the hash that an existing
-- account's password is checked against: the token is the key to this row, like an e-mail to a login).
CREATE FUNCTION papo_invitation(p_token_hash text)
  RETURNS TABLE (inv_tenant_id uuid, inv_id uuid, inv_tenant_name text, inv_email text, inv_role text,
                 inv_state text, inv_proves_email boolean, inv_account_id text,
                 inv_account_has_password boolean, inv_account_verified boolean, inv_account_password_hash text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    SELECT i.tenant_id, i.id, t.name, i.email, i.role::text,
           CASE WHEN i.revoked_at IS NOT NULL THEN 'revoked'
                WHEN i.accepted_at IS NOT NULL THEN 'accepted'
                WHEN i.expires_at <= now() THEN 'expired'
                ELSE 'pending' END,
           i.proves_email, a.account_id, coalesce(a.account_has_password, false), coalesce(a.account_verified, false),
           u.password_hash
      FROM invitations i
      JOIN tenants t ON t.id = i.tenant_id
      LEFT JOIN LATERAL papo_account_for_email(i.email, i.user_id) a ON true
      LEFT JOIN users u ON u.id = a.account_id
     WHERE i.token_hash = p_token_hash;
  $$;

-- Accept an invitation. p_account: an existing account whose password the caller has just
-- checked (NULL: the invitee has no account, or resets it with a link that reached the mailbox).
-- p_password_hash: the new account's password, or the reset one. Sets the context to the member.
CREATE FUNCTION papo_accept_invitation(p_token_hash text, p_account text, p_password_hash text, p_name text)
  RETURNS TABLE (accepted_tenant_id uuid, accepted_user_id text, accepted_role text)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  inv invitations%ROWTYPE;
  existing record;
  target text;
  found_role membership_role;
BEGIN
  SELECT * INTO inv FROM invitations WHERE token_hash = p_token_hash FOR UPDATE;
  IF NOT FOUND OR inv.accepted_at IS NOT NULL OR inv.revoked_at IS NOT NULL OR inv.expires_at <= now() THEN
    RAISE EXCEPTION 'invitation not valid' USING ERRCODE = 'invalid_authorization_specification';
  END IF;
  SELECT * INTO existing FROM papo_account_for_email(inv.email, inv.user_id);
  IF p_account IS NOT NULL THEN
    IF existing.account_id IS DISTINCT FROM p_account THEN
      RAISE EXCEPTION 'account does not match the invitation' USING ERRCODE = 'invalid_authorization_specification';
    END IF;
    IF NOT inv.proves_email AND NOT existing.account_verified THEN
      RAISE EXCEPTION 'verify this account''s e-mail first' USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    target := p_account;
  ELSIF existing.account_id IS NOT NULL THEN
    IF NOT inv.proves_email OR p_password_hash IS NULL THEN
      RAISE EXCEPTION 'an account with this e-mail exists' USING ERRCODE = 'unique_violation';
    END IF;
    target := existing.account_id;
    UPDATE users SET password_hash = p_password_hash WHERE id = target;
    DELETE FROM web_sessions WHERE user_id = target;  -- a reset signs every browser out
    IF NOT existing.account_verified THEN
      -- whoever held the unproven account (perhaps someone squatting the address) joined those
      -- workspaces; the person who proves the mailbox does not inherit them
      DELETE FROM memberships WHERE user_id = target;
    END IF;
  ELSE
    IF p_password_hash IS NULL THEN
      RAISE EXCEPTION 'choose a password' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    target := inv.user_id;
    UPDATE users SET password_hash = p_password_hash, name = coalesce(p_name, name) WHERE id = target;
  END IF;
  IF inv.proves_email THEN
    UPDATE users SET email_verified_at = coalesce(email_verified_at, now()) WHERE id = target;
  END IF;
  IF target <> inv.user_id THEN
    UPDATE chat_sessions SET user_id = target WHERE tenant_id = inv.tenant_id AND user_id = inv.user_id;
    UPDATE messages SET user_id = target WHERE tenant_id = inv.tenant_id AND user_id = inv.user_id;
  END IF;
  INSERT INTO memberships (tenant_id, user_id, role) VALUES (inv.tenant_id, target, inv.role)
    ON CONFLICT (tenant_id, user_id) DO NOTHING;
  DELETE FROM membership_removals WHERE tenant_id = inv.tenant_id AND user_id = target;
  SELECT m.role INTO found_role FROM memberships m WHERE m.tenant_id = inv.tenant_id AND m.user_id = target;
  UPDATE invitations SET accepted_at = now(), accepted_by = target WHERE tenant_id = inv.tenant_id AND id = inv.id;
  IF target <> inv.user_id THEN
    UPDATE invitations SET user_id = target WHERE tenant_id = inv.tenant_id AND id = inv.id;
    DELETE FROM users u WHERE u.id = inv.user_id
      AND NOT EXISTS (SELECT 1 FROM invitations o WHERE o.user_id = u.id);
  END IF;
  PERFORM papo_set_context(inv.tenant_id, target, found_role::text);
  accepted_tenant_id := inv.tenant_id;
  accepted_user_id := target;
  accepted_role := found_role::text;
  RETURN NEXT;
END
$$;

-- A self-signed-up member proves the address with a link papo signed; the e-mail must still match.
CREATE FUNCTION papo_mark_email_verified(p_user_id text, p_email text) RETURNS boolean
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
BEGIN
  UPDATE users SET email_verified_at = coalesce(email_verified_at, now())
   WHERE id = p_user_id AND email = lower(p_email);
  RETURN FOUND;
END
$$;

-- Adds a NEW account to the context tenant (the operator's CLI, the demo). An address that an
-- account already uses is refused: that person joins through an invitation. No API calls this.
DROP FUNCTION papo_add_member(text, text, text, text, text);
CREATE FUNCTION papo_add_member(p_new_user_id text, p_email text, p_name text, p_password_hash text, p_role text)
  RETURNS TABLE (member_user_id text, member_created boolean)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  ctx_tenant uuid := papo_current_tenant();
  ctx_role text := papo_current_role();
  existing_member text;
BEGIN
  IF ctx_tenant IS NULL OR ctx_role IS NULL OR ctx_role NOT IN ('owner', 'admin', 'service') THEN
    RAISE EXCEPTION 'only tenant admins can add members' USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF p_role = 'owner' AND ctx_role <> 'owner' THEN
    RAISE EXCEPTION 'only owners can add owners' USING ERRCODE = 'insufficient_privilege';
  END IF;
  SELECT u.id INTO existing_member FROM users u JOIN memberships m ON m.user_id = u.id
   WHERE m.tenant_id = ctx_tenant AND u.email = lower(p_email)
   ORDER BY m.created_at LIMIT 1;
  IF existing_member IS NOT NULL THEN
    IF p_role IS NOT NULL THEN
      UPDATE memberships SET role = p_role::membership_role WHERE tenant_id = ctx_tenant AND user_id = existing_member;
    END IF;
    member_user_id := existing_member;
    member_created := false;
    RETURN NEXT;
    RETURN;
  END IF;
  IF EXISTS (SELECT 1 FROM papo_account_for_email(p_email, NULL)) THEN
    RAISE EXCEPTION 'an account with this e-mail exists' USING ERRCODE = 'unique_violation';
  END IF;
  -- The operator (the CLI: an owner context with no user) vouches for the address it types.
  INSERT INTO users (id, email, name, password_hash, email_verified_at)
    VALUES (p_new_user_id, lower(p_email), p_name, p_password_hash,
            CASE WHEN papo_current_user_id() IS NULL AND ctx_role = 'owner' THEN now() END);
  INSERT INTO memberships (tenant_id, user_id, role)
    VALUES (ctx_tenant, p_new_user_id, coalesce(p_role, 'member')::membership_role);
  member_user_id := p_new_user_id;
  member_created := true;
  RETURN NEXT;
END
$$;

-- Outside tokens: the subject is bound to one issuer, the e-mail is stored only when verified.
DROP FUNCTION papo_authenticate_subject(text, boolean, text, text, text, text, boolean, uuid);
CREATE FUNCTION papo_authenticate_subject(
    p_tenant_ref text, p_tenant_is_external boolean, p_user_id text, p_email text, p_name text,
    p_role text, p_provision boolean, p_new_tenant_id uuid, p_issuer text)
  RETURNS TABLE (subject_tenant_id uuid, subject_user_id text, subject_role text)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  found_tenant uuid;
  found_role membership_role;
  found_issuer text;
BEGIN
  IF p_issuer IS NOT NULL THEN
    SELECT u.issuer INTO found_issuer FROM users u WHERE u.id = p_user_id;
    IF FOUND THEN
      IF found_issuer IS NULL OR (found_issuer <> '*' AND found_issuer <> p_issuer) THEN
        RETURN;  -- papo's own account, or another issuer's subject
      END IF;
      IF found_issuer = '*' THEN
        UPDATE users SET issuer = p_issuer WHERE id = p_user_id;
      END IF;
    END IF;
  END IF;

  IF p_tenant_is_external THEN
    SELECT t.id INTO found_tenant FROM tenants t WHERE t.external_id = p_tenant_ref;
    IF NOT FOUND THEN
      IF NOT p_provision THEN RETURN; END IF;
      INSERT INTO tenants (id, name, external_id) VALUES (p_new_tenant_id, p_tenant_ref, p_tenant_ref)
        ON CONFLICT (external_id) DO NOTHING;
      SELECT t.id INTO found_tenant FROM tenants t WHERE t.external_id = p_tenant_ref;
    END IF;
  ELSE
    SELECT t.id INTO found_tenant FROM tenants t WHERE t.id = p_tenant_ref::uuid;
    IF NOT FOUND THEN RETURN; END IF;
  END IF;

  SELECT m.role INTO found_role FROM memberships m
   WHERE m.tenant_id = found_tenant AND m.user_id = p_user_id;
  IF NOT FOUND THEN
    IF NOT p_provision THEN RETURN; END IF;
    IF EXISTS (SELECT 1 FROM membership_removals r WHERE r.tenant_id = found_tenant AND r.user_id = p_user_id) THEN
      RETURN;  -- an admin removed this member; their provider's token does not override that
    END IF;
    INSERT INTO users (id, email, name, issuer, email_verified_at)
      VALUES (p_user_id, lower(p_email), p_name, p_issuer, CASE WHEN p_email IS NOT NULL THEN now() END)
      ON CONFLICT (id) DO NOTHING;
    INSERT INTO memberships (tenant_id, user_id, role)
      VALUES (found_tenant, p_user_id, coalesce(p_role, 'member')::membership_role)
      ON CONFLICT (tenant_id, user_id) DO NOTHING;
    SELECT m.role INTO found_role FROM memberships m
     WHERE m.tenant_id = found_tenant AND m.user_id = p_user_id;
  ELSIF p_provision AND (
      (p_role = 'admin' AND found_role IN ('member', 'agent'))
      OR (p_role = 'member' AND found_role = 'admin')) THEN
    UPDATE memberships m SET role = p_role::membership_role
     WHERE m.tenant_id = found_tenant AND m.user_id = p_user_id;
    found_role := p_role::membership_role;
  END IF;

  PERFORM papo_set_context(found_tenant, p_user_id, found_role::text);
  subject_tenant_id := found_tenant;
  subject_user_id := p_user_id;
  subject_role := found_role::text;
  RETURN NEXT;
END
$$;

-- Clerk webhooks: users they create are outside subjects ('*': bound at their first token), and
-- only a verified address is kept.
CREATE OR REPLACE FUNCTION papo_sync_user(p_user_id text, p_email text, p_name text, p_deleted boolean)
  RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
BEGIN
  IF p_deleted THEN
    DELETE FROM users WHERE id = p_user_id AND issuer IS NOT NULL;
    RETURN;
  END IF;
  IF EXISTS (SELECT 1 FROM users WHERE id = p_user_id AND issuer IS NULL) THEN
    RETURN;  -- papo's own account: an outside event cannot rewrite it
  END IF;
  INSERT INTO users (id, email, name, issuer, email_verified_at)
    VALUES (p_user_id, lower(p_email), p_name, '*', CASE WHEN p_email IS NOT NULL THEN now() END)
    ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name,
      email_verified_at = CASE WHEN EXCLUDED.email IS NOT DISTINCT FROM users.email THEN users.email_verified_at
                               ELSE EXCLUDED.email_verified_at END;
END
$$;

CREATE OR REPLACE FUNCTION papo_sync_membership(
    p_external_tenant_id text, p_user_id text, p_role text, p_new_tenant_id uuid, p_deleted boolean)
  RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  found_tenant uuid;
BEGIN
  IF EXISTS (SELECT 1 FROM users WHERE id = p_user_id AND issuer IS NULL) THEN
    RETURN;  -- papo's own account: memberships come from invitations, not outside events
  END IF;
  IF p_deleted THEN
    DELETE FROM memberships m USING tenants t
     WHERE t.external_id = p_external_tenant_id AND m.tenant_id = t.id AND m.user_id = p_user_id;
    RETURN;
  END IF;
  INSERT INTO tenants (id, name, external_id) VALUES (p_new_tenant_id, p_external_tenant_id, p_external_tenant_id)
    ON CONFLICT (external_id) DO NOTHING;
  SELECT t.id INTO found_tenant FROM tenants t WHERE t.external_id = p_external_tenant_id;
  INSERT INTO users (id, issuer) VALUES (p_user_id, '*') ON CONFLICT (id) DO NOTHING;
  INSERT INTO memberships (tenant_id, user_id, role) VALUES (found_tenant, p_user_id, p_role::membership_role)
    ON CONFLICT (tenant_id, user_id) DO UPDATE
      SET role = CASE WHEN memberships.role = 'owner' THEN memberships.role ELSE EXCLUDED.role END;
  DELETE FROM membership_removals WHERE tenant_id = found_tenant AND user_id = p_user_id;
END
$$;

-- Web sign-in through Google/OIDC: the account linked to (issuer, subject), else the accounts
-- whose address papo has seen verified.
DROP FUNCTION papo_member_candidates(text);
CREATE FUNCTION papo_member_candidates(p_issuer text, p_subject text, p_email text)
  RETURNS TABLE (candidate_user_id text, candidate_tenant_id uuid, candidate_role text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    WITH linked AS (SELECT user_id FROM user_identities WHERE issuer = p_issuer AND subject = p_subject),
    chosen AS (
      SELECT user_id AS id FROM linked
      UNION ALL
      SELECT u.id FROM users u
       WHERE NOT EXISTS (SELECT 1 FROM linked)
         AND u.email = lower(p_email) AND u.email_verified_at IS NOT NULL
    )
    SELECT c.id, m.tenant_id, m.role::text
      FROM chosen c JOIN memberships m ON m.user_id = c.id
     ORDER BY m.created_at;
  $$;

CREATE FUNCTION papo_link_identity(p_issuer text, p_subject text, p_user_id text) RETURNS void
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    INSERT INTO user_identities (issuer, subject, user_id) VALUES (p_issuer, p_subject, p_user_id)
      ON CONFLICT (issuer, subject) DO NOTHING;
  $$;

DROP FUNCTION papo_join_verified(uuid, text, text, text);
CREATE FUNCTION papo_join_verified(p_tenant uuid, p_new_user_id text, p_email text, p_name text,
                                   p_issuer text, p_subject text)
  RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
DECLARE
  member_id text;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = p_tenant AND coalesce((settings->>'signup_open')::boolean, false)) THEN
    RAISE EXCEPTION 'sign-up is closed' USING ERRCODE = 'insufficient_privilege';
  END IF;
  SELECT user_id INTO member_id FROM user_identities WHERE issuer = p_issuer AND subject = p_subject;
  IF member_id IS NULL THEN
    SELECT id INTO member_id FROM users WHERE email = lower(p_email) AND email_verified_at IS NOT NULL
     ORDER BY (password_hash IS NOT NULL) DESC, created_at LIMIT 1;
  END IF;
  IF member_id IS NULL THEN
    INSERT INTO users (id, email, name, email_verified_at) VALUES (p_new_user_id, lower(p_email), p_name, now());
    member_id := p_new_user_id;
  END IF;
  INSERT INTO user_identities (issuer, subject, user_id) VALUES (p_issuer, p_subject, member_id)
    ON CONFLICT (issuer, subject) DO NOTHING;
  INSERT INTO memberships (tenant_id, user_id, role) VALUES (p_tenant, member_id, 'member')
    ON CONFLICT (tenant_id, user_id) DO NOTHING;
  RETURN member_id;
END
$$;

-- A self sign-up may not take an address another account uses (password or not).
CREATE OR REPLACE FUNCTION papo_sign_up(p_tenant uuid, p_new_user_id text, p_email text, p_name text,
                                        p_password_hash text)
  RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = p_tenant AND coalesce((settings->>'signup_open')::boolean, false)) THEN
    RAISE EXCEPTION 'sign-up is closed' USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF EXISTS (SELECT 1 FROM papo_account_for_email(p_email, NULL)) THEN
    RAISE EXCEPTION 'an account with this e-mail exists' USING ERRCODE = 'unique_violation';
  END IF;
  INSERT INTO users (id, email, name, password_hash) VALUES (p_new_user_id, lower(p_email), p_name, p_password_hash);
  INSERT INTO memberships (tenant_id, user_id, role) VALUES (p_tenant, p_new_user_id, 'member');
  RETURN p_new_user_id;
END
$$;
"""

FUNCTIONS = [
    "papo_account_for_email(text, text)",
    "papo_invite(uuid, text, text, text, text, boolean, interval, text)",
    "papo_invitation(text)",
    "papo_accept_invitation(text, text, text, text)",
    "papo_mark_email_verified(text, text)",
    "papo_add_member(text, text, text, text, text)",
    "papo_authenticate_subject(text, boolean, text, text, text, text, boolean, uuid, text)",
    "papo_sync_user(text, text, text, boolean)",
    "papo_sync_membership(text, text, text, uuid, boolean)",
    "papo_member_candidates(text, text, text)",
    "papo_link_identity(text, text, text)",
    "papo_join_verified(uuid, text, text, text, text, text)",
    "papo_sign_up(uuid, text, text, text, text)",
]


DOWNGRADE_SQL = """
DROP FUNCTION papo_join_verified(uuid, text, text, text, text, text);
DROP FUNCTION papo_link_identity(text, text, text);
DROP FUNCTION papo_member_candidates(text, text, text);
DROP FUNCTION papo_authenticate_subject(text, boolean, text, text, text, text, boolean, uuid, text);
DROP FUNCTION papo_add_member(text, text, text, text, text);
DROP FUNCTION papo_mark_email_verified(text, text);
DROP FUNCTION papo_accept_invitation(text, text, text, text);
DROP FUNCTION papo_invitation(text);
DROP FUNCTION papo_invite(uuid, text, text, text, text, boolean, interval, text);
DROP POLICY identity_lookup ON chat_sessions;
DROP POLICY identity_lookup ON messages;
REVOKE SELECT, UPDATE, DELETE ON chat_sessions, messages FROM papo_auth;
DROP TABLE invitations;
DROP TABLE user_identities;
DROP TABLE membership_removals;

CREATE FUNCTION papo_authenticate_subject(
    p_tenant_ref text, p_tenant_is_external boolean, p_user_id text, p_email text, p_name text,
    p_role text, p_provision boolean, p_new_tenant_id uuid)
  RETURNS TABLE (subject_tenant_id uuid, subject_user_id text, subject_role text)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  found_tenant uuid;
  found_role membership_role;
BEGIN
  IF p_tenant_is_external THEN
    SELECT t.id INTO found_tenant FROM tenants t WHERE t.external_id = p_tenant_ref;
    IF NOT FOUND THEN
      IF NOT p_provision THEN RETURN; END IF;
      INSERT INTO tenants (id, name, external_id) VALUES (p_new_tenant_id, p_tenant_ref, p_tenant_ref)
        ON CONFLICT (external_id) DO NOTHING;
      SELECT t.id INTO found_tenant FROM tenants t WHERE t.external_id = p_tenant_ref;
    END IF;
  ELSE
    SELECT t.id INTO found_tenant FROM tenants t WHERE t.id = p_tenant_ref::uuid;
    IF NOT FOUND THEN RETURN; END IF;
  END IF;

  SELECT m.role INTO found_role FROM memberships m
   WHERE m.tenant_id = found_tenant AND m.user_id = p_user_id;
  IF NOT FOUND THEN
    IF NOT p_provision THEN RETURN; END IF;
    INSERT INTO users (id, email, name) VALUES (p_user_id, lower(p_email), p_name)
      ON CONFLICT (id) DO NOTHING;
    INSERT INTO memberships (tenant_id, user_id, role)
      VALUES (found_tenant, p_user_id, coalesce(p_role, 'member')::membership_role)
      ON CONFLICT (tenant_id, user_id) DO NOTHING;
    SELECT m.role INTO found_role FROM memberships m
     WHERE m.tenant_id = found_tenant AND m.user_id = p_user_id;
  ELSIF p_provision AND (
      (p_role = 'admin' AND found_role IN ('member', 'agent'))
      OR (p_role = 'member' AND found_role = 'admin')) THEN
    UPDATE memberships m SET role = p_role::membership_role
     WHERE m.tenant_id = found_tenant AND m.user_id = p_user_id;
    found_role := p_role::membership_role;
  END IF;

  PERFORM papo_set_context(found_tenant, p_user_id, found_role::text);
  subject_tenant_id := found_tenant;
  subject_user_id := p_user_id;
  subject_role := found_role::text;
  RETURN NEXT;
END
$$;

CREATE FUNCTION papo_add_member(p_new_user_id text, p_email text, p_name text, p_password_hash text, p_role text)
  RETURNS TABLE (member_user_id text, member_created boolean)
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  ctx_tenant uuid := papo_current_tenant();
  ctx_role text := papo_current_role();
  existing_user text;
BEGIN
  IF ctx_tenant IS NULL OR ctx_role IS NULL OR ctx_role NOT IN ('owner', 'admin', 'service') THEN
    RAISE EXCEPTION 'only tenant admins can add members' USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF p_role = 'owner' AND ctx_role <> 'owner' THEN
    RAISE EXCEPTION 'only owners can add owners' USING ERRCODE = 'insufficient_privilege';
  END IF;
  SELECT u.id INTO existing_user FROM users u
    LEFT JOIN memberships m ON m.user_id = u.id AND m.tenant_id = ctx_tenant
   WHERE u.email = lower(p_email)
   ORDER BY (m.user_id IS NOT NULL) DESC, (u.password_hash IS NOT NULL) DESC, u.created_at
   LIMIT 1;
  member_created := existing_user IS NULL;
  IF member_created THEN
    INSERT INTO users (id, email, name, password_hash)
      VALUES (p_new_user_id, lower(p_email), p_name, p_password_hash);
    existing_user := p_new_user_id;
  END IF;
  INSERT INTO memberships (tenant_id, user_id, role)
    VALUES (ctx_tenant, existing_user, coalesce(p_role, 'member')::membership_role)
    ON CONFLICT (tenant_id, user_id) DO UPDATE SET role = coalesce(p_role::membership_role, memberships.role);
  member_user_id := existing_user;
  RETURN NEXT;
END
$$;

CREATE OR REPLACE FUNCTION papo_sync_user(p_user_id text, p_email text, p_name text, p_deleted boolean)
  RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
BEGIN
  IF p_deleted THEN
    DELETE FROM users WHERE id = p_user_id;
    RETURN;
  END IF;
  INSERT INTO users (id, email, name) VALUES (p_user_id, lower(p_email), p_name)
    ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, name = EXCLUDED.name;
END
$$;

CREATE OR REPLACE FUNCTION papo_sync_membership(
    p_external_tenant_id text, p_user_id text, p_role text, p_new_tenant_id uuid, p_deleted boolean)
  RETURNS void
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  found_tenant uuid;
BEGIN
  IF p_deleted THEN
    DELETE FROM memberships m USING tenants t
     WHERE t.external_id = p_external_tenant_id AND m.tenant_id = t.id AND m.user_id = p_user_id;
    RETURN;
  END IF;
  INSERT INTO tenants (id, name, external_id) VALUES (p_new_tenant_id, p_external_tenant_id, p_external_tenant_id)
    ON CONFLICT (external_id) DO NOTHING;
  SELECT t.id INTO found_tenant FROM tenants t WHERE t.external_id = p_external_tenant_id;
  INSERT INTO users (id) VALUES (p_user_id) ON CONFLICT (id) DO NOTHING;
  INSERT INTO memberships (tenant_id, user_id, role) VALUES (found_tenant, p_user_id, p_role::membership_role)
    ON CONFLICT (tenant_id, user_id) DO UPDATE
      SET role = CASE WHEN memberships.role = 'owner' THEN memberships.role ELSE EXCLUDED.role END;
END
$$;

CREATE FUNCTION papo_member_candidates(p_email text)
  RETURNS TABLE (candidate_user_id text, candidate_tenant_id uuid, candidate_role text)
  LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
    SELECT u.id, m.tenant_id, m.role::text
      FROM users u JOIN memberships m ON m.user_id = u.id
     WHERE u.email = lower(p_email)
     ORDER BY m.created_at;
  $$;

CREATE FUNCTION papo_join_verified(p_tenant uuid, p_new_user_id text, p_email text, p_name text)
  RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
DECLARE
  member_id text;
BEGIN
  IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = p_tenant AND coalesce((settings->>'signup_open')::boolean, false)) THEN
    RAISE EXCEPTION 'sign-up is closed' USING ERRCODE = 'insufficient_privilege';
  END IF;
  SELECT id INTO member_id FROM users WHERE email = lower(p_email)
   ORDER BY (password_hash IS NOT NULL) DESC, created_at LIMIT 1;
  IF member_id IS NULL THEN
    INSERT INTO users (id, email, name) VALUES (p_new_user_id, lower(p_email), p_name);
    member_id := p_new_user_id;
  END IF;
  INSERT INTO memberships (tenant_id, user_id, role) VALUES (p_tenant, member_id, 'member')
    ON CONFLICT (tenant_id, user_id) DO NOTHING;
  RETURN member_id;
END
$$;

CREATE OR REPLACE FUNCTION papo_sign_up(p_tenant uuid, p_new_user_id text, p_email text, p_name text, p_password_hash text)
  RETURNS text
  LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public
  AS $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM tenants WHERE id = p_tenant AND coalesce((settings->>'signup_open')::boolean, false)) THEN
    RAISE EXCEPTION 'sign-up is closed' USING ERRCODE = 'insufficient_privilege';
  END IF;
  IF EXISTS (SELECT 1 FROM users WHERE email = lower(p_email) AND password_hash IS NOT NULL) THEN
    RAISE EXCEPTION 'an account with this e-mail exists' USING ERRCODE = 'unique_violation';
  END IF;
  INSERT INTO users (id, email, name, password_hash) VALUES (p_new_user_id, lower(p_email), p_name, p_password_hash);
  INSERT INTO memberships (tenant_id, user_id, role) VALUES (p_tenant, p_new_user_id, 'member');
  RETURN p_new_user_id;
END
$$;

DROP FUNCTION papo_account_for_email(text, text);
ALTER TABLE users DROP COLUMN issuer;
ALTER TABLE users DROP COLUMN email_verified_at;
"""

OLD_FUNCTIONS = [
    "papo_authenticate_subject(text, boolean, text, text, text, text, boolean, uuid)",
    "papo_add_member(text, text, text, text, text)",
    "papo_member_candidates(text)",
    "papo_join_verified(uuid, text, text, text)",
]


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(*FUNCTIONS)


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
    own_definer_functions(*OLD_FUNCTIONS)
