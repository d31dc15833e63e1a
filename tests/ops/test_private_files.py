"""Keys and secrets on disk are the server user's alone: files 0600 from their first byte (no moment
in which another local user could open them), directories 0700, and the data directory tightened
at start when it was left open."""

from __future__ import annotations

import os
import secrets
import stat
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from papo.auth.tokens import SigningKey
from papo.crypto import KeyBox
from papo.db.engine import Database, locate_database
from papo.db.server import app_role_password
from papo.demo import ensure_demo
from papo.private_files import read_or_create_private_file, write_private_file
from papo.settings import Settings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask: whatever papo does not restrict itself ends up world-readable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def link_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The mode of each file at the moment it is given its real name (os.link / os.replace)."""
    seen: list[tuple[str, int]] = []
    real_link, real_replace = os.link, os.replace

    def link(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        seen.append((str(target), mode(Path(source))))
        real_link(source, target, *args, **kwargs)

    def replace(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        seen.append((str(target), mode(Path(source))))
        real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def test_server_secrets_are_private_from_the_first_byte(
    tmp_path: Path, open_umask: None, link_spy: list[tuple[str, int]], settings: Settings
) -> None:
    data = tmp_path / "fresh" / "data"
    own = settings.model_copy(update={"data_dir": data, "jwt_private_key": None, "secret_key": None})
    SigningKey.load(own)
    KeyBox(own)
    app_role_password(data)
    written = {
        data / "keys" / "jwt-signing-key.pem",
        data / "keys" / "secret.key",
        data / "app-role-password",
    }
    assert {path: mode(path) for path in written} == dict.fromkeys(written, 0o600)
    # Complete and private before it had its name: there was never a readable or half-written key.
    assert {target for target, _ in link_spy} == {str(path) for path in written}
    assert all(linked_mode == 0o600 for _, linked_mode in link_spy)
    assert mode(data) == mode(data / "keys") == mode(data.parent) == 0o700
    assert sorted(p.name for p in (data / "keys").iterdir()) == ["jwt-signing-key.pem", "secret.key"]  # no temp left


def test_concurrent_first_starts_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "secret.key"
    barrier = threading.Barrier(8)
    results: list[bytes] = []

    def start() -> None:
        barrier.wait()
        results.append(read_or_create_private_file(path, lambda: secrets.token_bytes(32)))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and len(set(results)) == 1
    assert results[0] == path.read_bytes()
    assert [p.name for p in path.parent.iterdir()] == ["secret.key"]


def test_secret_files_left_open_by_an_older_papo_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "app-role-password"
    path.write_text("from-before")
    path.chmod(0o644)
    assert app_role_password(tmp_path) == "from-before"
    assert mode(path) == 0o600


def test_replacing_a_private_file_keeps_it_private(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "demo.json"
    write_private_file(path, b"first")
    write_private_file(path, b"second")
    assert path.read_bytes() == b"second" and mode(path) == 0o600


async def test_demo_account_file_is_private(tmp_path: Path, open_umask: None, settings: Settings, db: Database) -> None:
    own = settings.model_copy(update={"data_dir": tmp_path / "demo-data"})
    await ensure_demo(own, db)
    assert mode(own.data_dir / "demo.json") == 0o600
    assert mode(own.data_dir) == 0o700


def test_the_data_directory_is_made_private_at_start(tmp_path: Path, settings: Settings) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)
    location = locate_database(settings.model_copy(update={"data_dir": loose}))
    location.stop()
    assert mode(loose) == 0o700
    created = tmp_path / "new" / "data"
    locate_database(settings.model_copy(update={"data_dir": created})).stop()
    assert mode(created) == 0o700
