"""The one place papo reads its configuration from (environment variables prefixed PAPO_, and `.env`)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PAPO_", env_file=".env", extra="ignore")

    # Database. Absent database_url means: start the embedded PostgreSQL under data_dir.
    database_url: str | None = None
    app_database_url: str | None = None
    # Optional read replica (a hot standby of the same database, reached as the runtime role): chat
    # history, search and exports read there; everything else, and every write, goes to the primary.
    read_database_url: str | None = None
    # The runtime login role papo migrate creates when app_database_url is unset. Unset: papo_app
    # for the database `papo`, papo_app_<database> otherwise, so installs sharing a server never
    # share one. papo migrate also leaves CONNECT on its database to that role only (and the owner).
    app_role: str | None = None
    database_name: str = "papo"
    database_restrict_connect: bool = True
    test_database_url: str | None = None
    db_pool_size: int = 20
    # pgvector for knowledge retrieval where the server has it (read by `papo migrate`).
    knowledge_vectors: bool = True
    # How long a process remembers who a credential is (see papo.auth.principal_cache); 0 = never.
    auth_cache_seconds: float = 60.0

    # Server
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    # How long an idle keep-alive connection is kept. Longer than the clients' and proxies' own idle
    # timeouts, so the server is not the side that closes: uvicorn's default of 5 s let a busy process
    # close a connection whose next request had already arrived but not yet been read (the client
    # saw its request dropped without an answer: `make bench-whatsapp` under load).
    http_keep_alive_seconds: int = 75
    data_dir: Path = Path(".papo")
    public_url: str | None = None
    log_level: str = "INFO"
    log_json: bool = False
    # One line per request (route, status, latency, tenant, user); never bodies or credentials.
    access_log: bool = True

    # Operations. /metrics answers only with `Authorization: Bearer <metrics_token>` (404 while unset).
    metrics_enabled: bool = True
    metrics_token: str | None = None

    # Rate limits and quotas, shared by every process (in PostgreSQL; in Redis when redis_url is
    # set). 0 switches one off. Sign-in: after that many failed attempts per account / per address
    # each further attempt waits 30 s, doubling per failure up to the max delay; 15 quiet minutes
    # (or, for an account, its right password) start afresh.
    rate_limits_enabled: bool = True
    redis_url: str | None = None
    rate_limit_user_messages_per_minute: int = 60
    rate_limit_api_key_messages_per_minute: int = 600
    rate_limit_user_ai_replies_per_minute: int = 20
    rate_limit_user_ai_replies_per_day: int = 500
    rate_limit_api_key_ai_replies_per_minute: int = 200
    rate_limit_sign_in_failures_per_address: int = 30
    rate_limit_sign_in_failures_per_account: int = 5
    rate_limit_sign_in_failures_per_account_everywhere: int = 100
    rate_limit_sign_in_max_delay_seconds: float = 300.0
    rate_limit_sign_in_address_max_delay_seconds: float = 3600.0
    rate_limit_sign_ups_per_address_per_hour: int = 20
    rate_limit_webhooks_per_address_per_minute: int = 1200

    # Identity
    auth_jwks_url: str | None = None
    auth_issuer: str | None = None
    auth_authorized_parties: Annotated[list[str], NoDecode] = Field(default_factory=list)
    auth_default_tenant: str | None = None
    auth_leeway_seconds: int = 5
    auth_jwks_cache_seconds: int = 600
    clerk_webhook_secret: str | None = None
    jwt_private_key: str | None = None
    token_ttl_seconds: int = 3600
    # How long an invitation link (and an e-mail confirmation link) stays valid.
    invitation_ttl_hours: int = Field(default=72, ge=1, le=24 * 30)
    # Audience (`aud`) that tokens of the external issuer must carry; unchecked when unset.
    auth_audience: str | None = None
    # Browser sign-in with Google and/or one other OpenID Connect provider (any issuer with discovery).
    google_client_id: str | None = None
    google_client_secret: str | None = None
    oidc_issuer: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_label: str = "SSO"

    # Limits on what a client may send.
    max_body_bytes: int = 1024 * 1024
    max_message_bytes: int = 32 * 1024
    max_metadata_bytes: int = 16 * 1024
    max_title_chars: int = 200

    # Realtime: how long events stay replayable, and how much a slow client may fall behind.
    realtime_retention_days: int = 7
    realtime_queue_size: int = 1000
    realtime_heartbeat_seconds: float = 15.0
    realtime_poll_seconds: float = 5.0
    realtime_auth_timeout_seconds: float = 10.0
    realtime_max_frame_bytes: int = 16 * 1024
    # Open streams per member per server process (WebSocket and SSE together; 0 = no cap): a new
    # stream over the cap is refused. A socket may refresh its token (auth frames) this often.
    # Every open stream's access is re-checked this often, besides at once on a role change,
    # removal, sign-out or key revocation.
    realtime_max_streams_per_user: int = 20
    realtime_auth_frames_per_minute: int = 6
    realtime_access_check_seconds: float = 60.0
    # Fan-out between processes through NATS JetStream (e.g. nats://127.0.0.1:4222) instead of
    # PostgreSQL NOTIFY: each process then receives only the tenants its clients follow. Subjects
    # and the stream are named after nats_prefix, so installations can share a NATS server.
    nats_url: str = ""
    nats_prefix: str = Field(default="papo", pattern=r"^[a-z][a-z0-9_]{0,31}$")

    # AI assistants. Defaults for tenants without their own assistant settings; without a base URL
    # or key, papo answers with its built-in, clearly labelled demo assistant.
    openai_base_url: str | None = None
    openai_api_key: str | None = None
    openai_model: str = "gpt-4o-mini"
    # Voice notes to text, through the assistant provider's OpenAI-compatible /audio/transcriptions.
    transcription_model: str = "whisper-1"
    # Key that encrypts provider API keys at rest (Fernet, url-safe base64 of 32 bytes); generated
    # under data_dir when unset. Keep it with your backups: encrypted keys are useless without it.
    secret_key: str | None = None
    # Reply text goes to open pages every flush (live events, no write) and is saved every save.
    reply_flush_seconds: float = 0.05
    reply_save_seconds: float = 1.0
    # What tenant admins may point an assistant at. Hosts: empty = any public host; list the
    # providers' hosts ("api.openai.com", "*.openai.azure.com") to allow only those. Key variables:
    # the only environment variable names an assistant may take its API key from; such a key is sent
    # only to the operator's URL for it (assistant_key_env_urls, JSON {"NAME": "https://…/v1"}), else
    # to openai_base_url, else to OpenAI.
    assistant_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    assistant_key_envs: Annotated[list[str], NoDecode] = Field(default_factory=list)
    assistant_key_env_urls: dict[str, str] = Field(default_factory=dict)
    # URLs tenants set (assistant base URLs, outbound webhooks) may only reach public addresses.
    # Host names ("ollama.internal", "*.corp.example") and ranges ("10.1.2.0/24", "127.0.0.1") listed
    # here are let through even so (a single-company install talking to its own network).
    outbound_allowed_targets: Annotated[list[str], NoDecode] = Field(default_factory=list)
    reply_deadline_seconds: float = 120.0
    reply_max_attempts: int = 3
    # Rounds of tool calls one reply may make before the model must answer with what it has.
    reply_max_tool_steps: int = Field(default=5, ge=0, le=20)
    reply_stale_seconds: float = 20.0
    demo_tokens_per_second: float = 40.0

    # WhatsApp: extra transports as kind=module:Class (the test suite's fake), comma-separated.
    whatsapp_transports: Annotated[list[str], NoDecode] = Field(default_factory=list)
    whatsapp_sends_per_minute: int = 30
    # Every heartbeat a process marks its working sessions seen and takes over running sessions
    # whose process died. A process that does not adopt is not given new sessions either.
    whatsapp_heartbeat_seconds: float = 30.0
    whatsapp_adopt_orphans: bool = True
    # A new session, or one whose process died, goes to the process that runs the fewest; none
    # takes more than this many (0: no cap). When every process is full, a new one fails with why.
    whatsapp_max_sessions_per_process: int = Field(default=0, ge=0)
    # WhatsApp Cloud API: the app secret signs webhooks, the verify token answers Meta's handshake.
    whatsapp_app_secret: str | None = None
    whatsapp_verify_token: str | None = None
    whatsapp_graph_url: str = "https://graph.facebook.com/v21.0"
    # A queued webhook delivery that fails is tried again after whatsapp_webhook_retry_seconds,
    # doubling up to an hour; after whatsapp_webhook_max_attempts it is a dead letter
    # (`papo whatsapp dead-letters`, `papo whatsapp replay`).
    # A session that should be running but that no process holds is started when it is used (a send,
    # its QR code or details); a send waits this long for it to connect.
    whatsapp_load_wait_seconds: float = Field(default=10.0, ge=0)
    # Sessions stopped or failed and idle this many days are deactivated by the periodic clean-up
    # (every maintenance_interval_seconds; 0: only on request), and credential files no active
    # session owns are removed.
    whatsapp_cleanup_stale_days: int = Field(default=30, ge=0)
    whatsapp_webhook_max_attempts: int = Field(default=8, ge=1, le=1000)
    whatsapp_webhook_retry_seconds: float = Field(default=30.0, gt=0)
    # What the bot answers a customer who sends only a file (a photo, a voice note, a document) it
    # cannot read; the conversation then waits for a person.
    whatsapp_text_only_notice: str = (
        "Recebi seu arquivo, mas só consigo ler mensagens de texto. Uma pessoa da equipe vai ver e responder em breve."
    )

    # Knowledge base: documents a tenant's assistants answer from. Passages are embedded with
    # embedding_model at the operator's provider (openai_base_url / openai_api_key); with neither
    # set, papo's demo embedder (word hashing, offline) is used and says so. A document is at most
    # knowledge_max_bytes and knowledge_max_pages; URLs are fetched under the outbound rules.
    # A failing fetch or embeddings call is retried knowledge_max_attempts times, then the
    # document is "failed" with the reason (re-index it to try again).
    embedding_model: str = "text-embedding-3-small"
    # The model's vector size: set it and `papo migrate` builds an HNSW index for its vectors (and
    # the provider is asked for vectors of that size); unset, they are compared one by one.
    embedding_dimensions: int | None = Field(default=None, ge=1, le=2000)
    knowledge_max_bytes: int = Field(default=50 * 1024 * 1024, ge=1)
    knowledge_max_pages: int = Field(default=2000, ge=1)
    knowledge_passage_chars: int = Field(default=1200, ge=200, le=20000)
    knowledge_overlap_chars: int = Field(default=200, ge=0, le=5000)
    knowledge_max_attempts: int = Field(default=4, ge=1, le=50)
    knowledge_retry_seconds: float = Field(default=15.0, gt=0)
    knowledge_poll_seconds: float = Field(default=5.0, gt=0)
    # At most this many passages matching a question's words are ranked (a common word would
    # otherwise make one question rank the whole collection).
    knowledge_text_candidates: int = Field(default=2000, ge=10, le=1_000_000)
    # A passage found only by its vector counts as relevant from this cosine similarity up.
    knowledge_min_similarity: float = Field(default=0.35, ge=-1, le=1)
    # An assistant with collections attached answers from them or says it does not know (the model
    # is not asked, so it cannot guess); on WhatsApp the conversation then goes to a person.
    knowledge_unknown_reply: str = (
        "Não encontrei essa informação nos documentos que tenho, então prefiro não arriscar uma resposta."
    )
    knowledge_handoff_reply: str = (
        "Não encontrei essa informação nos nossos documentos. Vou chamar uma pessoa da equipe para te ajudar."
    )
    # WhatsApp replies drawn from documents end with a short "Fonte: …" line naming them.
    knowledge_whatsapp_sources: bool = True

    # Media (photos, voice notes, videos, documents) kept with their messages: files in a blob store,
    # under data_dir unless an S3-compatible bucket is configured. media_max_bytes caps one file (a
    # larger one is kept as "too large" and not stored); media_quota_bytes caps what one tenant
    # stores in all (0: no cap). Downloads that fail are retried after media_retry_seconds,
    # doubling, media_max_attempts times; then the media is "unavailable".
    media_max_bytes: int = Field(default=100 * 1024 * 1024, ge=1)
    media_quota_bytes: int = Field(default=0, ge=0)
    media_max_attempts: int = Field(default=6, ge=1, le=100)
    media_retry_seconds: float = Field(default=30.0, gt=0)
    media_poll_seconds: float = Field(default=5.0, gt=0)
    # S3-compatible object storage for media (AWS S3, MinIO, Ceph, Cloudflare R2...): set the bucket
    # to use it. Without an endpoint URL, AWS's; without keys, the standard AWS credential chain
    # (environment, profile, instance role). The bucket must exist: papo checks it at start-up.
    media_s3_bucket: str | None = None
    media_s3_endpoint_url: str | None = None
    media_s3_region: str | None = None
    media_s3_access_key_id: str | None = None
    media_s3_secret_access_key: str | None = None
    media_s3_prefix: str = ""  # put before every key, e.g. "papo/" to share a bucket

    # Insights. Sentiment of user and customer messages is scored in the background; text whose
    # language is unclear is taken to be in sentiment_default_language. Estimated AI cost uses
    # ai_prices: model -> [USD per million input tokens, per million output tokens], as JSON.
    sentiment_enabled: bool = True
    sentiment_default_language: str = "pt"
    ai_prices: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "gpt-4o-mini": (0.15, 0.60),
            "gpt-4o": (2.50, 10.00),
            "gpt-4.1": (2.00, 8.00),
            "gpt-4.1-mini": (0.40, 1.60),
            "gpt-4.1-nano": (0.10, 0.40),
            "demo": (0.0, 0.0),
        }
    )

    # Outbound webhooks. Targets inside private networks are refused unless allowed (a single-company
    # install posting to its own intranet): by outbound_allowed_targets, or all of them but cloud
    # metadata services with webhook_allow_private_targets. Failed deliveries are retried with
    # exponential backoff from webhook_first_retry_seconds, for webhook_retry_hours.
    webhook_allow_private_targets: bool = False
    webhook_first_retry_seconds: float = 10.0
    webhook_retry_hours: float = 24.0
    webhook_concurrency: int = 20
    webhook_poll_seconds: float = 2.0

    # Alerts for the operator: a Slack-compatible webhook and/or e-mail through SMTP. One notification
    # when an alert starts, a reminder every alert_repeat_minutes while it lasts, one when it clears.
    alert_webhook_url: str | None = None
    alert_email_to: Annotated[list[str], NoDecode] = Field(default_factory=list)
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_from: str = "papo@localhost"
    smtp_starttls: bool | None = None  # None: use STARTTLS when the server offers it
    alert_interval_seconds: float = 30.0
    alert_repeat_minutes: float = 60.0
    alert_window_minutes: float = 5.0
    alert_server_errors_per_minute: int = 10
    alert_ai_failures: int = 5
    alert_queue_backlog: int = 1000
    alert_queue_age_seconds: float = 300.0

    # How often each process tries the housekeeping sweep (event pruning, deleted-chat purge).
    maintenance_interval_seconds: float = 3600.0

    # Soft-deleted sessions are removed for good after this many days (`papo purge-deleted`).
    deleted_retention_days: int = 30

    @field_validator(
        "auth_authorized_parties",
        "assistant_allowed_hosts",
        "assistant_key_envs",
        "outbound_allowed_targets",
        "whatsapp_transports",
        "alert_email_to",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("outbound_allowed_targets")
    @classmethod
    def _check_targets(cls, value: list[str]) -> list[str]:
        from papo.netguard import Policy  # the guard's own parser, so a typo fails at start-up

        Policy.parse(tuple(value))
        return value

    def environment_secret(self, name: str) -> str | None:
        """A secret an admin referenced by environment-variable name (e.g. an assistant's API key)."""
        return os.environ.get(name) or None

    @property
    def issuer(self) -> str:
        """Issuer of the tokens papo signs itself (built-in accounts)."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")


@lru_cache
def get_settings() -> Settings:
    return Settings()
