"""create_app(settings) -> FastAPI: routers, lifespan, middleware."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from typing import Any

import httpx
import structlog
from fastapi import FastAPI

import papo.models  # noqa: F401  (every table, so cross-feature foreign keys resolve)
from papo import __version__
from papo.assistants.api import AssistantsRuntime, usage_router
from papo.assistants.api import router as assistants_router
from papo.assistants.conversation import AssistantReplies
from papo.assistants.replies import ReplyManager
from papo.auth.api import router as auth_router
from papo.auth.deps import AuthRuntime
from papo.auth.invitations import Accounts
from papo.auth.oidc import OidcClients
from papo.auth.principal_cache import PrincipalCache
from papo.auth.tenant_cache import CHANNEL as TENANT_CHANNEL
from papo.auth.tokens import SigningKey, TokenVerifier
from papo.auth.web_sessions import CsrfGuard
from papo.background import Workers
from papo.blobs import open_blob_store
from papo.chat.api import ChatRuntime, send_message
from papo.chat.api import router as chat_router
from papo.chat.attachments import delete_removed_blobs
from papo.chat.attachments_api import AttachmentsRuntime
from papo.chat.attachments_api import router as attachments_router
from papo.chat.legacy_api import router as legacy_chat_router
from papo.chat.post_lane import MessagePostLane
from papo.chat.posts_at_once import PostsAtOnce
from papo.crypto import KeyBox
from papo.db.engine import Database, locate_database
from papo.db.migrate import head_revision
from papo.db.server import async_url
from papo.errors import install_error_handlers
from papo.insights.api import InsightsRuntime
from papo.insights.api import router as insights_router
from papo.insights.sentiment import ChildProcessScorer
from papo.insights.service import SentimentWorker
from papo.knowledge.api import KnowledgeRuntime
from papo.knowledge.api import files_router as chat_files_router
from papo.knowledge.api import router as knowledge_router
from papo.knowledge.embeddings import embedder_from_settings
from papo.knowledge.indexer import KnowledgeIndexer
from papo.knowledge.repository import vectors_available
from papo.netguard import NetGuard
from papo.ops.alerts import Alerts
from papo.ops.api import OpsRuntime
from papo.ops.api import router as ops_router
from papo.ops.logging import configure_logging
from papo.ops.maintenance import maintenance_loop
from papo.ops.metrics import DatabaseMetrics
from papo.ops.middleware import UPLOAD_OVERHEAD, BodyLimitMiddleware, RequestContextMiddleware
from papo.ops.ratelimit import RateLimiter
from papo.realtime.api import RealtimeRuntime
from papo.realtime.api import router as realtime_router
from papo.realtime.consumer import OutboxConsumer
from papo.realtime.hub import EventHub
from papo.routes import add_routes, route_of
from papo.settings import Settings, get_settings
from papo.state import AppState
from papo.web.api import install as install_web
from papo.web.pages import WebRuntime
from papo.webhooks.api import WebhooksRuntime
from papo.webhooks.api import router as webhooks_router
from papo.webhooks.service import WebhookSender
from papo.whatsapp.api import canned_router, conversations_router, teams_router
from papo.whatsapp.api import router as whatsapp_router
from papo.whatsapp.housekeeping import clean_up_loop
from papo.whatsapp.hub import WhatsappHub
from papo.whatsapp.media import MediaDownloads
from papo.whatsapp.seed_api import router as seed_sessions_router
from papo.whatsapp.service import WhatsappRuntime
from papo.whatsapp.transports.registry import load_transports
from papo.whatsapp.webhook import process as process_webhook
from papo.whatsapp.webhook import router as whatsapp_webhook_router

log = structlog.get_logger(__name__)

DESCRIPTION = """
papo is a self-hostable, multi-tenant chat platform.

