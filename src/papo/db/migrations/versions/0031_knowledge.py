"""A tenant's knowledge base: collections of documents, split into passages, attached to assistants.

Revision ID: 0031_knowledge
Revises: 0030_whatsapp_queue_statement

- `knowledge_collections`: named sets of documents; an assistant answers from the ones attached to
  it (`assistant_collections`).
- `knowledge_documents`: an uploaded file (its bytes in the blob store under `blob_key`) or a URL;
  `state` pending → indexing → ready, or failed with a readable `error`. Claimed by the indexing
  worker across tenants with papo_claim_knowledge_documents() (SKIP LOCKED with a lease, like media
  downloads); the work runs in the tenant's context.
- `knowledge_chunks`: the document's passages, in order, with the page they came from, and a
  full-text vector folded like messages' (`integracao` finds `integração`).
- `knowledge_embeddings`: one vector per passage and the model that made it — only where the
  server has the `vector` extension (pgvector; the embedded server has it) and the migration was
  not told otherwise (`papo.vector` = 'off' for its session). Without it, retrieval is full text
  alone, and papo says so at start-up and in /readyz.

Row-level security: every member of the tenant reads (replies are written in the member's
context); owners, admins and API keys ('service', the back-office syncing documents) write. A
removed document's blob is queued for deletion by the same trigger as attachments'.
"""

from __future__ import annotations

from papo.db.script import execute_script, own_definer_functions

revision = "0031_knowledge"
down_revision = "0030_whatsapp_queue_statement"

TENANT = "tenant_id = (SELECT papo_current_tenant())"
WRITERS = f"{TENANT} AND (SELECT papo_current_role()) IN ('owner', 'admin', 'service')"


def policies(table: str) -> str:
    return f"""
ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;
ALTER TABLE {table} FORCE ROW LEVEL SECURITY;
CREATE POLICY {table}_read ON {table} FOR SELECT TO papo_runtime USING ({TENANT});
CREATE POLICY {table}_insert ON {table} FOR INSERT TO papo_runtime WITH CHECK ({WRITERS});
CREATE POLICY {table}_update ON {table} FOR UPDATE TO papo_runtime USING ({WRITERS}) WITH CHECK ({WRITERS});
CREATE POLICY {table}_delete ON {table} FOR DELETE TO papo_runtime USING ({WRITERS});
GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO papo_runtime;
"""


TABLES_SQL = """
CREATE TABLE knowledge_collections (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  name text NOT NULL,
  description text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_knowledge_collections PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_knowledge_collections_tenant_id_tenants FOREIGN KEY (tenant_id) REFERENCES tenants (id) ON DELETE CASCADE,
  CONSTRAINT ck_knowledge_collections_name CHECK (length(name) BETWEEN 1 AND 200)
);
CREATE UNIQUE INDEX uq_knowledge_collections_name ON knowledge_collections (tenant_id, lower(name));
CREATE TRIGGER trg_knowledge_collections_updated_at BEFORE UPDATE ON knowledge_collections
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();

CREATE TABLE knowledge_documents (
  tenant_id uuid NOT NULL,
  id uuid NOT NULL,
  collection_id uuid NOT NULL,
  title text NOT NULL,
  source text NOT NULL,
  url text,
  file_name text,
  mime_type text,
  size bigint,
  sha256 text,
  blob_key text,
  state text NOT NULL DEFAULT 'pending',
  error text,
  pages integer,
  chunks integer NOT NULL DEFAULT 0,
  attempts integer NOT NULL DEFAULT 0,
  next_attempt_at timestamptz NOT NULL DEFAULT now(),
  claimed_at timestamptz,
  created_by text,
  created_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT pk_knowledge_documents PRIMARY KEY (tenant_id, id),
  CONSTRAINT fk_knowledge_documents_collection FOREIGN KEY (tenant_id, collection_id)
    REFERENCES knowledge_collections (tenant_id, id) ON DELETE CASCADE,
  CONSTRAINT ck_knowledge_documents_source CHECK (source IN ('upload', 'url')),
  CONSTRAINT ck_knowledge_documents_state CHECK (state IN ('pending', 'indexing', 'ready', 'failed')),
  CONSTRAINT ck_knowledge_documents_origin CHECK (
    (source = 'upload' AND blob_key IS NOT NULL) OR (source = 'url' AND url IS NOT NULL))
);
CREATE INDEX ix_knowledge_documents_collection ON knowledge_documents (tenant_id, collection_id, created_at);
CREATE INDEX ix_knowledge_documents_due ON knowledge_documents (next_attempt_at) WHERE state IN ('pending', 'indexing');
CREATE TRIGGER trg_knowledge_documents_updated_at BEFORE UPDATE ON knowledge_documents
  FOR EACH ROW EXECUTE FUNCTION papo_touch_updated_at();
CREATE TRIGGER tr_knowledge_documents_blob_deletion AFTER DELETE ON knowledge_documents
  FOR EACH ROW EXECUTE FUNCTION papo_queue_blob_deletion();

CREATE TABLE knowledge_chunks (
  tenant_id uuid NOT NULL,
  document_id uuid NOT NULL,
  ordinal integer NOT NULL,
  collection_id uuid NOT NULL,
  page integer,
  content text NOT NULL,
  search_vector tsvector GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, papo_fold(content))) STORED,
  CONSTRAINT pk_knowledge_chunks PRIMARY KEY (tenant_id, document_id, ordinal),
  CONSTRAINT fk_knowledge_chunks_document FOREIGN KEY (tenant_id, document_id)
    REFERENCES knowledge_documents (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX ix_knowledge_chunks_search_vector ON knowledge_chunks USING gin (search_vector);
CREATE INDEX ix_knowledge_chunks_collection ON knowledge_chunks (tenant_id, collection_id);

CREATE TABLE assistant_collections (
  tenant_id uuid NOT NULL,
  assistant_id uuid NOT NULL,
  collection_id uuid NOT NULL,
  CONSTRAINT pk_assistant_collections PRIMARY KEY (tenant_id, assistant_id, collection_id),
  CONSTRAINT fk_assistant_collections_assistant FOREIGN KEY (tenant_id, assistant_id)
    REFERENCES assistants (tenant_id, id) ON DELETE CASCADE,
  CONSTRAINT fk_assistant_collections_collection FOREIGN KEY (tenant_id, collection_id)
    REFERENCES knowledge_collections (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX ix_assistant_collections_collection ON assistant_collections (tenant_id, collection_id);
"""

