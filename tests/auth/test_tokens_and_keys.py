"""Bearer tokens (papo's own and an external Clerk-like issuer), API keys, sign-in and Clerk webhooks."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from svix.webhooks import Webhook

from papo.auth.models import Role
from papo.auth.tokens import SigningKey, TokenVerifier, issue_token
from papo.errors import Unauthorized
from papo.settings import Settings
from tests.support import CLERK_WEBHOOK_SECRET, EXTERNAL_ISSUER, FakeIdentityProvider, Member


def clerk_claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": EXTERNAL_ISSUER,
        "sub": "user_" + secrets.token_hex(6),
        "iat": now,
        "nbf": now,
        "exp": now + 60,
        "azp": "https://app.example.com",
        "sid": "sess_123",
        "v": 2,
        "o": {"id": "org_" + secrets.token_hex(6), "rol": "admin", "slg": "acme"},
    }
    claims.update(overrides)
    return claims


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})


class TestExternalIssuer:
    async def test_first_token_provisions_tenant_user_and_membership(
        self, client: httpx.AsyncClient, identity_provider: FakeIdentityProvider
    ) -> None:
        claims = clerk_claims(email="Ana@Example.com", email_verified=True)
        response = await me(client, identity_provider.token(claims))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["user_id"] == claims["sub"]
        assert body["role"] == "admin"
        assert body["email"] == "ana@example.com"
        # Same org again: same tenant, no duplicate.
        again = await me(client, identity_provider.token(clerk_claims(sub=claims["sub"], o=claims["o"])))
        assert again.json()["tenant_id"] == body["tenant_id"]
        # Demoted at the provider: followed on the next token.
        demoted = {**claims["o"], "rol": "member"}
        assert (await me(client, identity_provider.token(clerk_claims(sub=claims["sub"], o=demoted)))).json()[
            "role"
        ] == "member"

    async def test_v1_claims_and_session_endpoints(
        self, client: httpx.AsyncClient, identity_provider: FakeIdentityProvider
    ) -> None:
        claims = clerk_claims(o=None, org_id="org_" + secrets.token_hex(5), org_role="org:member")
        del claims["o"]
        token = identity_provider.token(claims)
        created = await client.post(
            "/api/chat/session", json={"title": "via clerk"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert created.status_code == 201
        assert created.json()["user_id"] == claims["sub"]

    @pytest.mark.parametrize(
        ("overrides", "detail"),
        [
            # times relative to when the test runs (parameters are built when the suite is collected)
            ({"exp": -30}, "expired"),
            ({"nbf": 60}, "not yet valid"),
            ({"iss": "https://evil.example.com"}, "issuer"),
            ({"azp": "https://evil.example.com"}, "authorized party"),
            ({"sts": "pending"}, "pending"),
            ({"sub": ""}, "subject"),
        ],
    )
    async def test_refused_claims(
        self, client: httpx.AsyncClient, identity_provider: FakeIdentityProvider, overrides: dict[str, Any], detail: str
    ) -> None:
        now = int(time.time())
        claims = {k: now + v if k in ("exp", "nbf") else v for k, v in overrides.items()}
        response = await me(client, identity_provider.token(clerk_claims(**claims)))
        assert response.status_code == 401, response.text
        assert detail in response.json()["detail"]

    async def test_leeway_accepts_small_clock_skew(
        self, client: httpx.AsyncClient, identity_provider: FakeIdentityProvider
    ) -> None:
        skewed = clerk_claims(exp=int(time.time()) - 2, nbf=int(time.time()) + 2)
        assert (await me(client, identity_provider.token(skewed))).status_code == 200

    async def test_forged_tokens(self, client: httpx.AsyncClient, identity_provider: FakeIdentityProvider) -> None:
        claims = clerk_claims()
        stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        wrong_signature = identity_provider.token(claims, kid=identity_provider.keys[0][0], key=stranger)
        header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=")
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        alg_none = (header + b"." + payload + b".").decode()
        # The classic confusion attack: HMAC "signed" with the issuer's public key as the secret.
        public_pem = (
            identity_provider.keys[0][1]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        hs_header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": identity_provider.keys[0][0]}).encode())
        signing_input = hs_header.rstrip(b"=") + b"." + payload
        mac = base64.urlsafe_b64encode(hmac.new(public_pem, signing_input, hashlib.sha256).digest()).rstrip(b"=")
        hs256_with_public_key = (signing_input + b"." + mac).decode()
        for token in (wrong_signature, alg_none, hs256_with_public_key, "not.a.jwt", "a" * 5000):
            response = await me(client, token)
            assert response.status_code == 401, (token[:20], response.text)

    async def test_key_rotation_refetches_jwks(
        self, client: httpx.AsyncClient, identity_provider: FakeIdentityProvider
    ) -> None:
        assert (await me(client, identity_provider.token(clerk_claims()))).status_code == 200
        fetches = identity_provider.fetches
        new_kid = identity_provider.rotate()
        await asyncio.sleep(1.1)  # the verifier refetches at most once a second
        response = await me(client, identity_provider.token(clerk_claims(), kid=new_kid))
        assert response.status_code == 200, response.text
        assert identity_provider.fetches == fetches + 1
        # An unknown kid that the provider does not publish stays refused.
        forged = identity_provider.token(clerk_claims(), kid="kid-unknown", key=identity_provider.keys[-1][1])
        assert (await me(client, forged)).status_code == 401


class TestBuiltInAccounts:
    async def test_sign_in_issues_a_token_that_works(self, client: httpx.AsyncClient, make_tenant: Any) -> None:
        tenant = await make_tenant()
        member: Member = await tenant.member(Role.member)
        response = await client.post("/api/v1/auth/token", json={"email": member.email, "password": member.password})
        assert response.status_code == 200, response.text
        token = response.json()["access_token"]
        assert response.json()["tenant_id"] == str(tenant.id)
        assert (await me(client, token)).json()["user_id"] == member.user_id
        wrong = await client.post("/api/v1/auth/token", json={"email": member.email, "password": "nope"})
        assert wrong.status_code == 401
        unknown = await client.post("/api/v1/auth/token", json={"email": "ghost@example.com", "password": "nope"})
        assert unknown.status_code == 401
        assert wrong.json()["detail"] == unknown.json()["detail"]

    async def test_jwks_endpoint_verifies_built_in_tokens(self, client: httpx.AsyncClient, make_tenant: Any) -> None:
        tenant = await make_tenant()
        member = await tenant.member()
        jwks = (await client.get("/.well-known/jwks.json")).json()
        key = jwt.PyJWK(jwks["keys"][0])
        claims = jwt.decode(member.token, key=key, algorithms=["RS256"], issuer="http://papo.test")
        assert claims["sub"] == member.user_id
        assert claims["o"]["id"] == str(tenant.id)

    async def test_built_in_token_for_removed_member_is_refused(
        self, client: httpx.AsyncClient, settings: Settings, make_tenant: Any
    ) -> None:
        tenant = await make_tenant()
        token, _ = issue_token(
            settings, SigningKey.load(settings), tenant_id=tenant.id, user_id="never-added", role="owner"
        )
        assert (await me(client, token)).status_code == 401
        forged_tenant, _ = issue_token(
            settings, SigningKey.load(settings), tenant_id=uuid.uuid4(), user_id="x", role="owner"
        )
        assert (await me(client, forged_tenant)).status_code == 401


class TestApiKeys:
    async def test_admin_creates_lists_and_revokes(self, client: httpx.AsyncClient, make_tenant: Any) -> None:
        tenant = await make_tenant()
        admin = await tenant.member(Role.admin)
        member = await tenant.member(Role.member)
        created = await client.post("/api/v1/api-keys", json={"name": "crm"}, headers=admin.headers)
        assert created.status_code == 201
        key = created.json()["key"]
        assert key.startswith("papo_sk_")
        listed = (await client.get("/api/v1/api-keys", headers=admin.headers)).json()
        assert [k["name"] for k in listed] == ["crm"]
        assert "key" not in listed[0]
        assert key not in json.dumps(listed)
        assert (await me(client, key)).json()["role"] == "service"
        assert (await client.get("/api/v1/api-keys", headers=member.headers)).status_code == 403
        assert (await client.post("/api/v1/api-keys", json={"name": "x"}, headers=member.headers)).status_code == 403

        revoked = await client.delete(f"/api/v1/api-keys/{created.json()['id']}", headers=admin.headers)
        assert revoked.status_code == 204
        response = await me(client, key)
        assert response.status_code == 401
        assert "revoked" in response.json()["detail"]

    async def test_other_tenants_keys_are_invisible(self, client: httpx.AsyncClient, make_tenant: Any) -> None:
        t1, t2 = await make_tenant(), await make_tenant()
        admin1 = await t1.member(Role.admin)
        key2 = await t2.api_key()
        assert (await client.delete(f"/api/v1/api-keys/{key2.id}", headers=admin1.headers)).status_code == 404
        assert (await me(client, key2.key)).status_code == 200
        assert (await me(client, "papo_sk_" + secrets.token_urlsafe(32))).status_code == 401


class TestClerkWebhooks:
    def signed(self, event: dict[str, Any], secret: str = CLERK_WEBHOOK_SECRET) -> tuple[bytes, dict[str, str]]:
        body = json.dumps(event)
        message_id = "msg_" + secrets.token_hex(6)
        now = datetime.now(UTC)
        signature = Webhook(secret).sign(message_id, now, body)
        headers = {
            "svix-id": message_id,
            "svix-timestamp": str(int(now.timestamp())),
            "svix-signature": signature,
            "content-type": "application/json",
        }
        return body.encode(), headers

    async def test_user_and_membership_sync(
        self, client: httpx.AsyncClient, identity_provider: FakeIdentityProvider
    ) -> None:
        org, user = "org_" + secrets.token_hex(5), "user_" + secrets.token_hex(5)
        events = [
            {
                "type": "user.created",
                "data": {
                    "id": user,
                    "first_name": "Bia",
                    "last_name": "Lima",
                    "primary_email_address_id": "e2",
                    "email_addresses": [
                        {"id": "e1", "email_address": "old@x.com"},
                        {"id": "e2", "email_address": "Bia@X.com", "verification": {"status": "verified"}},
                    ],
                },
            },
            {"type": "organization.created", "data": {"id": org, "name": "Lima Ltda"}},
            {
                "type": "organizationMembership.created",
                "data": {"organization": {"id": org}, "public_user_data": {"user_id": user}, "role": "org:admin"},
            },
        ]
        for event in events:
            body, headers = self.signed(event)
            response = await client.post("/api/v1/webhooks/clerk", content=body, headers=headers)
            assert response.status_code == 204, response.text
        token = identity_provider.token(clerk_claims(sub=user, o={"id": org}))
        profile = (await me(client, token)).json()
        assert profile["email"] == "bia@x.com"
        assert profile["name"] == "Bia Lima"
        assert profile["role"] == "admin"

        body, headers = self.signed({"type": "user.deleted", "data": {"id": user, "deleted": True}})
        assert (await client.post("/api/v1/webhooks/clerk", content=body, headers=headers)).status_code == 204
        # A still-valid token of a deleted user provisions a fresh, empty account: the old data is gone.
        assert (await client.get("/api/v1/sessions", headers={"Authorization": f"Bearer {token}"})).json()[
            "items"
        ] == []

    async def test_bad_signatures_are_refused(self, client: httpx.AsyncClient) -> None:
        event = {"type": "user.created", "data": {"id": "user_evil"}}
        body, headers = self.signed(event, secret="whsec_" + base64.b64encode(b"another secret!!").decode())
        assert (await client.post("/api/v1/webhooks/clerk", content=body, headers=headers)).status_code == 401
        body, headers = self.signed(event)
        tampered = body.replace(b"user_evil", b"user_evil2")
        assert (await client.post("/api/v1/webhooks/clerk", content=tampered, headers=headers)).status_code == 401
        assert (await client.post("/api/v1/webhooks/clerk", content=body)).status_code == 401
        body, headers = self.signed({"type": "user.created", "data": "nope"})
        assert (await client.post("/api/v1/webhooks/clerk", content=body, headers=headers)).status_code == 400


class TestIdentityBinding:
    """Issue 13 item 5 and the issuer + subject rule of item 1."""

    async def test_a_token_without_azp_is_refused_when_parties_are_listed(
        self, client: httpx.AsyncClient, identity_provider: FakeIdentityProvider
    ) -> None:
        claims = clerk_claims()
        del claims["azp"]
        response = await me(client, identity_provider.token(claims))
        assert response.status_code == 401
        assert "authorized party" in response.json()["detail"]

    async def test_an_unverified_email_claim_is_not_kept(
        self, client: httpx.AsyncClient, identity_provider: FakeIdentityProvider
    ) -> None:
        unverified = await me(client, identity_provider.token(clerk_claims(email="claims@example.com")))
        assert unverified.status_code == 200 and unverified.json()["email"] is None
        said_false = clerk_claims(email="claims@example.com", email_verified=False)
        assert (await me(client, identity_provider.token(said_false))).json()["email"] is None

    async def test_the_audience_is_checked_when_configured(
        self, settings: Settings, identity_provider: FakeIdentityProvider
    ) -> None:
        strict = settings.model_copy(update={"auth_audience": "papo-api"})
        async with httpx.AsyncClient() as http:
            verifier = TokenVerifier(strict, SigningKey.load(settings), http)
            accepted = await verifier.verify(identity_provider.token(clerk_claims(aud="papo-api")))
            assert accepted.issuer == EXTERNAL_ISSUER
            for claims in (clerk_claims(aud="another-client"), clerk_claims()):
                with pytest.raises(Unauthorized):
                    await verifier.verify(identity_provider.token(claims))

    async def test_an_outside_token_cannot_speak_for_a_papo_account(
        self, client: httpx.AsyncClient, identity_provider: FakeIdentityProvider, make_tenant: Any
    ) -> None:
        tenant = await make_tenant("Own accounts")
        member: Member = await tenant.member(Role.admin)
        forged = clerk_claims(sub=member.user_id)  # the issuer may mint any subject, even papo's ids
        response = await me(client, identity_provider.token(forged))
        assert response.status_code == 401, response.text
