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


def own_definer_functions(*signatures: str) -> None:
    """Hand definer functions to papo_auth (they run with its rights) and let only the runtime role
    call them."""
    for signature in signatures:
        execute_script(
            f"ALTER FUNCTION {signature} OWNER TO papo_auth;\n"
            f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC;\n"
            f"GRANT EXECUTE ON FUNCTION {signature} TO papo_runtime;"
        )
