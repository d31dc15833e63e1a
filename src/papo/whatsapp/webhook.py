"""The WhatsApp Cloud API webhook: Meta's verification handshake, then signed deliveries.

Deliveries are checked (X-Hub-Signature-256 over the raw body, constant time), routed to the company
whose token the Graph API accepted for the receiving number (migration 0021), queued in the database
(Meta does not deliver again after a 200), answered, and worked off by `IngestQueue` (ingest.py) in any
server process. Meta retries for days: a message id already stored does nothing, and receipts only
move a message forward, whatever order they arrive in.

Meta retries anything but a 200 for days, so what papo cannot use is answered 200 and logged: a
number no company verified, a part of the delivery of the wrong shape. What is queued is the
well-formed part only, rebuilt from checked fields (`clean_value`), so the worker never meets a
shape it cannot handle. Only a body that is not a webhook delivery at all (not JSON, no `entry`
list) is a 400; either way the delivery is queued whole or not at all (one transaction).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Sequence
from typing import Any

import structlog
from fastapi import APIRouter, Depends, Query, Request, Response

from papo.chat.attachments import NewAttachment
from papo.errors import BadRequest, DomainError, Forbidden, Unauthorized
from papo.ops.ratelimit import webhook_allowance
from papo.whatsapp.rows import PHONE_NUMBER_ID
from papo.whatsapp.service import State, WhatsappRuntime
from papo.whatsapp.transports.base import InboundMessage, InboundReceipt, SessionKey

log = structlog.get_logger(__name__)
router = APIRouter(prefix="/api/v1/whatsapp/webhook", tags=["whatsapp"])

MESSAGE_KIND = re.compile(r"[a-z_]{1,40}")
MAX_ID = 256  # WhatsApp's message ids and wa_ids are far shorter; anything longer is not theirs
MAX_NAME = 200
MAX_TEXT = 32_000
MEDIA_KINDS = ("image", "audio", "video", "document", "sticker")


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


def check_signature(state: WhatsappRuntime, body: bytes, header: str | None) -> None:
    secret = state.settings.whatsapp_app_secret
    if not secret:
        raise NotConfigured("set PAPO_WHATSAPP_APP_SECRET to accept WhatsApp webhooks")
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    if not header or not hmac.compare_digest(header.encode(), expected.encode()):
        raise Unauthorized("missing or wrong X-Hub-Signature-256")


def changes_of(payload: Any) -> list[Any]:
    """The `value`s of a delivery (Meta nests them under entry[].changes[]), unchecked."""
    if not isinstance(payload, dict) or not isinstance(payload.get("entry"), list):
        raise BadRequest("not a WhatsApp webhook delivery (no entry list)")
    values = []
    for entry in payload["entry"]:
        changes = entry.get("changes") if isinstance(entry, dict) else None
        for change in changes if isinstance(changes, list) else []:
            if isinstance(change, dict):
                values.append(change.get("value"))
    return values


def _text(value: Any, limit: int) -> str | None:
    """A string field as PostgreSQL can store it (no NUL; a lone surrogate, which JSON can carry
    but UTF-8 cannot, becomes U+FFFD), or None if it is not a string."""
    if not isinstance(value, str):
        return None
    cleaned = value.replace("\x00", "").encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return cleaned[:limit]


def _id(value: Any) -> str | None:
    """An id (a JSON number is taken as its digits); None when missing or too long to be WhatsApp's."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    found = _text(value, MAX_ID + 1)
    return found if found and len(found) <= MAX_ID else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def phone_number_id(value: Any) -> str | None:
    """The receiving number of one `value`, if it has a well-formed one."""
    number = _id(_dict(_dict(value).get("metadata")).get("phone_number_id"))
    return number if number is not None and PHONE_NUMBER_ID.fullmatch(number) else None


