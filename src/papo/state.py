"""What a running papo process holds (the wiring's object on `app.state.papo`). Features never import
this: each reads the attributes it needs through a Protocol of its own (see papo.runtime)."""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from papo.assistants.conversation import AssistantReplies
from papo.assistants.replies import ReplyManager
from papo.auth.invitations import Accounts
from papo.auth.oidc import OidcClients
from papo.auth.principal_cache import PrincipalCache
from papo.auth.tenant_cache import TenantCache
from papo.auth.tokens import SigningKey, TokenVerifier
from papo.auth.web_sessions import CsrfGuard
from papo.background import Workers
from papo.blobs import BlobStore
from papo.chat.posts_at_once import PostsAtOnce
from papo.chat.replies import AnsweredChats
from papo.crypto import KeyBox
from papo.db.engine import Database
from papo.knowledge.indexer import KnowledgeIndexer
from papo.ops.alerts import Alerts
from papo.ops.looplag import LoopLagMonitor
from papo.ops.ratelimit import RateLimiter
from papo.realtime.hub import EventHub
from papo.settings import Settings
from papo.webhooks.service import WebhookSender
from papo.whatsapp.hub import WhatsappHub
from papo.whatsapp.media import MediaDownloads


@dataclass
class AppState:
    settings: Settings
    db: Database
    signing_key: SigningKey
    verifier: TokenVerifier
    http: httpx.AsyncClient
    hub: EventHub
    keys: KeyBox
    replies: ReplyManager
    csrf: CsrfGuard
    oidc: OidcClients
    whatsapp: WhatsappHub
    limiter: RateLimiter
    webhooks: WebhookSender
    alerts: Alerts
    accounts: Accounts
    conversations: AssistantReplies
    workers: Workers
    blobs: BlobStore
    media: MediaDownloads
    knowledge: KnowledgeIndexer
    posts: PostsAtOnce
    read_replica: Database | None = None  # PAPO_READ_DATABASE_URL
    loop_lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    tenants: TenantCache = field(default_factory=TenantCache)
    principals: PrincipalCache = field(default_factory=PrincipalCache)  # off until the app wires it
    answered_chats: AnsweredChats = field(default_factory=AnsweredChats)

    @property
    def reads(self) -> Database:
        """Where history, search and exports read: the replica when one is configured."""
        return self.read_replica or self.db
