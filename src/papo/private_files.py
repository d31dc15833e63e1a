"""Files only the server's own user may read: keys, secrets, the demo account, the data directory.

A secret file is never world-readable, not even for a moment: it is written under a temporary name
opened with mode 0600 and O_EXCL (so nothing else can have opened that name first), flushed to
disk, and only then given its real name. Creating a missing secret links it into place, so two
processes starting at once agree on one secret (the first one wins, both read it)."""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

PRIVATE_DIR = 0o700
TRAVERSE_ONLY = 0o011
PRIVATE_FILE = 0o600


def ensure_private_dir(path: Path, *, traversable: bool = False) -> None:
    """Create `path` (and any missing parents) as 0700; tighten it if it is open to group or others.

    `traversable` keeps the search bit for others (0711: they may pass through to a child they own,
    never list or read): the embedded PostgreSQL started as root runs as its own system user and
    must reach its data directory inside this one. Secret files are 0600 either way. A directory
    papo may not change (someone else's) is left as it is, with a warning."""
    wanted = PRIVATE_DIR | (TRAVERSE_ONLY if traversable else 0)
    missing = [path, *(parent for parent in path.parents if not parent.exists())]
    for directory in reversed(missing):
        directory.mkdir(mode=wanted, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077 & ~wanted:
        try:
            path.chmod(mode & ~0o077 | wanted)
        except OSError as exc:
            log.warning(
                "data directory is readable by others and could not be restricted", path=str(path), error=str(exc)
            )
        else:
            log.warning("data directory was readable by others; restricted to its owner", path=str(path))


def _write_temporary(path: Path, data: bytes) -> Path:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(temporary, flags, PRIVATE_FILE)
    try:
        os.fchmod(descriptor, PRIVATE_FILE)  # whatever the umask left, exactly 0600
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def read_or_create_private_file(path: Path, make: Callable[[], bytes]) -> bytes:
    """The contents of the secret file at `path`, creating it from `make()` if it does not exist.

    An existing file that others can read (written by an older papo) is tightened to 0600."""
    if path.exists():
        _tighten(path)
        return path.read_bytes()
    if not path.parent.exists():  # the data directory itself is made private where papo starts
        ensure_private_dir(path.parent)
    temporary = _write_temporary(path, make())
    try:
        os.link(temporary, path)  # fails if the name exists: a concurrent process made it first
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: last writer wins, still never readable by others
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path.read_bytes()


def write_private_file(path: Path, data: bytes) -> None:
    """Replace (or create) the secret file at `path` atomically."""
    if not path.parent.exists():  # the data directory itself is made private where papo starts
        ensure_private_dir(path.parent)
    os.replace(_write_temporary(path, data), path)


def _tighten(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(PRIVATE_FILE)