Authenticate with `Authorization: Bearer <token>`: a token from `POST /api/v1/auth/token`,
`papo token`, or your identity provider (Clerk or any OIDC issuer configured with
`PAPO_AUTH_JWKS_URL`), or a tenant API key `papo_sk_...`. Errors are RFC 9457 problem details.
"""


def create_app(
    settings: Settings | None = None,
    *,
    on_ready: Callable[[AppState], Any] | None = None,
    owns_process: bool = False,
) -> FastAPI:
    """The application. `owns_process`: it is the only one its process runs (`papo serve`), so what
    it built to start is set aside from the garbage collector once it is ready."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        location = locate_database(settings)
        db = Database(location.app_url, pool_size=settings.db_pool_size, observer=DatabaseMetrics())
        read_replica = (
            Database(async_url(settings.read_database_url), pool_size=settings.db_pool_size, read_only=True)
            if settings.read_database_url
            else None
        )
        http = httpx.AsyncClient()
        listen_dsn = location.app_url.set(drivername="postgresql").render_as_string(hide_password=False)
        hub = EventHub(
            db,
            listen_dsn,
            poll_seconds=settings.realtime_poll_seconds,
            queue_size=settings.realtime_queue_size,
            access_check_seconds=settings.realtime_access_check_seconds,
            nats_url=settings.nats_url,
            nats_prefix=settings.nats_prefix,
        )
        workers = Workers()
        whatsapp: WhatsappHub | None = None
        replies: ReplyManager | None = None
        limiter: RateLimiter | None = None
        resources = AsyncExitStack()
        try:
            await db.verify_runtime_role()
            if read_replica is not None:
                await read_replica.verify_runtime_role()
            await db.verify_schema(head_revision())
            signing_key = SigningKey.load(settings)
            verifier = TokenVerifier(settings, signing_key, http)
            keys = KeyBox(settings)
            limiter = RateLimiter.from_settings(settings, listen_dsn)
            replies = ReplyManager(db, settings, keys, hub)
            oidc = OidcClients(http, settings, keys.secret)
            blobs = await open_blob_store(settings, resources)
            whatsapp = WhatsappHub(db, settings, load_transports(settings, http), keys, replies, blobs=blobs)
            replies.on_complete = whatsapp.bot_reply_completed
            knowledge = KnowledgeIndexer(
                db,
                settings,
                blobs,
                embedder_from_settings(settings),
                await vectors_available(db),
                NetGuard.from_settings(settings),
            )
            log.info("knowledge retrieval", mode=knowledge.describe())
            replies.knowledge = knowledge
            state = AppState(
                settings,
                db,
                signing_key,
                verifier,
                http,
                hub,
                keys,
                replies,
                CsrfGuard(keys.secret),
                oidc,
                whatsapp,
                limiter,
                WebhookSender(db, settings, keys),  # its own client, through the outbound guard
                Alerts(db, settings, http),
                Accounts(settings, keys.secret),
                AssistantReplies(settings, keys),
                workers,
                blobs,
                MediaDownloads(db, settings, blobs, whatsapp),
                knowledge,
                PostsAtOnce(db, settings),
                read_replica,
            )
            satisfies_every_feature(state)  # mypy's check that every feature's runtime Protocol holds
            app.state.papo = state
            hub.on_notify(TENANT_CHANNEL, state.tenants.notified)
            state.principals = PrincipalCache(settings.auth_cache_seconds)
            await hub.start()
            await replies.sweep()
            whatsapp.ownership.dsn = listen_dsn
            await whatsapp.ownership.connect()
            workers.start("whatsapp-restore", whatsapp.load_existing_sessions)
            workers.start("whatsapp-heartbeat", whatsapp.heartbeat)
            workers.start("whatsapp-ingest", partial(whatsapp.ingest.run, partial(process_webhook, state)))
            workers.start("whatsapp-media", state.media.run)
            workers.start("knowledge-indexing", knowledge.run)
            workers.start("blob-deletions", partial(delete_removed_blobs, db, blobs, settings.media_poll_seconds))
            workers.start("maintenance", partial(maintenance_loop, db, settings, replies))
            if settings.whatsapp_cleanup_stale_days:
                workers.start("whatsapp-clean-up", partial(clean_up_loop, db, settings, whatsapp))
            if settings.sentiment_enabled:
                sentiment = SentimentWorker(ChildProcessScorer(settings.sentiment_default_language))
                scoring = OutboxConsumer(db, "sentiment", sentiment.score, sentiment.store)
                hub.follow(scoring.wake)
                workers.start("sentiment", scoring.run)
            fan_out = OutboxConsumer(db, "webhooks", state.webhooks.deliveries_for, state.webhooks.fan_out)
            hub.follow(fan_out.wake)
            workers.start("webhook-fan-out", fan_out.run)
            workers.start("webhook-sender", state.webhooks.run)
            workers.start("alerts", state.alerts.run)
            workers.start("loop-lag", state.loop_lag.run)
            if on_ready is not None:
                await on_ready(state)
            if owns_process:
                freeze_startup_heap()
            yield
        finally:
            await workers.stop()
            if whatsapp is not None:
                await whatsapp.shutdown()
            if replies is not None:
                await replies.shutdown()
            await hub.stop()
            await resources.aclose()
            if limiter is not None:
                await limiter.close()
            await http.aclose()
            await db.dispose()
            if read_replica is not None:
                await read_replica.dispose()
            location.stop()

    app = FastAPI(
        title="papo",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        upload_max_bytes=max(settings.media_max_bytes, settings.knowledge_max_bytes) + UPLOAD_OVERHEAD,
    )
    app.add_middleware(RequestContextMiddleware, metrics=settings.metrics_enabled, access_log=settings.access_log)
    # Routes are tried in this order: Meta's deliveries, the busiest path a company has, first.
    add_routes(app, whatsapp_webhook_router)
    add_routes(app, auth_router)
    add_routes(app, chat_router)
    add_routes(app, attachments_router)
    add_routes(app, chat_files_router)
    add_routes(app, legacy_chat_router)
    add_routes(app, realtime_router)
    add_routes(app, assistants_router)
    add_routes(app, usage_router)
    add_routes(app, insights_router)
    add_routes(app, knowledge_router)
    add_routes(app, webhooks_router)
    install_web(app)
    add_routes(app, whatsapp_router)
    add_routes(app, seed_sessions_router)  # seed 004's paths, in its shape
    add_routes(app, conversations_router)
    add_routes(app, canned_router)
    add_routes(app, teams_router)

    add_routes(app, ops_router)
    # before every route: the message POSTs it can answer skip FastAPI's request machinery
    app.router.routes.insert(0, MessagePostLane(route_of(app, send_message)))
    return app


