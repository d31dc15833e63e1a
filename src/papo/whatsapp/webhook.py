"""The WhatsApp Cloud API webhook: Meta's verification handshake, then signed deliveries.

Deliveries are checked (X-Hub-Signature-256 over the raw body, constant time), routed to the company
of the receiving number, queued in the database (Meta does not deliver again after a 200), answered,
and worked off by `WhatsappHub.ingest` in any server process. Meta retries for days:
a message id already stored does nothing, and receipts only move a message forward, whatever order
they arrive in.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import structlog
from fastapi import APIRouter, BackgroundTasks, Depends, Query, Request, Response

from papo.auth.deps import DbSession, State
from papo.db.engine import apply_context, driver
from papo.errors import BadRequest, DomainError, Forbidden, NotFound, Unauthorized
from papo.ops.ratelimit import webhook_allowance
from papo.state import AppState
from papo.whatsapp.service import service_principal
from papo.whatsapp.transports.base import InboundMessage, SessionKey

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/api/v1/whatsapp/webhook", tags=["whatsapp"])


class NotConfigured(DomainError):
    # an integration the operator did not set up does not exist, as far as callers can tell
    status, slug, title = 404, "not-configured", "Not configured"


@router.get("", response_class=Response)
async def verify(
    state: State,
    mode: str = Query("", alias="hub.mode"),
    token: str = Query("", alias="hub.verify_token"),
    challenge: str = Query("", alias="hub.challenge", max_length=200),
) -> Response:
    """Meta's subscription handshake: echo the challenge when the verify token matches."""
    expected = state.settings.whatsapp_verify_token
    if not expected:
        raise NotConfigured("set PAPO_WHATSAPP_VERIFY_TOKEN to subscribe this webhook")
    if mode != "subscribe" or not hmac.compare_digest(token.encode(), expected.encode()):
        raise Forbidden("wrong verify token")
    return Response(challenge, media_type="text/plain")


def check_signature(state: AppState, body: bytes, header: str | None) -> None:
    secret = state.settings.whatsapp_app_secret
    if not secret:
        raise NotConfigured("set PAPO_WHATSAPP_APP_SECRET to accept WhatsApp webhooks")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not header or not hmac.compare_digest(header.encode(), expected.encode()):
        raise Unauthorized("missing or wrong X-Hub-Signature-256")


def changes_of(payload: Any) -> list[dict[str, Any]]:
    """The `value` objects of a delivery (Meta nests them under entry[].changes[])."""
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        raise BadRequest("not a WhatsApp webhook delivery (no entry list)")
    values = []
    for entry in payload["entry"]:
        for change in (entry.get("changes") or []) if isinstance(entry, dict) else []:
            value = change.get("value") if isinstance(change, dict) else None
            if isinstance(value, dict):
                values.append(value)
    return values


def inbound_messages(value: dict[str, Any]) -> list[InboundMessage]:
    names = {
        c.get("wa_id"): (c.get("profile") or {}).get("name") for c in value.get("contacts") or [] if isinstance(c, dict)
    }
    found = []
    for message in value.get("messages") or []:
        if not isinstance(message, dict) or not message.get("id") or not message.get("from"):
            continue
        kind = str(message.get("type") or "unknown")
        if kind == "text":
            text = str((message.get("text") or {}).get("body") or "")
        else:
            text = str((message.get(kind) or {}).get("caption") or "") if isinstance(message.get(kind), dict) else ""
        sender = str(message["from"])
        found.append(InboundMessage(str(message["id"]), sender, names.get(sender), text, kind))
    return found


@router.post("", dependencies=[Depends(webhook_allowance)])
async def deliver(request: Request, session: DbSession, state: State, background: BackgroundTasks) -> dict[str, Any]:
    """Check, route and queue the delivery (one insert each), answer 200; any process works it off."""
    body = await request.body()
    check_signature(state, body, request.headers.get("x-hub-signature-256"))
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise BadRequest("the body is not JSON") from exc
    routed: list[tuple[SessionKey, dict[str, Any]]] = []
    for value in changes_of(payload):
        number = str((value.get("metadata") or {}).get("phone_number_id") or "")
        route = await driver(session).fetchrow("SELECT * FROM papo_whatsapp_route($1)", number)
        if route is None:
            log.warning("whatsapp webhook for an unknown number", phone_number_id=number)
            raise NotFound(f"no active WhatsApp Cloud API session has phone_number_id {number!r}")
        routed.append((SessionKey(route["route_tenant_id"], route["route_session_id"]), value))
    for key, value in routed:
        await apply_context(session, service_principal(key.tenant_id).context())
        await driver(session).execute(
            "INSERT INTO whatsapp_webhook_deliveries (tenant_id, session_id, payload) VALUES ($1, $2, $3)",
            key.tenant_id,
            key.session_id,
            json.dumps(value),
        )
    background.add_task(state.whatsapp.wake_ingest)  # after the commit
    return {"received": len(routed)}


async def process(state: AppState, key: SessionKey, value: dict[str, Any]) -> None:
    """One queued delivery: its messages stored, its receipts applied (both idempotent)."""
    for inbound in inbound_messages(value):
        await state.whatsapp.receive(key, inbound)
    for receipt in value.get("statuses") or []:
        if isinstance(receipt, dict) and receipt.get("id") and receipt.get("status"):
            await state.whatsapp.receipt(key, str(receipt["id"]), str(receipt["status"]))
