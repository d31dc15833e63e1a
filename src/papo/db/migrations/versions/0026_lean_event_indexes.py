"""Leaner event indexes: a publishing write pays for fewer index entries.

Revision ID: 0026_lean_event_indexes
Revises: 0025_stamped_events

Since 0025 an event is written without its position and stamped right after, so each event is an
INSERT and an UPDATE (the UPDATE cannot be HOT: it changes an indexed column). Every index entry is
paid for twice, and on two cores that work is what a publishing write costs over a plain one
(`make bench-scale`).
- `ix_events_id` and `ix_events_stream` only ever serve positions (`id > n`, `max(id)`, both of
  which imply `id IS NOT NULL`), so they become partial: the INSERT of an unstamped event no longer
  adds an entry to either.
- `ix_events_created_at` only serves retention (deleting by age). Events are appended in time
  order, so a BRIN index answers that as well at a fraction of the cost of a B-tree per row.
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0026_lean_event_indexes"
down_revision = "0025_stamped_events"

UPGRADE_SQL = """
DROP INDEX ix_events_id;
CREATE UNIQUE INDEX ix_events_id ON events (id) WHERE id IS NOT NULL;
DROP INDEX ix_events_stream;
CREATE INDEX ix_events_stream ON events (tenant_id, user_id, id) WHERE id IS NOT NULL;
DROP INDEX ix_events_created_at;
CREATE INDEX ix_events_created_at ON events USING brin (created_at);
"""

DOWNGRADE_SQL = """
DROP INDEX ix_events_created_at;
CREATE INDEX ix_events_created_at ON events (created_at);
DROP INDEX ix_events_stream;
CREATE INDEX ix_events_stream ON events (tenant_id, user_id, id);
DROP INDEX ix_events_id;
CREATE UNIQUE INDEX ix_events_id ON events (id);
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script(DOWNGRADE_SQL)
