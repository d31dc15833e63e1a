"""An HNSW index for the demo embedder's vectors.

Revision ID: 0034_knowledge_vector_index
Revises: 0033_assistant_tools

`knowledge_embeddings.embedding` has no fixed size (each model has its own), and pgvector indexes
only vectors of one size: the index is on the demo embedder's 256 dimensions, for its rows. A
search for 100,000 passages then visits a few hundred vectors instead of all of them (bench-
knowledge); with pgvector's iterative scan (papo's connections set hnsw.iterative_scan), a
tenant's filter does not starve the results. Only where the server has pgvector (see 0031).
"""

from __future__ import annotations

from papo.db.script import execute_script

revision = "0034_knowledge_vector_index"
down_revision = "0033_assistant_tools"

UPGRADE_SQL = """
DO $$
BEGIN
  IF to_regclass('knowledge_embeddings') IS NOT NULL THEN
    EXECUTE 'CREATE INDEX ix_knowledge_embeddings_demo_hnsw ON knowledge_embeddings '
            'USING hnsw ((embedding::vector(256)) vector_cosine_ops) WHERE model = ''papo-demo-hash-256''';
  END IF;
END
$$;
"""


def upgrade() -> None:
    execute_script(UPGRADE_SQL)


def downgrade() -> None:
    execute_script("DROP INDEX IF EXISTS ix_knowledge_embeddings_demo_hnsw;")
