"""Bearer tokens: papo's own signing key and one verifier for every trusted issuer (papo, Clerk, any OIDC)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from papo.errors import Forbidden, Unauthorized
from papo.private_files import read_or_create_private_file
from papo.settings import Settings

log = structlog.get_logger(__name__)

# Asymmetric algorithms only: HS* would let anyone holding a public key mint tokens, and
# "none" is no signature at all.
ACCEPTED_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "EdDSA"]
# Clerk roles arrive as "org:admin" (v1) or "admin" (v2); papo maps the two it understands.
PROVIDER_ROLES = {"admin": "admin", "member": "member", "basic_member": "member"}
VERIFIED_CACHE_SIZE = 10_000
VERIFIED_CACHE_SECONDS = 300.0


class SigningKey:
    """The RSA key papo signs built-in tokens with; its public half is served as JWKS."""

    def __init__(self, private_key: rsa.RSAPrivateKey) -> None:
        self.private_key = private_key
        public_jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(private_key.public_key()))
        self.kid = _thumbprint_kid(public_jwk)
        self.public_jwk = {**public_jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}

    @classmethod
    def load(cls, settings: Settings) -> SigningKey:
        if settings.jwt_private_key:
            pem = settings.jwt_private_key.encode()
        else:
            path = settings.data_dir / "keys" / "jwt-signing-key.pem"
            if not path.exists():
                _write_new_key(path)
            pem = path.read_bytes()
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("PAPO_JWT_PRIVATE_KEY must be an RSA private key in PEM format")
        return cls(key)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": self.kid})


def _thumbprint_kid(public_jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint: a stable key id derived from the public key itself."""
    canonical = json.dumps({k: public_jwk[k] for k in ("e", "kty", "n")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def _write_new_key(path: Path) -> None:
    """A new signing key, 0600 from the first byte; if another process wrote one first, that one stays."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    read_or_create_private_file(path, lambda: pem)


def issue_token(
    settings: Settings,
    key: SigningKey,
    *,
    tenant_id: uuid.UUID,
    user_id: str,
    role: str,
    ttl_seconds: int | None = None,
    session_id: uuid.UUID | None = None,
) -> tuple[str, int]:
    """A Clerk-shaped session token (v2 claims) for a built-in account; returns it and its lifetime.
    With `session_id` (a browser session), the token works only while that session lasts."""
    ttl = ttl_seconds or settings.token_ttl_seconds
    now = int(time.time())
    claims = {
        "iss": settings.issuer,
        "sub": user_id,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "v": 2,
        "o": {"id": str(tenant_id), "rol": role},
    }
    if session_id is not None:
        claims["sid"] = str(session_id)
    return key.sign(claims), ttl


@dataclass(frozen=True)
class VerifiedIdentity:
    """What a valid token says about its bearer, before the database maps it to a membership."""

    issuer: str
    issuer_is_papo: bool
    user_id: str
    tenant_ref: str
    role: str | None
    email: str | None
    name: str | None
    expires_at: float
    # papo's own tokens minted for a browser session: valid only while that session exists
    web_session_id: uuid.UUID | None = None


class RemoteKeySet:
    """A JWKS document fetched over HTTP, cached, and refetched when an unknown `kid` shows up."""

    min_refetch_seconds = 1.0

    def __init__(self, url: str, cache_seconds: int, client: httpx.AsyncClient) -> None:
        self.url = url
        self.cache_seconds = cache_seconds
        self.client = client
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at = 0.0
        self.lock = asyncio.Lock()

    async def get(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        if not self.keys or now - self.fetched_at > self.cache_seconds:
            await self._refresh(force=False)
        key = self._pick(kid)
        if key is None and time.monotonic() - self.fetched_at >= self.min_refetch_seconds:
            await self._refresh(force=True)  # key rotation: the provider published a new key
            key = self._pick(kid)
        if key is None:
            raise Unauthorized("token signed with an unknown key")
        return key

    def _pick(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    async def _refresh(self, *, force: bool) -> None:
        async with self.lock:
            if not force and self.keys and time.monotonic() - self.fetched_at <= self.cache_seconds:
                return
            try:
                response = await self.client.get(self.url, timeout=5.0)
                response.raise_for_status()
                document = response.json()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("jwks fetch failed", url=self.url, error=str(exc))
                if not self.keys:
                    raise Unauthorized("cannot verify token: identity provider keys unavailable") from exc
                return
            keys: dict[str, jwt.PyJWK] = {}
            for entry in document.get("keys", []):
                try:
                    parsed = jwt.PyJWK(entry)
                except jwt.PyJWTError:
                    continue  # keys of types we do not use (e.g. encryption keys)
                keys[parsed.key_id or ""] = parsed
            self.keys = keys
            self.fetched_at = time.monotonic()


class TokenVerifier:
    """Verifies papo's own tokens and, when configured, an external issuer's (Clerk or any OIDC)."""

    def __init__(self, settings: Settings, signing_key: SigningKey, client: httpx.AsyncClient) -> None:
        self.settings = settings
        self.own_key = jwt.PyJWK(signing_key.public_jwk)
        self.own_kid = signing_key.kid
        self.remote: RemoteKeySet | None = None
        if settings.auth_jwks_url:
            self.remote = RemoteKeySet(settings.auth_jwks_url, settings.auth_jwks_cache_seconds, client)
        # Clients send the same token on every request until it expires; remembering the outcome
        # of a successful check (keyed by the whole token, signature included) skips re-parsing
        # and re-verifying it. Membership is still checked in the database on every request.
        self._verified: OrderedDict[str, tuple[VerifiedIdentity, float]] = OrderedDict()

    async def verify(self, token: str) -> VerifiedIdentity:
        cached = self._verified.get(token)
        now = time.time()
        if cached is not None:
            if cached[1] > now:
                return cached[0]
            del self._verified[token]
        identity, expires_at = await self._verify_signature_and_claims(token)
        self._verified[token] = (identity, min(expires_at, now + VERIFIED_CACHE_SECONDS))
        if len(self._verified) > VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return identity

    async def _verify_signature_and_claims(self, token: str) -> tuple[VerifiedIdentity, float]:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed token") from exc
        algorithm = header.get("alg")
        if algorithm not in ACCEPTED_ALGORITHMS:
            raise Unauthorized("token algorithm not accepted")
        issuer = unverified.get("iss")
        own = issuer == self.settings.issuer
        if own:
            if header.get("kid") not in (None, self.own_kid):
                raise Unauthorized("token signed with an unknown key")
            key = self.own_key
        elif self.remote is not None and issuer == self.settings.auth_issuer:
            key = await self.remote.get(header.get("kid"))
        else:
            raise Unauthorized("token issuer not trusted")
        # An audience is checked for the external issuer when the operator names one (generic
        # OIDC issuers mint tokens for many clients); papo's own tokens carry none.
        audience = None if own else self.settings.auth_audience
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                issuer=issuer,
                audience=audience,
                leeway=self.settings.auth_leeway_seconds,
                options={"require": ["exp", "sub", "iss"], "verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized("token not yet valid") from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        identity = self._identity(claims, own)
        return identity, identity.expires_at

    def _identity(self, claims: dict[str, Any], own: bool) -> VerifiedIdentity:
        if claims.get("sts") == "pending":
            raise Unauthorized("session is pending (unfinished sign-in tasks)")
        parties = self.settings.auth_authorized_parties
        # With an allow-list, a token must name its authorized party: one without `azp` could have
        # been minted for any other front end of the same identity provider.
        if not own and parties and claims.get("azp") not in parties:
            raise Unauthorized("token authorized party missing or not allowed")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > 255:
            raise Unauthorized("token subject missing")
        organization: dict[str, Any] = claims["o"] if isinstance(claims.get("o"), dict) else {}
        tenant_ref = organization.get("id") or claims.get("org_id")
        raw_role = organization.get("rol") or claims.get("org_role")
        if not tenant_ref:
            if own or not self.settings.auth_default_tenant:
                raise Forbidden("token carries no organization; choose an organization and sign in again")
            tenant_ref = self.settings.auth_default_tenant
        role = None
        if isinstance(raw_role, str):
            role = raw_role.removeprefix("org:") if own else PROVIDER_ROLES.get(raw_role.removeprefix("org:"))
        if own:
            try:
                uuid.UUID(str(tenant_ref))
            except ValueError as exc:
                raise Unauthorized("token organization malformed") from exc
        # An address is only worth matching on when the provider vouches for it.
        email = _str_claim(claims, "email") if claims.get("email_verified") is True else None
        return VerifiedIdentity(
            issuer=str(claims["iss"]),
            issuer_is_papo=own,
            user_id=subject,
            tenant_ref=str(tenant_ref),
            role=role,
            email=email,
            name=_str_claim(claims, "name"),
            web_session_id=_session_claim(claims) if own else None,
            expires_at=float(claims["exp"]),
        )


def _str_claim(claims: dict[str, Any], name: str) -> str | None:
    value = claims.get(name)
    return value if isinstance(value, str) and len(value) <= 320 else None


def _session_claim(claims: dict[str, Any]) -> uuid.UUID | None:
    value = claims.get("sid")
    if value is None:
        return None
    try:
        return uuid.UUID(str(value))
    except ValueError as exc:
        raise Unauthorized("token session malformed") from exc
