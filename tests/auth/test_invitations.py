"""Accounts never cross tenants by e-mail alone: invitations, proof of the address, member removal.

Each attack of issue 13 item 1 is replayed through the public API (and the CLI's own code path),
then the invitation flow is followed end to end with the e-mail captured by a real SMTP server."""

from __future__ import annotations

import re
import secrets
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from papo.auth import oidc
from papo.auth import service as auth_service
from papo.auth.invitations import Accounts
from papo.auth.models import Role
from papo.db.engine import RlsContext
from papo.errors import Conflict, Forbidden
from papo.settings import Settings
from tests.auth.test_tokens_and_keys import clerk_claims
from tests.support import Mailbox, Member, TenantHandle, running_mailbox
from tests.web.conftest import set_tenant_settings

LINK = re.compile(r"http://papo\.test(/invitations/[A-Za-z0-9_-]+)")


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client from an address of its own: these tests fail password checks on purpose, and the
    sign-in guard per address must not hold back the rest of the suite."""
    place = f"10.{secrets.randbelow(250)}.{secrets.randbelow(250)}.{secrets.randbelow(250) + 1}"
    transport = httpx.ASGITransport(app=app, client=(place, 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://papo.test") as http:
        yield http


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    with running_mailbox() as found:
        yield found


@pytest.fixture
async def mailing(app: FastAPI, settings: Settings, mailbox: tuple[Mailbox, int]) -> AsyncIterator[Mailbox]:
    """The app sends invitations through a local SMTP server for the test's duration."""
    box, port = mailbox
    state = app.state.papo
    original = state.accounts
    mail_settings = settings.model_copy(update={"smtp_host": "127.0.0.1", "smtp_port": port, "smtp_starttls": False})
    state.accounts = Accounts(mail_settings, state.keys.secret)
    try:
        yield box
    finally:
        state.accounts = original


async def self_sign_up(http: httpx.AsyncClient, tenant: TenantHandle, email: str, password: str) -> httpx.Response:
    """The web sign-up form, as a browser posts it (CSRF token from the page)."""
    csrf = await csrf_of(http, f"/signup?tenant={tenant.id}")
    return await http.post(
        "/signup",
        data={"email": email, "password": password, "name": "", "csrf_token": csrf, "tenant": str(tenant.id)},
    )


async def token_for(client: httpx.AsyncClient, email: str, password: str, tenant: uuid.UUID) -> httpx.Response:
    return await client.post(
        "/api/v1/auth/token", json={"email": email, "password": password, "tenant_id": str(tenant)}
    )


def link_in(box: Mailbox, address: str) -> str:
    bodies = box.bodies_to(address)
    assert bodies, f"no e-mail to {address}"
    found = LINK.search(bodies[-1])
    assert found, bodies[-1]
    return found.group(1)


def token_of(path: str) -> str:
    return path.rsplit("/", 1)[-1]


