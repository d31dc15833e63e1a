"""The server's secret key and what is derived from it: encryption of secrets at rest (provider
keys, WhatsApp tokens, webhook signing secrets) and the root of other server-side keys (CSRF,
sealed OIDC sign-ins, e-mail confirmation links)."""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from svix.webhooks import Webhook

from papo.private_files import read_or_create_private_file
from papo.settings import Settings


class KeyBox:
    """Encrypts secrets at rest with the server's secret key (Fernet: AES-128-CBC + HMAC)."""

    def __init__(self, settings: Settings) -> None:
        self.secret = self._load(settings)  # also the root of other server-side keys (CSRF)
        self.fernet = Fernet(self.secret)

    @staticmethod
    def _load(settings: Settings) -> bytes:
        if settings.secret_key:
            return settings.secret_key.encode()
        path: Path = settings.data_dir / "keys" / "secret.key"
        # 0600 from the first byte; concurrent first starts agree on one key (see papo.private_files).
        return read_or_create_private_file(path, Fernet.generate_key).strip()

    def seal(self, plaintext: str) -> str:
        return self.fernet.encrypt(plaintext.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self.fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise RuntimeError("a stored secret cannot be decrypted: was PAPO_SECRET_KEY changed?") from exc


def new_signing_secret() -> str:
    """A Standard Webhooks secret (`whsec_` + base64), for outbound webhooks and assistant tools."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def signature_headers(secret: str, message_id: str, body: str) -> dict[str, str]:
    """The Standard Webhooks headers that let a receiver verify papo sent `body` (any svix or
    standardwebhooks library checks them)."""
    signed_at = datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(signed_at.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, signed_at, body),
    }
