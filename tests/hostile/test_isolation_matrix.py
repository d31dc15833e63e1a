"""Tenant isolation, generated from the application's route table: every route whose path takes an
id is called with the id of another company's object, by that other company's admin, member, API
key and browser session, with a body valid enough to get past validation. Each answer must be
401, 403 or 404, and afterwards the victim's data must be exactly as it was.

A new route with an id parameter the matrix does not know fails this test until it is added to
ID_SOURCES, so isolation is checked for every route, not for a hand-picked list."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from pydantic import TypeAdapter

from papo.auth.models import Role
from papo.chat.attachments import NewAttachment
from tests.fake_whatsapp import FakeTransport
from tests.support import (
    WHATSAPP_SESSIONS,
    ApiKeyHandle,
    Member,
    TenantHandle,
    WebhookReceiver,
    create_session,
    create_whatsapp_session,
    send,
    wait_status,
)

REFUSED = {401, 403, 404}
# Path parameters that name no tenant's data: static files, sign-in providers, fixed words.
# An invitation's token is the proof that admits its holder, so the matrix sends one nobody issued.
NOT_TENANT_DATA = {
    "name": "app.js",
    "provider": "google",
    "image_format": "png",
    "action": "test",
    "token": "an-invitation-token-nobody-issued",
}
WHATSAPP_PREFIXES = (WHATSAPP_SESSIONS, "/session/")


def id_for(parameter: str, path: str, victim: dict[str, str]) -> str:
    if parameter == "session_id" and path.startswith(WHATSAPP_PREFIXES):
        return victim["whatsapp_session_id"]
    if parameter not in victim:
        raise AssertionError(f"{path}: no id source for {{{parameter}}}; add one to the isolation matrix")
    return victim[parameter]


def minimal(schema: dict[str, Any], components: dict[str, Any]) -> Any:
    """The smallest value a JSON schema accepts (enough to pass validation, not to mean anything)."""
    if "$ref" in schema:
        return minimal(components[schema["$ref"].rsplit("/", 1)[1]], components)
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [s for s in schema[key] if s.get("type") != "null"] or schema[key]
            return minimal(options[0], components)
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: minimal(properties[name], components) for name in schema.get("required", [])}
    if kind == "array":
        return [minimal(schema.get("items", {}), components) for _ in range(schema.get("minItems", 0))]
    if kind == "string":
        if schema.get("format") == "uuid":
            return str(uuid.uuid4())
        if schema.get("format") == "email":
            return "someone@example.com"
        return "x" * max(1, schema.get("minLength", 1)) if "pattern" not in schema else "open"
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return True
    return None


def json_body(route: Any, document: dict[str, Any], template: str, method: str, components: dict[str, Any]) -> Any:
    operation = document["paths"].get(template, {}).get(method.lower())
    if operation is not None:
        schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        return minimal(schema, components) if schema else None
    if isinstance(route, APIRoute) and route.body_field is not None:  # an alias left out of the document
        schema = TypeAdapter(route.body_field.field_info.annotation).json_schema(ref_template="#/$defs/{model}")
        return minimal(schema, schema.get("$defs", {}))
    return None


def routes_with_ids(app: FastAPI) -> list[tuple[str, str, APIRoute | Any]]:
    found = []
    for context in iter_route_contexts(app.routes):
        path = context.path or ""
        if "{" not in path:
            continue
        for method in sorted(getattr(context.original_route, "methods", None) or []):
            if method != "HEAD":
                found.append((method, path, context.original_route))
    return found


async def victim_world(client: httpx.AsyncClient, tenant: TenantHandle, fake: FakeTransport) -> dict[str, Any]:
    admin, member = await tenant.member(Role.admin), await tenant.member(Role.member)
    chat = await create_session(client, member, "victim's chat")
    message = await send(client, member, chat["id"], "victim's secret")
    assistant = await client.post(
        "/api/v1/assistants", json={"name": "Victim bot", "provider": "demo", "model": "demo"}, headers=admin.headers
    )
    assert assistant.status_code == 201, assistant.text
    number = await create_whatsapp_session(client, admin, "victim number")
    await wait_status(client, admin, number["id"], "SCAN_QR_CODE")
    key = await tenant.api_key("victim key")
    from papo.whatsapp.transports.base import SessionKey

    wa_key = SessionKey(tenant.id, uuid.UUID(number["id"]))
    await fake.scan(wa_key, "+5511900001111")
    await wait_status(client, admin, number["id"], "WORKING")
    await fake.customer_writes(wa_key, "cliente da vítima", wa_id="5511900002222")
    where = NewAttachment(kind="location", data={"latitude": -23.5, "longitude": -46.6, "name": None, "address": None})
    await fake.customer_writes(wa_key, "", wa_id="5511900002222", kind="location", attachments=(where,))
    conversation = (await client.get("/api/v1/whatsapp/conversations", headers=admin.headers)).json()[0]
    conversation_messages = f"/api/v1/whatsapp/conversations/{conversation['id']}/messages"
    (attachment,) = (await client.get(conversation_messages, headers=admin.headers)).json()[-1]["attachments"]
    receiver = WebhookReceiver()
    hook = await client.post(
        "/api/v1/webhooks", json={"url": receiver.url, "event_types": ["message.created"]}, headers=admin.headers
    )
    assert hook.status_code == 201, hook.text
    delivery = await client.post(f"/api/v1/webhooks/{hook.json()['id']}/test", headers=admin.headers)
    invitation = await client.post("/api/v1/invitations", json={"email": "invitee@victim.test"}, headers=admin.headers)
    assert invitation.status_code == 201, invitation.text
    tool = await client.post(
        f"/api/v1/assistants/{assistant.json()['id']}/tools",
        json={"name": "victim_tool", "url": "http://127.0.0.1:9/victim"},
        headers=admin.headers,
    )
    assert tool.status_code == 201, tool.text
    collection = await client.post("/api/v1/knowledge/collections", json={"name": "Victim docs"}, headers=admin.headers)
    assert collection.status_code == 201, collection.text
    document = await client.post(
        f"/api/v1/knowledge/collections/{collection.json()['id']}/documents",
        files={"file": ("policy.txt", b"the victim's refund policy", "text/plain")},
        headers=admin.headers,
    )
    assert document.status_code == 202, document.text
    canned = await client.post(
        "/api/v1/whatsapp/canned-responses",
        json={"shortcut": "victim", "content": "the victim's saved reply"},
        headers=admin.headers,
    )
    assert canned.status_code == 201, canned.text
    team = await client.post("/api/v1/whatsapp/teams", json={"name": "Victim team"}, headers=admin.headers)
    assert team.status_code == 201, team.text
    return {
        "admin": admin,
        "member": member,
        "key": key,
        "ids": {
            "session_id": chat["id"],
            "message_id": message["id"],
            "assistant_id": assistant.json()["id"],
            "whatsapp_session_id": number["id"],
            "conversation_id": conversation["id"],
            "webhook_id": hook.json()["id"],
            "delivery_id": str(delivery.json()["id"]),
            "key_id": str(key.id),
            "user_id": member.user_id,
            "invitation_id": invitation.json()["id"],
            "attachment_id": attachment["id"],
            "collection_id": collection.json()["id"],
            "document_id": document.json()["id"],
            "tool_id": tool.json()["id"],
            "canned_id": canned.json()["id"],
            "team_id": team.json()["id"],
        },
    }


async def snapshot(client: httpx.AsyncClient, world: dict[str, Any]) -> dict[str, Any]:
    """Everything the attacks could have touched, as the victim sees it."""
    admin: Member = world["admin"]
    member: Member = world["member"]
    ids = world["ids"]

    async def body(who: Member | ApiKeyHandle, url: str) -> Any:
        response = await client.get(url, headers=who.headers)
        assert response.status_code == 200, (url, response.text)
        return response.json()

    def stable(value: Any) -> Any:  # what moves by itself (heartbeats, QR rotation, scoring) is left out
        if isinstance(value, dict):
            return {
                k: stable(v) for k, v in value.items() if k not in {"last_seen", "updated_at", "qr_code", "sentiment"}
            }
        if isinstance(value, list):
            return [stable(v) for v in value]
        return value

    return stable(
        {
            "chat": await body(member, f"/api/v1/sessions/{ids['session_id']}"),
            "messages": await body(member, f"/api/v1/sessions/{ids['session_id']}/messages"),
            "assistant": await body(admin, f"/api/v1/assistants/{ids['assistant_id']}"),
            "tools": await body(admin, f"/api/v1/assistants/{ids['assistant_id']}/tools"),
            "number": await body(admin, f"{WHATSAPP_SESSIONS}/{ids['whatsapp_session_id']}"),
            "conversation": await body(admin, f"/api/v1/whatsapp/conversations/{ids['conversation_id']}/messages"),
            "webhook": await body(admin, f"/api/v1/webhooks/{ids['webhook_id']}"),
            "members": await body(admin, "/api/v1/members"),
            "invitations": await body(admin, "/api/v1/invitations"),
            "collection": await body(member, f"/api/v1/knowledge/collections/{ids['collection_id']}"),
            "documents": await body(member, f"/api/v1/knowledge/collections/{ids['collection_id']}/documents"),
            "canned": await body(admin, "/api/v1/whatsapp/canned-responses"),
            "teams": await body(admin, "/api/v1/whatsapp/teams"),
            "key_works": (await client.get("/api/v1/me", headers=world["key"].headers)).status_code,
        }
    )


async def browser_session(app: FastAPI, who: Member) -> tuple[httpx.AsyncClient, str]:
    browser = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://papo.test")
    page = await browser.get("/login")
    token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
    assert token is not None
    form = {"email": who.email, "password": who.password, "csrf_token": token.group(1), "next": "/"}
    assert (await browser.post("/login", data=form)).status_code == 303
    home = await browser.get("/")
    signed_token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', home.text)
    assert signed_token is not None
    return browser, signed_token.group(1)


async def test_every_route_with_an_id_refuses_other_tenants(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Any, fake: FakeTransport
) -> None:
    victim = await make_tenant("Victim")
    world = await victim_world(client, victim, fake)
    before = await snapshot(client, world)

    attacker = await make_tenant("Attacker")
    attacker_admin = await attacker.member(Role.admin)
    attackers: dict[str, dict[str, str]] = {
        "admin": attacker_admin.headers,
        "member": (await attacker.member(Role.member)).headers,
        "agent": (await attacker.member(Role.agent)).headers,
        "api key": (await attacker.api_key()).headers,
    }
    browser, csrf = await browser_session(app, attacker_admin)
    document = app.openapi()
    components = document.get("components", {}).get("schemas", {})

    tried: list[tuple[str, str, str, int]] = []
    try:
        for method, template, route in routes_with_ids(app):
            params = re.findall(r"{(\w+)}", template)
            if all(p in NOT_TENANT_DATA for p in params):
                continue
            url = template
            for parameter in params:
                value = NOT_TENANT_DATA.get(parameter) or id_for(parameter, template, world["ids"])
                url = url.replace("{" + parameter + "}", value)
            if not getattr(route, "endpoint", None).__module__.startswith("papo.web."):
                # the API: bearer tokens and keys, with a JSON body its schema accepts
                body = json_body(route, document, template, method, components)
                for who, headers in attackers.items():
                    response = await client.request(method, url, json=body, headers=headers)
                    tried.append((method, template, who, response.status_code))
            else:  # pages and forms: the attacker's own signed-in browser, with a valid CSRF token
                data = {"csrf_token": csrf, "role": "agent"} if method == "POST" else None
                response = await browser.request(method, url, data=data, headers={"X-CSRF-Token": csrf})
                tried.append((method, template, "browser", response.status_code))
    finally:
        await browser.aclose()

    leaks = [attempt for attempt in tried if attempt[3] not in REFUSED]
    assert leaks == [], leaks
    assert len({(m, t) for m, t, _, _ in tried}) >= 45  # the route table really was walked
    assert await snapshot(client, world) == before