class TestAccountsDoNotCrossTenantsByEmail:
    async def test_operator_adding_an_address_an_attacker_signed_up_with_does_not_reuse_that_account(
        self, client: httpx.AsyncClient, app: FastAPI, make_tenant: Any
    ) -> None:
        acme: TenantHandle = await make_tenant("Acme")
        beta: TenantHandle = await make_tenant("Beta")
        await set_tenant_settings(acme, {"signup_open": True})
        victim = f"newcfo-{secrets.token_hex(3)}@beta.test"
        attacker_password = "attacker-" + secrets.token_hex(6)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as browser:
            signed_up = await self_sign_up(browser, acme, victim, attacker_password)
        assert signed_up.status_code in (200, 303), signed_up.text

        # `papo user create --tenant Beta --email <victim> --role admin` runs exactly this:
        async with beta.db.transaction(RlsContext(beta.id, None, Role.owner.value)) as session:
            with pytest.raises(Conflict):
                await auth_service.add_member(session, email=victim, name=None, password=None, role=Role.admin)
        refused = await token_for(client, victim, attacker_password, beta.id)
        assert refused.status_code == 401, refused.text

    async def test_an_admin_cannot_attach_another_tenants_user_through_the_back_office_call(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        acme: TenantHandle = await make_tenant("Acme")
        beta: TenantHandle = await make_tenant("Beta")
        beta_member = await beta.member()
        acme_admin = await acme.member(Role.admin)
        opened = await client.post(
            "/api/v1/chats",
            json={"user": {"email": beta_member.email}, "create_user": True, "title": "bait"},
            headers=acme_admin.headers,
        )
        assert opened.status_code == 201, opened.text
        assert opened.json()["user_id"] != beta_member.user_id  # a fresh invitee, not Beta's account
        # Beta's member did not become a member of Acme: their password signs into Beta only.
        assert (await token_for(client, beta_member.email, beta_member.password, acme.id)).status_code == 401
        assert (await token_for(client, beta_member.email, beta_member.password, beta.id)).status_code == 200
        listed = await client.get("/api/v1/sessions", headers=beta_member.headers)
        assert [s["title"] for s in listed.json()["items"]] == []
        members = await client.get("/api/v1/members", headers=acme_admin.headers)
        assert beta_member.email not in {m["email"] for m in members.json()}
        pending = await client.get("/api/v1/invitations", headers=acme_admin.headers)
        assert [p["email"] for p in pending.json()] == [beta_member.email]


class TestInvitationFlow:
    async def test_an_emailed_invitation_is_accepted_once_by_whoever_holds_the_mailbox(
        self, client: httpx.AsyncClient, make_tenant: Any, mailing: Mailbox
    ) -> None:
        tenant: TenantHandle = await make_tenant("Convites")
        admin = await tenant.member(Role.admin)
        email = f"nova-{secrets.token_hex(3)}@example.com"
        created = await client.post(
            "/api/v1/invitations", json={"email": email, "role": "agent"}, headers=admin.headers
        )
        assert created.status_code == 201, created.text
        assert created.json()["emailed"] is True
        assert created.json()["url"] is None  # the admin never sees the link that proves the address
        path = link_in(mailing, email)

        page = await client.get(path)
        assert page.status_code == 200 and email in page.text

        too_short = await client.post("/api/v1/invitations/accept", json={"token": token_of(path), "password": "x"})
        assert too_short.status_code == 400
        accepted = await client.post(
            "/api/v1/invitations/accept", json={"token": token_of(path), "password": "a good password", "name": "Nova"}
        )
        assert accepted.status_code == 200, accepted.text
        me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {accepted.json()['access_token']}"})
        assert me.json()["role"] == "agent" and me.json()["email"] == email
        again = await client.post(
            "/api/v1/invitations/accept", json={"token": token_of(path), "password": "another password"}
        )
        assert again.status_code == 401
        signed_in = await token_for(client, email, "a good password", tenant.id)
        assert signed_in.status_code == 200

    async def test_an_existing_account_joins_with_its_own_password_or_resets_it_from_the_mailbox(
        self, client: httpx.AsyncClient, make_tenant: Any, mailing: Mailbox
    ) -> None:
        home: TenantHandle = await make_tenant("Home")
        other: TenantHandle = await make_tenant("Other")
        person = await home.member()
        admin = await other.member(Role.admin)
        created = await client.post("/api/v1/invitations", json={"email": person.email}, headers=admin.headers)
        assert created.status_code == 201, created.text
        token = token_of(link_in(mailing, person.email))

        wrong = await client.post("/api/v1/invitations/accept", json={"token": token, "password": "not the password"})
        assert wrong.status_code == 401
        joined = await client.post("/api/v1/invitations/accept", json={"token": token, "password": person.password})
        assert joined.status_code == 200, joined.text
        assert joined.json()["user_id"] == person.user_id
        assert (await token_for(client, person.email, person.password, other.id)).status_code == 200

        third: TenantHandle = await make_tenant("Third")
        third_admin = await third.member(Role.admin)
        await client.post("/api/v1/invitations", json={"email": person.email}, headers=third_admin.headers)
        reset = await client.post(
            "/api/v1/invitations/accept",
            json={"token": token_of(link_in(mailing, person.email)), "password": "brand new password", "reset": True},
        )
        assert reset.status_code == 200, reset.text
        assert reset.json()["user_id"] == person.user_id
        assert (await token_for(client, person.email, person.password, home.id)).status_code == 401
        assert (await token_for(client, person.email, "brand new password", home.id)).status_code == 200

    async def test_a_link_shown_to_the_admin_cannot_take_over_or_verify_an_account(
        self, client: httpx.AsyncClient, app: FastAPI, make_tenant: Any
    ) -> None:
        acme: TenantHandle = await make_tenant("Acme")
        beta: TenantHandle = await make_tenant("Beta")
        await set_tenant_settings(acme, {"signup_open": True})
        victim = f"cfo-{secrets.token_hex(3)}@beta.test"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as browser:
            await self_sign_up(browser, acme, victim, "attacker password")
        beta_admin = await beta.member(Role.admin)
        created = await client.post(
            "/api/v1/invitations", json={"email": victim, "role": "admin"}, headers=beta_admin.headers
        )
        assert created.status_code == 201, created.text
        assert created.json()["emailed"] is False
        token = token_of(created.json()["url"])  # no SMTP here: the admin hands the link over

        # Even holding the link, the attacker's unverified account cannot join Beta...
        joined = await client.post("/api/v1/invitations/accept", json={"token": token, "password": "attacker password"})
        assert joined.status_code == 403, joined.text
        # ...and the link cannot reset the account's password either.
        reset = await client.post(
            "/api/v1/invitations/accept", json={"token": token, "password": "another password", "reset": True}
        )
        assert reset.status_code == 403, reset.text
        assert (await token_for(client, victim, "attacker password", beta.id)).status_code == 401

    async def test_a_chat_opened_for_an_invitee_is_theirs_once_they_accept(
        self, client: httpx.AsyncClient, make_tenant: Any, mailing: Mailbox
    ) -> None:
        tenant: TenantHandle = await make_tenant("Back office")
        key = await tenant.api_key()
        email = f"cliente-{secrets.token_hex(3)}@example.com"
        opened = await client.post(
            "/api/v1/chats",
            json={"user": {"email": email}, "create_user": True, "title": "Bem-vinda"},
            headers=key.headers,
        )
        assert opened.status_code == 201, opened.text
        again = await client.post(
            "/api/v1/chats",
            json={"user": {"email": email}, "create_user": True, "title": "Segundo"},
            headers=key.headers,
        )
        assert again.json()["user_id"] == opened.json()["user_id"]  # one pending invitation per address
        accepted = await client.post(
            "/api/v1/invitations/accept",
            json={"token": token_of(link_in(mailing, email)), "password": "cliente password"},
        )
        assert accepted.status_code == 200, accepted.text
        headers = {"Authorization": f"Bearer {accepted.json()['access_token']}"}
        titles = {s["title"] for s in (await client.get("/api/v1/sessions", headers=headers)).json()["items"]}
        assert titles == {"Bem-vinda", "Segundo"}

    async def test_revoked_and_foreign_invitations(self, client: httpx.AsyncClient, make_tenant: Any) -> None:
        tenant: TenantHandle = await make_tenant("Revoga")
        other: TenantHandle = await make_tenant("Outra")
        admin, other_admin = await tenant.member(Role.admin), await other.member(Role.admin)
        member = await tenant.member()
        created = (
            await client.post(
                "/api/v1/invitations", json={"email": f"r-{secrets.token_hex(3)}@example.com"}, headers=admin.headers
            )
        ).json()
        assert (await client.get("/api/v1/invitations", headers=member.headers)).status_code == 403
        owner_invite = await client.post(
            "/api/v1/invitations", json={"email": "o@example.com", "role": "owner"}, headers=admin.headers
        )
        assert owner_invite.status_code == 403
        duplicate = await client.post("/api/v1/invitations", json={"email": member.email}, headers=admin.headers)
        assert duplicate.status_code == 409
        bad = await client.post("/api/v1/invitations", json={"email": "not an address"}, headers=admin.headers)
        assert bad.status_code == 400 and bad.headers["content-type"].startswith("application/problem+json")
        foreign = await client.delete(f"/api/v1/invitations/{created['id']}", headers=other_admin.headers)
        assert foreign.status_code == 404
        assert (await client.delete(f"/api/v1/invitations/{created['id']}", headers=admin.headers)).status_code == 204
        accepted = await client.post(
            "/api/v1/invitations/accept", json={"token": token_of(created["url"]), "password": "a good password"}
        )
        assert accepted.status_code == 401
        unknown = await client.post(
            "/api/v1/invitations/accept", json={"token": secrets.token_urlsafe(32), "password": "a good password"}
        )
        assert unknown.status_code == 404


class TestMemberRemoval:
    async def test_removal_and_demotion_take_effect_on_the_next_request(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Remove")
        owner = await tenant.member(Role.owner)
        admin = await tenant.member(Role.admin)
        member: Member = await tenant.member()
        assert (await client.get("/api/v1/me", headers=member.headers)).status_code == 200
        assert (await client.delete(f"/api/v1/members/{owner.user_id}", headers=admin.headers)).status_code == 403
        assert (await client.delete(f"/api/v1/members/{admin.user_id}", headers=admin.headers)).status_code == 403
        removed = await client.delete(f"/api/v1/members/{member.user_id}", headers=admin.headers)
        assert removed.status_code == 204
        assert (await client.get("/api/v1/me", headers=member.headers)).status_code == 401
        assert (await client.delete(f"/api/v1/members/{member.user_id}", headers=admin.headers)).status_code == 404

        demoted = await client.patch(f"/api/v1/members/{admin.user_id}", json={"role": "member"}, headers=owner.headers)
        assert demoted.status_code == 204
        assert (await client.get("/api/v1/members", headers=admin.headers)).status_code == 403


async def csrf_of(http: httpx.AsyncClient, path: str) -> str:
    page = await http.get(path)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text[:500]
    return found.group(1)


class TestInvitationPages:
    async def test_an_admin_invites_from_settings_and_the_invitee_joins_from_the_link(
        self, app: FastAPI, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Pages")
        admin = await tenant.member(Role.admin)
        email = f"web-{secrets.token_hex(3)}@example.com"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://papo.test") as browser:
            signed_in = await browser.post(
                "/login",
                data={"email": admin.email, "password": admin.password, "csrf_token": await csrf_of(browser, "/login")},
            )
            assert signed_in.status_code == 303, signed_in.text
            invited = await browser.post(
                "/settings/invitations",
                data={"email": email, "role": "agent", "csrf_token": await csrf_of(browser, "/settings")},
            )
            assert invited.status_code == 200, invited.text
            link = re.search(r'id="invite-link">http://papo\.test(/invitations/[^<]+)<', invited.text)
            assert link, invited.text
            assert email in invited.text  # listed as pending
        async with httpx.AsyncClient(transport=transport, base_url="http://papo.test") as invitee:
            page = await invitee.get(link.group(1))
            assert page.status_code == 200 and email in page.text
            accepted = await invitee.post(
                link.group(1),
                data={
                    "password": "a password of mine",
                    "name": "Web",
                    "csrf_token": await csrf_of(invitee, link.group(1)),
                },
            )
            assert accepted.status_code == 303, accepted.text
            home = await invitee.get("/")
            assert home.status_code == 200 and email in home.text
            gone = await invitee.get(link.group(1))
            assert "já aceito" in gone.text or "already accepted" in gone.text


class TestProofOfAddress:
    async def test_a_self_signed_up_address_is_verified_by_the_emailed_link(
        self, client: httpx.AsyncClient, app: FastAPI, make_tenant: Any, mailing: Mailbox
    ) -> None:
        open_tenant: TenantHandle = await make_tenant("Open")
        other: TenantHandle = await make_tenant("Other")
        await set_tenant_settings(open_tenant, {"signup_open": True})
        email = f"self-{secrets.token_hex(3)}@example.com"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as browser:
            await self_sign_up(browser, open_tenant, email, "my own password")
            bodies = mailing.bodies_to(email)
            assert bodies, "no confirmation e-mail"
            confirm = re.search(r"http://papo\.test(/verify-email\?token=\S+)", bodies[-1])
            assert confirm, bodies[-1]
            token = confirm.group(1).split("=", 1)[1]
            csrf = await csrf_of(browser, confirm.group(1))  # GET only shows the button: scanners change nothing
            forged = await browser.post("/verify-email", data={"token": token[:-3] + "abc", "csrf_token": csrf})
            assert forged.status_code == 400
            confirmed = await browser.post("/verify-email", data={"token": token, "csrf_token": csrf})
            assert confirmed.status_code == 200, confirmed.text

        # Verified now: a link that Other's admin hands over (not e-mailed) lets the account join.
        other_admin = await other.member(Role.admin)
        state = app.state.papo
        async with other.db.transaction(RlsContext(other.id, other_admin.user_id, Role.admin.value)) as session:
            principal = auth_service.Principal(other.id, other_admin.user_id, Role.admin.value)
            created = await Accounts(state.settings, state.keys.secret).invite(session, principal, email, Role.member)
        assert created.url is not None
        joined = await client.post(
            "/api/v1/invitations/accept", json={"token": token_of(created.url), "password": "my own password"}
        )
        assert joined.status_code == 200, joined.text


class TestOutsideIdentities:
    async def test_oidc_sign_in_matches_only_verified_addresses_then_links_the_subject(
        self, app: FastAPI, make_tenant: Any
    ) -> None:
        acme: TenantHandle = await make_tenant("Acme")
        await set_tenant_settings(acme, {"signup_open": True})
        email = f"pre-{secrets.token_hex(3)}@example.com"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as browser:
            await self_sign_up(browser, acme, email, "attacker password")  # unverified account
        google = oidc.VerifiedIdentity("https://accounts.google.com", "g-" + secrets.token_hex(4), email, "Victim")
        db = app.state.papo.db
        async with db.transaction() as session:
            with pytest.raises(Forbidden):  # not matched to the attacker's unverified account
                await oidc.member_for(session, google, None)

        verified: Member = await acme.member(email=f"ok-{secrets.token_hex(3)}@example.com")
        first = oidc.VerifiedIdentity("https://accounts.google.com", "g-" + secrets.token_hex(4), verified.email, None)
        async with db.transaction() as session:
            assert (await oidc.member_for(session, first, None)).user_id == verified.user_id
        renamed = oidc.VerifiedIdentity(first.issuer, first.subject, "changed@example.com", None)
        async with db.transaction() as session:  # linked by (issuer, subject) now, whatever the address
            assert (await oidc.member_for(session, renamed, None)).user_id == verified.user_id

    async def test_a_removed_outside_member_is_not_provisioned_again_by_their_next_token(
        self, client: httpx.AsyncClient, identity_provider: Any
    ) -> None:
        org = "org_" + secrets.token_hex(5)
        admin_claims = clerk_claims(o={"id": org, "rol": "admin"})
        member_claims = clerk_claims(o={"id": org, "rol": "member"})
        admin = {"Authorization": f"Bearer {identity_provider.token(admin_claims)}"}
        member = {"Authorization": f"Bearer {identity_provider.token(member_claims)}"}
        assert (await client.get("/api/v1/me", headers=admin)).status_code == 200
        assert (await client.get("/api/v1/me", headers=member)).status_code == 200
        removed = await client.delete(f"/api/v1/members/{member_claims['sub']}", headers=admin)
        assert removed.status_code == 204
        assert (await client.get("/api/v1/me", headers=member)).status_code == 401


class TestAcceptanceThrottle:
    async def test_an_invitation_link_is_no_way_around_the_sign_in_throttle(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        home: TenantHandle = await make_tenant("Home")
        prying: TenantHandle = await make_tenant("Prying")
        person = await home.member()
        admin = await prying.member(Role.admin)
        created = await client.post("/api/v1/invitations", json={"email": person.email}, headers=admin.headers)
        token = token_of(created.json()["url"])  # the admin holds the link and guesses the password
        answers = [
            (
                await client.post("/api/v1/invitations/accept", json={"token": token, "password": f"guess number {n}"})
            ).status_code
            for n in range(8)
        ]
        assert answers[:5] == [401] * 5
        assert set(answers[5:]) == {429}


@asynccontextmanager
async def signed_in_browser(app: FastAPI, who: Member) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A browser (cookie jar, no JavaScript) signed in as `who`, and the CSRF token its pages carry."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as browser:
        csrf = await csrf_of(browser, "/login")
        answer = await browser.post("/login", data={"email": who.email, "password": who.password, "csrf_token": csrf})
        assert answer.status_code == 303, answer.text
        yield browser, await csrf_of(browser, "/")


class TestReviewFindings:
    """An attacker's review of this work found these; each is replayed here."""

    async def test_a_token_cannot_mint_its_successor_and_dies_with_its_browser_session(
        self, client: httpx.AsyncClient, app: FastAPI, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Tokens")
        member = await tenant.member()
        async with signed_in_browser(app, member) as (browser, csrf):
            minted = await browser.post("/web/realtime-token", headers={"X-CSRF-Token": csrf})
            assert minted.status_code == 200, minted.text
            leaked = {"Authorization": f"Bearer {minted.json()['token']}"}
            assert (await client.get("/api/v1/me", headers=leaked)).status_code == 200
            assert (await client.post("/web/realtime-token", headers=leaked)).status_code == 403
            out = await browser.post("/logout", data={"csrf_token": csrf, "everywhere": "true"})
            assert out.status_code == 303
        assert (await client.get("/api/v1/me", headers=leaked)).status_code == 401

    async def test_removal_and_demotion_withdraw_keys_and_invitations_and_keys_invite_members_only(
        self, client: httpx.AsyncClient, make_tenant: Any
    ) -> None:
        tenant: TenantHandle = await make_tenant("Former admin")
        owner = await tenant.member(Role.owner)
        admin = await tenant.member(Role.admin)
        other_admin = await tenant.member(Role.admin)
        key = (await client.post("/api/v1/api-keys", json={"name": "mine"}, headers=admin.headers)).json()["key"]
        by_key = {"Authorization": f"Bearer {key}"}
        escalation = await client.post(
            "/api/v1/invitations", json={"email": "me@evil.test", "role": "admin"}, headers=by_key
        )
        assert escalation.status_code == 403
        kept = await client.post(
            "/api/v1/invitations", json={"email": "alt@evil.test", "role": "admin"}, headers=admin.headers
        )
        assert kept.status_code == 201
        other_key = (await client.post("/api/v1/api-keys", json={"name": "x"}, headers=other_admin.headers)).json()

        assert (await client.delete(f"/api/v1/members/{admin.user_id}", headers=owner.headers)).status_code == 204
        assert (await client.get("/api/v1/me", headers=by_key)).status_code == 401
        late = await client.post(
            "/api/v1/invitations/accept", json={"token": token_of(kept.json()["url"]), "password": "a good password"}
        )
        assert late.status_code == 401

        demoted = await client.patch(
            f"/api/v1/members/{other_admin.user_id}", json={"role": "member"}, headers=owner.headers
        )
        assert demoted.status_code == 204
        assert (
            await client.get("/api/v1/me", headers={"Authorization": f"Bearer {other_key['key']}"})
        ).status_code == 401

    async def test_confirming_an_address_needs_the_accounts_own_browser(
        self, app: FastAPI, make_tenant: Any, mailing: Mailbox
    ) -> None:
        tenant: TenantHandle = await make_tenant("Confirm")
        await set_tenant_settings(tenant, {"signup_open": True})
        email = f"squat-{secrets.token_hex(3)}@example.com"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as squatter:
            await self_sign_up(squatter, tenant, email, "squatter password")
        found = re.search(r"http://papo\.test(/verify-email\?token=\S+)", mailing.bodies_to(email)[-1])
        assert found
        victim_member = await tenant.member()  # the mailbox's owner, signed in as someone else
        async with signed_in_browser(app, victim_member) as (victim, csrf):
            confirmed = await victim.post(
                "/verify-email", data={"token": found.group(1).split("=", 1)[1], "csrf_token": csrf}
            )
            assert confirmed.status_code == 403
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as nobody:
            assert (await nobody.get(found.group(1))).status_code == 303  # to sign-in first

    async def test_a_reset_from_the_mailbox_drops_what_the_unproven_holder_joined(
        self, client: httpx.AsyncClient, app: FastAPI, make_tenant: Any, mailing: Mailbox
    ) -> None:
        acme: TenantHandle = await make_tenant("Acme")
        beta: TenantHandle = await make_tenant("Beta")
        await set_tenant_settings(acme, {"signup_open": True})
        email = f"cfo-{secrets.token_hex(3)}@beta.test"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test") as squatter:
            await self_sign_up(squatter, acme, email, "squatter password")
        beta_admin = await beta.member(Role.admin)
        await client.post("/api/v1/invitations", json={"email": email, "role": "admin"}, headers=beta_admin.headers)
        reset = await client.post(
            "/api/v1/invitations/accept",
            json={"token": token_of(link_in(mailing, email)), "password": "the real cfo password", "reset": True},
        )
        assert reset.status_code == 200, reset.text
        assert (await token_for(client, email, "the real cfo password", beta.id)).status_code == 200
        assert (await token_for(client, email, "the real cfo password", acme.id)).status_code == 401
        assert (await token_for(client, email, "squatter password", acme.id)).status_code == 401

    async def test_an_invitation_goes_to_one_plain_address(self, client: httpx.AsyncClient, make_tenant: Any) -> None:
        admin = await (await make_tenant("Plain")).member(Role.admin)
        for address in ("x@evil.test,y@victim.test", '"a"@b.test', "Ana <ana@b.test>", "a@b", "a@@b.test"):
            answer = await client.post("/api/v1/invitations", json={"email": address}, headers=admin.headers)
            assert answer.status_code == 400, (address, answer.text)
