"""What papo needs from a way of talking to WhatsApp. Transports report what happens through the
`SessionEvents` they are given; they never touch the database themselves."""

from __future__ import annotations

import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from papo.chat.attachments import NewAttachment


@dataclass(frozen=True)
class InboundMessage:
    """A customer's message as a transport received it."""

    external_id: str  # WhatsApp's message id: the same delivery twice is one message
    from_wa_id: str
    contact_name: str | None
    text: str  # a text's body, or a media message's caption
    kind: str = "text"  # a kind papo does not keep (reactions, buttons...) is stored as "unsupported"
    attachments: tuple[NewAttachment, ...] = ()  # media to download, a location, shared contacts


@dataclass(frozen=True)
class InboundReceipt:
    """WhatsApp's word on a message papo sent: sent, delivered, read or failed."""

    external_id: str
    status: str


class SessionEvents(Protocol):
    """Callbacks into the session service (each updates the database and emits a realtime event)."""

    async def message(self, inbound: InboundMessage) -> None: ...
    async def receipt(self, external_id: str, status: str) -> None: ...

    async def qr(self, code: str) -> None: ...
    async def paired(self, phone_number: str) -> None: ...
    async def connected(self) -> None: ...
    async def disconnected(self, reason: str) -> None: ...
    async def logged_out(self, reason: str) -> None: ...
    async def failed(self, reason: str) -> None: ...

    # Cloud API only: the Graph API accepted the session's token for this phone_number_id (the
    # session is WORKING and the number's webhooks reach it), or refused it (never routed to it).
    async def verified(self, phone_number_id: str) -> None: ...
    async def rejected(self, reason: str) -> None: ...


@dataclass(frozen=True)
class MediaStream:
    """A file being downloaded from WhatsApp: what WhatsApp says it is, and its bytes as they come."""

    mime_type: str | None
    declared_size: int | None
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class OutgoingMedia:
    """A file an agent sends: checked against WhatsApp's limits before it got here."""

    kind: str  # image, audio, video or document
    mime_type: str
    file_name: str | None
    caption: str | None
    content: IO[bytes]  # a spooled copy from the blob store, at its start


STORE_SLUG = re.compile(r"[0-9a-f]{32}-[0-9a-f]{32}")


class MediaUnavailable(RuntimeError):
    """This transport cannot fetch that media (not now, or not at all: the caller retries a while)."""


class MediaRefused(Exception):
    """That media is not to be fetched at all (the reason is kept with the message; no retry)."""


@dataclass(frozen=True)
class SessionKey:
    tenant_id: uuid.UUID
    session_id: uuid.UUID

    @property
    def slug(self) -> str:
        """A file-system-safe name for the session's credential store."""
        return f"{self.tenant_id.hex}-{self.session_id.hex}"


class Transport(ABC):
    """One kind of WhatsApp connection (neonize, Cloud API, or the test fake)."""

    kind: str
    # A Cloud API number sends over HTTP from any process; a paired device only from the process
    # that holds its connection, so other processes forward its sends there.
    sends_from_any_process: bool = False

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir  # where this transport keeps per-session credentials

    @abstractmethod
    async def start(self, key: SessionKey, config: dict[str, Any], events: SessionEvents) -> None:
        """Begin connecting (return quickly; progress arrives through `events`)."""

    @abstractmethod
    async def stop(self, key: SessionKey) -> None:
        """Disconnect, keeping credentials so a later start needs no new QR scan."""

    @abstractmethod
    async def forget(self, key: SessionKey) -> bool:
        """Log out and delete the stored credentials; True if there were any."""

    @abstractmethod
    def has_credentials(self, key: SessionKey) -> bool: ...

    def credentials_problem(self, key: SessionKey) -> str | None:
        """Why the session's stored credentials cannot be used (checked before a restore); None: fine."""
        return None

    @abstractmethod
    async def send_text(self, key: SessionKey, config: dict[str, Any], to_wa_id: str, text: str) -> str:
        """Send a text; returns WhatsApp's id of the sent message (raises when it cannot be sent)."""

    def open_media(
        self, key: SessionKey, config: dict[str, Any], source: dict[str, Any]
    ) -> AbstractAsyncContextManager[MediaStream]:
        """Download a customer's media (`source` is what the transport put in the attachment)."""
        raise MediaUnavailable(f"the {self.kind} transport does not download media")

    async def send_media(self, key: SessionKey, config: dict[str, Any], to_wa_id: str, media: OutgoingMedia) -> str:
        """Send a file; returns WhatsApp's id of the sent message (raises when it cannot be sent)."""
        raise MediaUnavailable(f"the {self.kind} transport does not send files yet")

    def stored_sessions(self) -> list[str]:
        """Slugs of every credential store on disk (to find orphans); files not named by papo (an
        operator's backup copy, say) are not counted, so never removed."""
        if not self.store_dir.exists():
            return []
        return sorted({path.stem for path in self.store_dir.iterdir() if STORE_SLUG.fullmatch(path.stem)})

    def remove_store(self, slug: str) -> bool:
        """The session's store and its companions (SQLite's -wal and -shm files)."""
        if not STORE_SLUG.fullmatch(slug):
            raise ValueError(f"not a credential store's name: {slug!r}")
        removed = False
        for path in self.store_dir.glob(f"{slug}.*"):
            path.unlink(missing_ok=True)
            removed = True
        return removed
