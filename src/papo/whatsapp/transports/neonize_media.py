"""What a neonize message carries besides text, in papo's terms, and the protos papo sends files in.

A customer's photo, voice note, video, document or sticker arrives as a proto naming where the
encrypted file is on WhatsApp's servers and the key to it; papo keeps that media part (without its
thumbnail and context) as the attachment's `source`, so the download worker can hand it back to
neonize's download call later. A location and shared contacts (vCards) become structured data in the
same shape the Cloud API's give.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from papo.chat.attachments import NewAttachment

# neonize Message field -> papo's attachment kind
MEDIA_FIELDS = {
    "imageMessage": "image",
    "audioMessage": "audio",
    "videoMessage": "video",
    "documentMessage": "document",
    "stickerMessage": "sticker",
}
# Wrappers WhatsApp puts around a message (disappearing, view-once, a document with a caption).
WRAPPERS = ("ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2", "documentWithCaptionMessage")
# Fields a download does not need and that only make the stored source larger.
DROPPED_FIELDS = ("JPEGThumbnail", "contextInfo", "pngThumbnail", "waveform", "streamingSidecar")
MAX_CARDS = 20
MAX_TEXT = 4096


def unwrap(message: Any) -> Any:
    for _ in range(3):  # a wrapper may hold another (an ephemeral view-once photo)
        for wrapper in WRAPPERS:
            if message.HasField(wrapper):
                message = getattr(message, wrapper).message
                break
        else:
            return message
    return message


def _short(value: str, limit: int) -> str | None:
    value = value.strip()
    return value[:limit] if value else None


def media_attachment(message: Any, field: str) -> NewAttachment:
    """A media part as an attachment to download: the proto without what the download does not need."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    part = getattr(message, field)
    kept = Message()
    getattr(kept, field).CopyFrom(part)
    for dropped in DROPPED_FIELDS:
        if getattr(kept, field).DESCRIPTOR.fields_by_name.get(dropped) is not None:
            getattr(kept, field).ClearField(dropped)
    # The file is fetched from WhatsApp's own media hosts by its path; a URL the sender wrote is not kept
    getattr(kept, field).ClearField("URL")
    if not part.directPath.startswith("/") or part.directPath.startswith("//"):
        getattr(kept, field).ClearField("directPath")
    kind = MEDIA_FIELDS[field]
    if kind == "audio" and part.PTT:
        kind = "voice"
    file_name = _short(part.fileName, 255) if field == "documentMessage" else None
    caption = _short(part.caption, MAX_TEXT) if field in ("imageMessage", "videoMessage", "documentMessage") else None
    return NewAttachment(
        kind=kind,
        source={"neonize": base64.b64encode(kept.SerializeToString()).decode()},
        mime_type=_short(part.mimetype, 200),
        file_name=file_name,
        caption=caption,
        size=int(part.fileLength) or None,
        sha256=part.fileSHA256.hex() or None,
    )


def stored_message(source: dict[str, Any]) -> Any:
    """The media proto an attachment's source holds (None when it holds none)."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    encoded = source.get("neonize")
    if not isinstance(encoded, str):
        return None
    try:
        message = Message.FromString(base64.b64decode(encoded, validate=True))
    except Exception:
        return None
    return message if any(message.HasField(field) for field in MEDIA_FIELDS) else None


def location_attachment(part: Any) -> NewAttachment | None:
    latitude, longitude = float(part.degreesLatitude), float(part.degreesLongitude)
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180) or (latitude == 0 and longitude == 0):
        return None
    name = _short(getattr(part, "name", ""), 200)
    address = _short(getattr(part, "address", ""), 500)
    return NewAttachment(
        kind="location", data={"latitude": latitude, "longitude": longitude, "name": name, "address": address}
    )


VCARD_LINE = re.compile(r"^(?:item\d+\.)?(?P<name>[A-Z-]+)(?P<params>;[^:]*)?:(?P<value>.*)$", re.IGNORECASE)
WAID = re.compile(r"waid=(\d{5,20})", re.IGNORECASE)


def vcard_card(vcard: str, display_name: str) -> dict[str, Any] | None:
    """A contact card's name, phones (with the WhatsApp id WhatsApp puts beside them) and e-mails."""
    name = _short(display_name, 200)
    phones: list[dict[str, Any]] = []
    emails: list[str] = []
    for line in vcard.replace("\r\n", "\n").split("\n")[:200]:
        match = VCARD_LINE.match(line.strip())
        if match is None:
            continue
        field, params, value = match["name"].upper(), match["params"] or "", match["value"].strip()
        if field == "FN" and not name:
            name = _short(value, 200)
        elif field == "TEL" and value and len(phones) < 10:
            waid = WAID.search(params)
            kind = next((p.split("=")[-1] for p in params.split(";") if p.upper().startswith("TYPE=")), None)
            phones.append({"phone": value[:40], "wa_id": waid[1] if waid else None, "type": kind})
        elif field == "EMAIL" and value and len(emails) < 10:
            emails.append(value[:320])
    return {"name": name, "phones": phones, "emails": emails} if name or phones else None


def contacts_attachment(message: Any) -> NewAttachment | None:
    parts = (
        [message.contactMessage]
        if message.HasField("contactMessage")
        else list(message.contactsArrayMessage.contacts)[:MAX_CARDS]
    )
    cards = [card for card in (vcard_card(p.vcard, p.displayName) for p in parts) if card]
    return NewAttachment(kind="contacts", data={"cards": cards}) if cards else None


def content_of(message: Any) -> tuple[str, str, tuple[NewAttachment, ...]]:
    """(text, kind, attachments) of a neonize Message proto."""
    message = unwrap(message)
    if message.conversation:
        return str(message.conversation), "text", ()
    if message.HasField("extendedTextMessage"):
        return str(message.extendedTextMessage.text), "text", ()
    for field, kind in MEDIA_FIELDS.items():
        if message.HasField(field):
            attachment = media_attachment(message, field)
            return attachment.caption or "", kind, (attachment,)
    for field in ("locationMessage", "liveLocationMessage"):
        if message.HasField(field) and (location := location_attachment(getattr(message, field))):
            return "", "location", (location,)
    has_contacts = message.HasField("contactMessage") or message.HasField("contactsArrayMessage")
    if has_contacts and (contacts := contacts_attachment(message)):
        return "", "contacts", (contacts,)
    for field, _ in message.ListFields():
        return "", field.name.removesuffix("Message") or "unknown", ()
    return "", "unknown", ()


def outgoing_message(kind: str, upload: Any, mime_type: str, file_name: str | None, caption: str | None) -> Any:
    """The proto that sends a file neonize uploaded (`upload` is its UploadResponse)."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message

    field = {"image": "imageMessage", "audio": "audioMessage", "video": "videoMessage"}.get(kind, "documentMessage")
    message = Message()
    part = getattr(message, field)
    part.URL = upload.url
    part.directPath = upload.DirectPath
    part.mediaKey = upload.MediaKey
    part.fileEncSHA256 = upload.FileEncSHA256
    part.fileSHA256 = upload.FileSHA256
    part.fileLength = upload.FileLength
    part.mimetype = mime_type
    if field == "audioMessage":
        part.PTT = mime_type == "audio/ogg"  # an Opus voice note plays as one
    elif caption:
        part.caption = caption
    if field == "documentMessage" and file_name:
        part.fileName = file_name
        part.title = file_name
    return message
