"""Unique keys of tenant tables include tenant_id, so the schema can be distributed by tenant.

Revision ID: 0028_tenant_keyed_uniques
Revises: 0027_tenant_event_reads

Citus enforces a unique index of a distributed table only when it includes the distribution column
(tests/db/test_distributable_schema.py checks every key). Three did not:
- events (id): positions come from one sequence, so (id, tenant_id) is as unique; id stays the
  leading column for the relay's `id > n ORDER BY id`.
- web_sessions and invitations (token_hash): looked up by the token before the tenant is known;
  (token_hash, tenant_id) still serves that lookup, and a token hash is 256 random bits.
One cross-tenant rule remains on purpose: a verified WhatsApp number belongs to one tenant only
(uq_whatsapp_sessions_verified_number); docs/scaling.md says how it moves under Citus.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0028_tenant_keyed_uniques"
down_revision = "0027_tenant_event_reads"

UPGRADE_SQL = """
DROP INDEX ix_events_id;
CREATE UNIQUE INDEX ix_events_id ON events (id, tenant_id) WHERE id IS NOT NULL;
DROP INDEX uq_web_sessions_token_hash;
CREATE UNIQUE INDEX uq_web_sessions_token_hash ON web_sessions (token_hash, tenant_id);
DROP INDEX uq_invitations_token_hash;
CREATE UNIQUE INDEX uq_invitations_token_hash ON invitations (token_hash, tenant_id);
"""

DOWNGRADE_SQL = """
DROP INDEX uq_invitations_token_hash;
CREATE UNIQUE INDEX uq_invitations_token_hash ON invitations (token_hash);
DROP INDEX uq_web_sessions_token_hash;
CREATE UNIQUE INDEX uq_web_sessions_token_hash ON web_sessions (token_hash);
DROP INDEX ix_events_id;
CREATE UNIQUE INDEX ix_events_id ON events (id) WHERE id IS NOT NULL;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
