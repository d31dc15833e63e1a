"""Test helpers: a fake identity provider over real HTTP, handles for tenants, members and keys."""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from papo.auth import service as auth_service
from papo.auth.models import Role
from papo.auth.tokens import SigningKey, issue_token
from papo.db.engine import Database, RlsContext
from papo.settings import Settings

EXTERNAL_ISSUER = "https://clerk.test.papo"
CLERK_WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class FakeIdentityProvider:
    """An OIDC/Clerk-like issuer: serves its JWKS over real HTTP and signs tokens; keys can rotate."""

    def __init__(self) -> None:
        self.keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.fetches = 0
        self.rotate()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                provider.fetches += 1
                body = json.dumps(provider.jwks()).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

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
    response = await client.post("/api/v1/sessions", json={"title": title}, headers=who.headers)
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