def _message(raw: Any) -> dict[str, Any] | None:
    message = _dict(raw)
    external_id, sender = _id(message.get("id")), _id(message.get("from"))
    if not external_id or not sender:
        return None
    kind = _text(message.get("type"), 40) or ""
    if not MESSAGE_KIND.fullmatch(kind) or kind in ("id", "from", "type"):
        kind = "unknown"  # also keeps the kind's own key from overwriting the message's fields
    if kind == "text":
        text = _text(_dict(message.get("text")).get("body"), MAX_TEXT)
        if text is None:
            return None  # a text message without its text is not stored as an empty one
        return {"id": external_id, "from": sender, "type": kind, "text": {"body": text}}
    part = _dict(message.get(kind))
    cleaned: dict[str, Any] = {"caption": _text(part.get("caption"), MAX_TEXT) or ""}
    if kind in MEDIA_KINDS:
        cleaned |= _media(part)
    elif kind == "location":
        cleaned |= _location(part)
    elif kind == "contacts":  # Meta's shape kept, so cleaning again (when the queue is worked) changes nothing
        cleaned = {"caption": "", "cards": [c for c in map(_card, _list(message.get("contacts"))[:20]) if c]}
        return {"id": external_id, "from": sender, "type": kind, "contacts": cleaned["cards"]}
    return {"id": external_id, "from": sender, "type": kind, kind: cleaned}


def _media(part: dict[str, Any]) -> dict[str, Any]:
    """A photo, voice note, video, document or sticker: the Graph API's media id to download it by,
    and what WhatsApp says about it (checked again once downloaded)."""
    return {
        "id": _id(part.get("id")),
        "mime_type": _text(part.get("mime_type"), 200),
        "sha256": _text(part.get("sha256"), 100),
        "filename": _text(part.get("filename"), 255),
        "voice": part.get("voice") is True,
    }


