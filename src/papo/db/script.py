"""Run multi-statement SQL (functions with $$ bodies) inside a migration's transaction."""

from __future__ import annotations

from typing import Any

from alembic import op


def execute_script(sql: str) -> None:
    bind = op.get_bind()
    # asyncpg prepares every statement SQLAlchemy sends, and a prepared statement holds only one
    # command; the simple-query protocol takes a whole script. The first statement makes the
    # driver open the migration's transaction, which the script then joins.
    bind.exec_driver_sql("SELECT 1")
    dbapi_connection: Any = bind.connection.dbapi_connection
    dbapi_connection.run_async(lambda connection: connection.execute(sql))