ACCESS_SQL = """
ALTER TABLE assistant_collections ENABLE ROW LEVEL SECURITY;
ALTER TABLE assistant_collections FORCE ROW LEVEL SECURITY;
CREATE POLICY assistant_collections_read ON assistant_collections FOR SELECT TO papo_runtime USING (<tenant>);
CREATE POLICY assistant_collections_insert ON assistant_collections FOR INSERT TO papo_runtime WITH CHECK (<writers>);
CREATE POLICY assistant_collections_delete ON assistant_collections FOR DELETE TO papo_runtime USING (<writers>);
GRANT SELECT, INSERT, DELETE ON assistant_collections TO papo_runtime;

CREATE POLICY knowledge_document_claim ON knowledge_documents FOR ALL TO papo_auth USING (true) WITH CHECK (true);
GRANT SELECT, UPDATE ON knowledge_documents TO papo_auth;

-- The documents due for indexing (and ones whose process died two minutes into them), across tenants.
CREATE FUNCTION papo_claim_knowledge_documents(p_limit integer)
  RETURNS TABLE (knowledge_tenant_id uuid, knowledge_document_id uuid, knowledge_attempts integer)
  LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp
  AS $$
    UPDATE knowledge_documents d
       SET state = 'indexing', claimed_at = now(), attempts = d.attempts + 1,
           next_attempt_at = now() + interval '2 minutes'
     WHERE (d.tenant_id, d.id) IN (
       SELECT c.tenant_id, c.id FROM knowledge_documents c
        WHERE c.state IN ('pending', 'indexing') AND c.next_attempt_at <= now()
        ORDER BY c.next_attempt_at LIMIT least(p_limit, 50) FOR UPDATE SKIP LOCKED)
    RETURNING d.tenant_id, d.id, d.attempts;
  $$;

-- pgvector when the server has it and the migration was not told to do without.
DO $$
BEGIN
  IF coalesce(current_setting('papo.vector', true), '') <> 'off'
     AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
    BEGIN
      CREATE EXTENSION IF NOT EXISTS vector;
    EXCEPTION WHEN insufficient_privilege THEN
      RAISE NOTICE 'papo: the vector extension needs a superuser here; knowledge retrieval uses full text only';
    END;
  END IF;
  IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN
    EXECUTE $table$
      CREATE TABLE knowledge_embeddings (
        tenant_id uuid NOT NULL,
        document_id uuid NOT NULL,
        ordinal integer NOT NULL,
        collection_id uuid NOT NULL,
        model text NOT NULL,
        embedding vector NOT NULL,
        CONSTRAINT pk_knowledge_embeddings PRIMARY KEY (tenant_id, document_id, ordinal),
        CONSTRAINT fk_knowledge_embeddings_chunk FOREIGN KEY (tenant_id, document_id, ordinal)
          REFERENCES knowledge_chunks (tenant_id, document_id, ordinal) ON DELETE CASCADE
      );
      CREATE INDEX ix_knowledge_embeddings_collection ON knowledge_embeddings (tenant_id, collection_id, model);
    $table$;
    EXECUTE $policies$<embedding_policies>$policies$;
  END IF;
END
$$;
"""

UPGRADE_SQL = "\n".join(
    [
        TABLES_SQL,
        *(policies(table) for table in ("knowledge_collections", "knowledge_documents", "knowledge_chunks")),
        ACCESS_SQL.replace("<writers>", WRITERS)
        .replace("<tenant>", TENANT)
        .replace("<embedding_policies>", policies("knowledge_embeddings")),
    ]
)

DEFINERS = ("papo_claim_knowledge_documents(integer)",)


def upgrade() -> None:
    execute_script(UPGRADE_SQL)
    own_definer_functions(*DEFINERS)


def downgrade() -> None:
    execute_script(
        "DROP TABLE IF EXISTS knowledge_embeddings; DROP TABLE assistant_collections; DROP TABLE knowledge_chunks;"
        " DROP TABLE knowledge_documents; DROP TABLE knowledge_collections;"
        " DROP FUNCTION papo_claim_knowledge_documents(integer);"
    )
