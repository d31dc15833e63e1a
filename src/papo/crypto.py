"""The server's secret key and what is derived from it: encryption of secrets at rest (provider
keys, WhatsApp tokens, webhook signing secrets) and the root of other server-side keys (CSRF,
sealed OIDC sign-ins, e-mail confirmation links)."""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

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