def _number(value: Any, limit: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if -limit <= value <= limit else None


def _location(part: dict[str, Any]) -> dict[str, Any]:
    return {
        "latitude": _number(part.get("latitude"), 90),
        "longitude": _number(part.get("longitude"), 180),
        "name": _text(part.get("name"), MAX_NAME),
        "address": _text(part.get("address"), 500),
    }


def _card(raw: Any) -> dict[str, Any] | None:
    """A shared contact card in Meta's shape: its name, phones and e-mail addresses (the rest is not kept)."""
    card = _dict(raw)
    name = _text(_dict(card.get("name")).get("formatted_name"), MAX_NAME)
    phones = [
        {"phone": _text(p.get("phone"), 40), "wa_id": _id(p.get("wa_id")), "type": _text(p.get("type"), 40)}
        for p in map(_dict, _list(card.get("phones"))[:10])
        if _text(p.get("phone"), 40)
    ]
    emails = [{"email": e} for e in (_text(_dict(m).get("email"), 320) for m in _list(card.get("emails"))[:10]) if e]
    return {"name": {"formatted_name": name}, "phones": phones, "emails": emails} if name or phones else None


def _receipt(raw: Any) -> dict[str, str] | None:
    receipt = _dict(raw)
    external_id, status = _id(receipt.get("id")), _text(receipt.get("status"), 40)
    return {"id": external_id, "status": status} if external_id and status else None


def _contact(raw: Any) -> dict[str, Any] | None:
    contact = _dict(raw)
    wa_id = _id(contact.get("wa_id"))
    name = _text(_dict(contact.get("profile")).get("name"), MAX_NAME)
    return {"wa_id": wa_id, "profile": {"name": name}} if wa_id and name else None


def clean_value(value: Any) -> dict[str, Any] | None:
    """One `value` rebuilt from its well-formed fields only (the shape `process` reads); None when
    it has no usable receiving number. Parts of the wrong shape are left out."""
    number = phone_number_id(value)
    if number is None:
        return None
    found = _dict(value)
    messages = [m for m in map(_message, _list(found.get("messages"))) if m is not None]
    return {
        "metadata": {"phone_number_id": number},
        "contacts": [c for c in map(_contact, _list(found.get("contacts"))) if c is not None],
        "messages": messages,
        "statuses": [r for r in map(_receipt, _list(found.get("statuses"))) if r is not None],
    }


def inbound_messages(value: dict[str, Any]) -> list[InboundMessage]:
    names = {c["wa_id"]: c["profile"]["name"] for c in value["contacts"]}
    found = []
    for message in value["messages"]:
        kind = message["type"]
        part = message[kind]
        text = "" if kind == "contacts" else part["body" if kind == "text" else "caption"]
        attachment = _attachment(kind, part)
        found.append(
            InboundMessage(
                message["id"],
                message["from"],
                names.get(message["from"]),
                text,
                kind,
                (attachment,) if attachment is not None else (),
            )
        )
    return found


def _attachment(kind: str, part: Any) -> NewAttachment | None:
    """What a cleaned message carries besides its text (rows queued before media was kept have no
    media id: they stay unsupported, as they were)."""
    if kind in MEDIA_KINDS and part.get("id"):
        return NewAttachment(
            kind="voice" if kind == "audio" and part.get("voice") else kind,
            source={"media_id": part["id"]},
            mime_type=part.get("mime_type"),
            file_name=part.get("filename"),
            caption=part.get("caption") or None,
            sha256=part.get("sha256"),
        )
    if kind == "location" and part.get("latitude") is not None and part.get("longitude") is not None:
        data = {key: part.get(key) for key in ("latitude", "longitude", "name", "address")}
        return NewAttachment(kind="location", data=data)
    if kind == "contacts" and part:
        cards = [
            {"name": c["name"]["formatted_name"], "phones": c["phones"], "emails": [e["email"] for e in c["emails"]]}
            for c in part
        ]
        return NewAttachment(kind="contacts", data={"cards": cards})
    return None


@router.post("", dependencies=[Depends(webhook_allowance)])
async def deliver(request: Request, state: State) -> dict[str, Any]:
    """Check, route and queue the delivery (its usable parts, in one statement that commits on its
    own: migration 0030), answer 200; any process works it off."""
    body = await request.body()
    check_signature(state, body, request.headers.get("x-hub-signature-256"))
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than the parser goes
        raise BadRequest("the body is not JSON") from exc
    changes = []
    for raw in changes_of(payload):
        value = clean_value(raw)
        if value is None:
            log.warning("whatsapp webhook change without a usable phone_number_id ignored")
            continue
        if not value["messages"] and not value["statuses"]:
            continue  # nothing papo acts on (another kind of notification)
        changes.append({"phone_number_id": value["metadata"]["phone_number_id"], "payload": value})
    if not changes:
        return {"received": 0}
    queued = await state.whatsapp.ingest.queue(changes)
    for number in sorted({change["phone_number_id"] for change in changes} - set(queued)):
        # Meta would retry anything but a 200 for days; no company verified this number
        log.warning("whatsapp webhook for a number no company verified ignored", phone_number_id=number)
    return {"received": len(queued)}


async def process(state: WhatsappRuntime, key: SessionKey, values: Sequence[Any]) -> None:
    """Queued deliveries of one number, in order, in one transaction: their messages stored, their
    receipts applied (both idempotent). Rows queued before deliveries were cleaned at the door are
    cleaned here."""
    arrivals: list[InboundMessage | InboundReceipt] = []
    for value in values:
        cleaned = clean_value(value)
        if cleaned is not None:
            arrivals += inbound_messages(cleaned)
            arrivals += [InboundReceipt(receipt["id"], receipt["status"]) for receipt in cleaned["statuses"]]
    if not arrivals:
        return
    await state.whatsapp.take_in(key, arrivals)
    if any(isinstance(arrival, InboundMessage) and arrival.attachments for arrival in arrivals):
        state.media.wake()  # stored (committed) with its media pending: fetch it now