def create_worker_app() -> FastAPI:
    """What each `papo serve --workers N` process runs: settings and logging from the environment."""
    settings = get_settings()
    configure_logging(settings.log_level, json=settings.log_json)
    return create_app(settings, owns_process=True)


def freeze_startup_heap() -> None:
    """What a serving process built to start (routes, models, settings, caches) lives as long as the
    process: moved out of the garbage collector's reach, so its full collections no longer walk it.
    Before, each one stopped the event loop for ~140 ms under load, the slowest answers of
    bench-whatsapp (p99 156 ms; 34–39 ms after). An app of a test is never frozen: tests build many."""
    gc.collect()
    gc.freeze()


def satisfies_every_feature(
    state: AppState,
) -> tuple[
    AuthRuntime,
    ChatRuntime,
    RealtimeRuntime,
    AssistantsRuntime,
    WebhooksRuntime,
    InsightsRuntime,
    WhatsappRuntime,
    OpsRuntime,
    WebRuntime,
    AttachmentsRuntime,
    KnowledgeRuntime,
]:
    """The wiring's object seen as each feature's runtime: mypy checks here that it gives every
    feature what its Protocol asks for."""
    return (state, state, state, state, state, state, state, state, state, state, state)


def app_state_of(app: FastAPI) -> AppState:
    state: AppState = app.state.papo
    return state
