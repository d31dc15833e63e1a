"""Test helpers: a fake identity provider over real HTTP, handles for tenants, members and keys."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import jwt
from aiosmtpd.controller import Controller
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from papo.auth import service as auth_service
from papo.auth.models import Role
from papo.auth.tokens import SigningKey, issue_token
from papo.db.engine import Database, RlsContext
from papo.settings import Settings

EXTERNAL_ISSUER = "https://clerk.test.papo"
WHATSAPP_APP_SECRET = "test-app-secret-" + "9f8e7d"  # test-only
WHATSAPP_VERIFY_TOKEN = "test-verify-" + "token"  # test-only
METRICS_TOKEN = "test-metrics-" + "scraper"  # test-only
CLERK_WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class JsonHandler(BaseHTTPRequestHandler):
    """Request handler base for the fake servers below: JSON answers, no access log."""

    def _json(self, body: dict[str, Any], status: int = 200) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


def serve_in_thread(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    """A real HTTP server on a free local port, answering from a daemon thread."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass
class ReceivedWebhook:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


class WebhookReceiver:
    """A tenant's webhook endpoint over real HTTP: records every POST and answers with the next of
    `answers` (then 204), so tests can make it fail a few times first."""

    def __init__(self) -> None:
        self.received: list[ReceivedWebhook] = []
        self.answers: list[int] = []
        receiver = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append(
                    ReceivedWebhook(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                status = receiver.answers.pop(0) if receiver.answers else 204
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.server = serve_in_thread(Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[ReceivedWebhook]:
        async with asyncio.timeout(seconds):
            while len(self.received) < count:  # noqa: ASYNC110  (the server thread appends)
                await asyncio.sleep(0.02)
        return self.received


class FakeIdentityProvider:
    """An OIDC/Clerk-like issuer: serves its JWKS over real HTTP and signs tokens; keys can rotate."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.fetches = 0
        self.rotate()
        provider = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                self._json(provider.jwks())

        self.server = serve_in_thread(Handler)

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/.well-known/jwks.json"

    def rotate(self) -> str:
        kid = "kid-" + secrets.token_hex(4)
        self.keys.append((kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        return kid

    def jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.keys:
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return {"keys": keys}

    def token(self, claims: dict[str, Any], *, kid: str | None = None, key: Any = None) -> str:
        kid = kid or self.keys[-1][0]
        signing_key = key or dict(self.keys)[kid]
        return jwt.encode(claims, signing_key, algorithm="RS256", headers={"kid": kid})

    def close(self) -> None:
        self.server.shutdown()


@dataclass
class Member:
    tenant_id: uuid.UUID
    user_id: str
    role: str
    email: str
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@dataclass
class ApiKeyHandle:
    tenant_id: uuid.UUID
    id: uuid.UUID
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class TenantHandle:
    id: uuid.UUID
    db: Database
    settings: Settings
    members: list[Member] = field(default_factory=list)

    async def member(self, role: Role = Role.member, *, email: str | None = None) -> Member:
        email = email or f"{role.value}-{secrets.token_hex(4)}@example.com"
        password = secrets.token_urlsafe(12)
        async with self.db.transaction(RlsContext(self.id, None, Role.owner.value)) as session:
            user_id, _ = await auth_service.add_member(
                session, email=email, name=email.split("@")[0], password=password, role=role
            )
        token, _ = issue_token(
            self.settings, SigningKey.load(self.settings), tenant_id=self.id, user_id=user_id, role=role.value
        )
        member = Member(self.id, user_id, role.value, email, password, token)
        self.members.append(member)
        return member

    async def api_key(self, name: str = "back-office") -> ApiKeyHandle:
        async with self.db.transaction(RlsContext(self.id, None, Role.owner.value)) as session:
            key, plaintext = await auth_service.create_api_key(session, self.id, name, None)
        return ApiKeyHandle(self.id, key.id, plaintext)


async def create_session(client: httpx.AsyncClient, who: Member, title: str = "chat") -> dict[str, Any]:
    """A plain chat (no assistant answers)."""
    response = await client.post("/api/v1/sessions", json={"title": title, "assistant_id": None}, headers=who.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def send(client: httpx.AsyncClient, who: Member, session_id: str, content: str) -> dict[str, Any]:
    response = await client.post(
        f"/api/v1/sessions/{session_id}/messages", json={"content": content}, headers=who.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


class FakeOidcProvider:
    """An OpenID Connect provider over real HTTP (discovery, authorize, token, JWKS) that signs in
    whoever the test says. It checks what a real one checks: client credentials, redirect URI, the
    PKCE verifier against the challenge, single-use codes."""

    client_id = "papo-test-client"
    client_secret = "papo-test-secret"  # test-only credential of the fake provider

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.identity: dict[str, Any] = {"email": "someone@example.com", "email_verified": True, "name": "Someone"}
        self.codes: dict[str, dict[str, str]] = {}
        provider = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                query = dict(parse_qsl(url.query))
                if url.path == "/.well-known/openid-configuration":
                    self._json(provider.discovery())
                elif url.path == "/jwks":
                    jwk = json.loads(RSAAlgorithm.to_jwk(provider.key.public_key()))
                    self._json({"keys": [{**jwk, "kid": "oidc-1", "alg": "RS256", "use": "sig"}]})
                elif url.path == "/authorize":
                    code = secrets.token_urlsafe(16)
                    provider.codes[code] = query
                    target = f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
                    self.send_response(302)
                    self.send_header("location", target)
                    self.end_headers()
                else:
                    self._json({"error": "not_found"}, 404)

            def do_POST(self) -> None:
                form = dict(parse_qsl(self.rfile.read(int(self.headers["content-length"])).decode()))
                asked = provider.codes.pop(form.get("code", ""), None)
                credentials = base64.b64encode(f"{provider.client_id}:{provider.client_secret}".encode()).decode()
                challenge = (
                    base64.urlsafe_b64encode(hashlib.sha256(form.get("code_verifier", "").encode()).digest())
                    .rstrip(b"=")
                    .decode()
                )
                if (
                    asked is None
                    or self.headers.get("authorization") != f"Basic {credentials}"
                    or form.get("redirect_uri") != asked["redirect_uri"]
                    or challenge != asked.get("code_challenge")
                ):
                    self._json({"error": "invalid_grant"}, 400)
                    return
                now = int(time.time())
                claims = {
                    "iss": provider.issuer,
                    "aud": provider.client_id,
                    "sub": "oidc|" + provider.identity["email"],
                    "iat": now,
                    "exp": now + 300,
                    "nonce": asked["nonce"],
                    **provider.identity,
                }
                id_token = jwt.encode(claims, provider.key, algorithm="RS256", headers={"kid": "oidc-1"})
                self._json({"access_token": "at-" + secrets.token_hex(8), "token_type": "Bearer", "id_token": id_token})

        self.server = serve_in_thread(Handler)

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "authorization_endpoint": f"{self.issuer}/authorize",
            "token_endpoint": f"{self.issuer}/token",
            "jwks_uri": f"{self.issuer}/jwks",
        }

    def close(self) -> None:
        self.server.shutdown()


class FakeGraphApi:
    """Meta's Graph API for WhatsApp over real HTTP: a number's details, sending messages, and media
    (a media id's short-lived URL, then the download from it), with the bearer token checked.
    Records what was sent; `media` holds what customers sent (id -> bytes, mime type), and ids in
    `failing_media` answer 500."""

    access_token = "EAAG-test-token"  # test-only credential of the fake API

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.media: dict[str, tuple[bytes, str]] = {}
        self.failing_media: set[str] = set()
        self.uploads: dict[str, tuple[str, bytes]] = {}  # media id -> (content type, multipart body)
        self.downloads = 0
        api = self

        class Handler(JsonHandler):
            def _authorised(self) -> bool:
                if self.headers.get("authorization") == f"Bearer {api.access_token}":
                    return True
                self._json({"error": {"message": "Invalid OAuth access token.", "code": 190}}, 401)
                return False

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                parts = self.path.strip("/").split("/")
                if len(parts) > 1 and parts[-2] == "media-download":
                    return self._download(parts[-1])
                found = api.media.get(parts[-1])
                if parts[-1] in api.failing_media:
                    self._json({"error": {"message": "Service temporarily unavailable", "code": 2}}, 500)
                elif found is not None:
                    body, mime_type = found
                    self._json(
                        {
                            "messaging_product": "whatsapp",
                            "url": f"{api.url}/media-download/{parts[-1]}",
                            "mime_type": mime_type,
                            "sha256": hashlib.sha256(body).hexdigest(),
                            "file_size": len(body),
                            "id": parts[-1],
                        }
                    )
                else:
                    number = parts[-1]
                    self._json({"id": number, "display_phone_number": "+55 11 4000-0000", "verified_name": "Loja"})

            def _download(self, media_id: str) -> None:
                body, mime_type = api.media[media_id]
                api.downloads += 1
                self.send_response(200)
                self.send_header("Content-Type", mime_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                if not self._authorised():
                    return
                raw = self.rfile.read(int(self.headers["content-length"]))
                if self.path.endswith("/media"):  # a multipart upload to the number's media store
                    media_id = "uploaded-" + secrets.token_hex(6)
                    api.uploads[media_id] = (self.headers.get("content-type", ""), raw)
                    return self._json({"id": media_id})
                body = json.loads(raw)
                api.sent.append({"path": self.path, **body})
                wamid = "wamid.graph-" + secrets.token_hex(8)
                self._json(
                    {"messaging_product": "whatsapp", "contacts": [{"wa_id": body["to"]}], "messages": [{"id": wamid}]}
                )

        self.server = serve_in_thread(Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v21.0"

    def close(self) -> None:
        self.server.shutdown()


# What every server process a test starts shares with the in-process test app: it works the same
# queues (webhook deliveries to local receivers, alerts left to the tests).
TEST_SERVER_ENV = {
    "PAPO_OUTBOUND_ALLOWED_TARGETS": "127.0.0.0/8",  # fakes and receivers listen there
    "PAPO_WEBHOOK_FIRST_RETRY_SECONDS": "0.2",
    "PAPO_ALERT_INTERVAL_SECONDS": "3600",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class StaticResolver:
    """DNS for papo.netguard from a table (name -> addresses), without touching /etc/hosts; a name
    not in the table does not resolve. Tests may change the table between calls (rebinding)."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = dict(table or {})
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "name not known")
        return list(self.table[host])


async def start_server(settings: Settings, port: int, **extra_env: str) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "PAPO_DATABASE_URL": settings.database_url or "",
        "PAPO_APP_DATABASE_URL": settings.app_database_url or "",
        "PAPO_DATA_DIR": str(settings.data_dir),
        "PAPO_PUBLIC_URL": settings.public_url or "",
        "PAPO_LOG_LEVEL": "WARNING",
        "PAPO_REALTIME_POLL_SECONDS": "1",
        **TEST_SERVER_ENV,
        **extra_env,
    }
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "papo"),
        "serve",
        "--port",
        str(port),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with httpx.AsyncClient() as http:
        for _ in range(300):
            assert process.returncode is None, "server exited during start-up"
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return process
            await asyncio.sleep(0.1)
    raise AssertionError(f"server on port {port} did not start")


WHATSAPP_SESSIONS = "/api/v1/whatsapp/sessions"


async def wait_status(client: httpx.AsyncClient, who: Member, sid: str, status: str) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            body: dict[str, Any] = (await client.get(f"{WHATSAPP_SESSIONS}/{sid}", headers=who.headers)).json()
            if body["status"] == status:
                return body
            await asyncio.sleep(0.02)


async def create_whatsapp_session(client: httpx.AsyncClient, admin: Member, name: str, **extra: Any) -> dict[str, Any]:
    response = await client.post(
        WHATSAPP_SESSIONS, json={"name": name, "transport": "fake", **extra}, headers=admin.headers
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


class Mailbox:
    """A real SMTP server's inbox (aiosmtpd): what papo sent, parsed."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"

    def bodies_to(self, address: str) -> list[str]:
        return [
            str(m.get_payload(decode=True).decode())  # type: ignore[union-attr]
            for m in self.messages
            if address in str(m["To"])
        ]


@contextmanager
def running_mailbox() -> Iterator[tuple[Mailbox, int]]:
    box, port = Mailbox(), free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


NATS_SERVER_BINARIES = ("nats-server", "/usr/sbin/nats-server")


class NatsServer:
    """A real nats-server with JetStream for the tests (Debian's package; `make test` installs it),
    on its own port and store, which a test may stop and start again (same port, same store)."""

    def __init__(self, store: Path) -> None:
        found = [path for name in NATS_SERVER_BINARIES if (path := shutil.which(name))]
        assert found, "nats-server not found: `make test` installs Debian's nats-server package"
        self.binary = found[0]
        self.store = store
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "nats-server exited during start-up"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            time.sleep(0.05)
        raise AssertionError("nats-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None
