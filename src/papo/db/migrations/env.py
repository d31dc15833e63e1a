"""Alembic environment. `papo.db.migrate` hands over an open owner connection in config.attributes."""

from __future__ import annotations

from alembic import context

from papo.auth import models as _auth_models  # noqa: F401  (registers the tables on the metadata)
from papo.chat import models as _chat_models  # noqa: F401
from papo.db.base import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise SystemExit("run migrations with `papo migrate`, which provides the database connection")

context.configure(connection=connection, target_metadata=Base.metadata, transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
