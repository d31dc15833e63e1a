"""The WhatsApp Cloud API (Meta's official API): messages come in through the webhook
(papo.whatsapp.webhook), go out through the Graph API. A session's `config` holds its
`phone_number_id` and access token (stored encrypted). No QR code: a number is WORKING, and
verified as the session's (so its webhooks reach it), once the Graph API answers for that very
number with the session's token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from papo.whatsapp.transports.base import (
    MediaStream,
    MediaUnavailable,
    OutgoingMedia,
    SessionEvents,
    SessionKey,
    Transport,
)


class CloudApiError(MediaUnavailable):
    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the Graph API's HTTP status; None when it could not be reached

    @property
    def refused(self) -> bool:
        """The Graph API answered and said no (a bad token, a number it does not give this token),
        as opposed to being unreachable or failing on its side."""
        return self.status is not None and 400 <= self.status < 500


MEDIA_CHUNK = 64 * 1024
META_MEDIA_DOMAINS = (
    "fbsbx.com",
    "facebook.com",
    "fbcdn.net",
    "whatsapp.net",
)  # where the Graph API's media URLs point
MEDIA_TIMEOUT = httpx.Timeout(30.0, connect=10.0)  # between bytes, not for the whole file


class CloudTransport(Transport):
    kind = "cloud"
    sends_from_any_process = True

    def __init__(self, store_dir: Path, http: httpx.AsyncClient, graph_url: str) -> None:
        super().__init__(store_dir)
        self.http = http
        self.graph_url = graph_url.rstrip("/")

    def _auth(self, config: dict[str, Any]) -> tuple[str, dict[str, str]]:
        number, token = config.get("phone_number_id"), config.get("access_token")
        if not number or not token:
            raise CloudApiError("a Cloud API session needs config.phone_number_id and config.access_token")
        return str(number), {"Authorization": f"Bearer {token}"}

    async def _call(self, method: str, url: str, headers: dict[str, str], body: Any = None) -> dict[str, Any]:
        try:
            response = await self.http.request(method, url, headers=headers, json=body, timeout=15.0)
        except httpx.HTTPError as exc:
            raise CloudApiError(f"the Graph API could not be reached: {exc}") from exc
        try:
            payload: dict[str, Any] = response.json()
        except ValueError:
            payload = {}
        if response.status_code >= 400:
            error = payload.get("error", {}) if isinstance(payload.get("error"), dict) else {}
            raise CloudApiError(
                f"Graph API {response.status_code}: {error.get('message') or response.text[:200]}", response.status_code
            )
        return payload

    async def start(self, key: SessionKey, config: dict[str, Any], events: SessionEvents) -> None:
        number, headers = self._auth(config)
        try:
            details = await self._call("GET", f"{self.graph_url}/{number}", headers)
        except CloudApiError as exc:
            await (events.rejected if exc.refused else events.failed)(str(exc))
            return
        if str(details.get("id", number)) != number:
            await events.rejected("the Graph API answered for another number")
            return
        phone = details.get("display_phone_number")
        if isinstance(phone, str) and phone:
            await events.paired(phone)
        await events.verified(number)

    async def stop(self, key: SessionKey) -> None:
        return None  # nothing held open: the webhook brings messages whatever runs

    async def forget(self, key: SessionKey) -> bool:
        return False  # the credentials are the session's config, removed with it

    def has_credentials(self, key: SessionKey) -> bool:
        return False

    async def send_text(self, key: SessionKey, config: dict[str, Any], to_wa_id: str, text: str) -> str:
        return await self._send(config, to_wa_id, {"type": "text", "text": {"body": text}})

    async def send_media(self, key: SessionKey, config: dict[str, Any], to_wa_id: str, media: OutgoingMedia) -> str:
        """Upload the file to the number's media store, then send a message that names it."""
        number, headers = self._auth(config)
        files = {"file": (media.file_name or media.kind, media.content, media.mime_type)}
        form = {"messaging_product": "whatsapp", "type": media.mime_type}
        try:
            response = await self.http.post(
                f"{self.graph_url}/{number}/media", headers=headers, data=form, files=files, timeout=MEDIA_TIMEOUT
            )
        except httpx.HTTPError as exc:
            raise CloudApiError(f"the media upload failed: {exc}") from exc
        uploaded = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code >= 400 or not isinstance(uploaded.get("id"), str):
            error: dict[str, Any] = uploaded["error"] if isinstance(uploaded.get("error"), dict) else {}
            said = f": {error['message']}" if isinstance(error.get("message"), str) else ""
            status = response.status_code
            raise CloudApiError(f"the Graph API refused the upload ({status}){said}", status)
        part: dict[str, Any] = {"id": uploaded["id"]}
        if media.caption and media.kind != "audio":  # WhatsApp shows no caption under audio
            part["caption"] = media.caption
        if media.kind == "document" and media.file_name:
            part["filename"] = media.file_name
        return await self._send(config, to_wa_id, {"type": media.kind, media.kind: part})

    async def _send(self, config: dict[str, Any], to_wa_id: str, message: dict[str, Any]) -> str:
        number, headers = self._auth(config)
        body = {"messaging_product": "whatsapp", "to": to_wa_id, **message}
        payload = await self._call("POST", f"{self.graph_url}/{number}/messages", headers, body)
        messages = payload.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
            raise CloudApiError("the Graph API accepted the message but returned no id")
        return str(messages[0].get("id"))

    def _meta_media_url(self, url: str) -> bool:
        """The number's token goes only to the Graph API's own host or Meta's media hosts."""
        parts, graph = urlsplit(url), urlsplit(self.graph_url)
        host = (parts.hostname or "").lower()
        on_meta = any(host == domain or host.endswith("." + domain) for domain in META_MEDIA_DOMAINS)
        return parts.scheme == graph.scheme and (host == (graph.hostname or "").lower() or on_meta)

    @asynccontextmanager
    async def open_media(
        self, key: SessionKey, config: dict[str, Any], source: dict[str, Any]
    ) -> AsyncIterator[MediaStream]:
        """The Graph API gives a short-lived URL for the media id; the file is fetched from it with the
        number's token, as a stream. The token goes only to a URL of the Graph API's own scheme."""
        _, headers = self._auth(config)
        media_id = source.get("media_id")
        if not isinstance(media_id, str) or not media_id.isascii() or "/" in media_id:
            raise CloudApiError("no media id to download")
        details = await self._call("GET", f"{self.graph_url}/{media_id}", headers)
        url = details.get("url")
        if not isinstance(url, str) or not self._meta_media_url(url):
            raise CloudApiError("the Graph API gave no usable media URL")
        declared = details.get("file_size")
        size = int(declared) if isinstance(declared, int | str) and str(declared).isdigit() else None
        mime_type = details.get("mime_type") if isinstance(details.get("mime_type"), str) else None
        try:
            async with self.http.stream("GET", url, headers=headers, timeout=MEDIA_TIMEOUT) as response:
                if response.status_code >= 400:
                    raise CloudApiError(f"the media download answered {response.status_code}", response.status_code)
                yield MediaStream(mime_type, size, response.aiter_bytes(MEDIA_CHUNK))
        except httpx.HTTPError as exc:
            raise CloudApiError(f"the media download failed: {exc}") from exc
