"""The file-system blob store: streamed writes with a limit, ranges, atomic placement, safe keys."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from papo.blobs import BlobTooLarge, FileBlobStore


async def chunks_of(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def read_all(store: FileBlobStore, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, start, end)])


async def test_write_read_ranges_and_delete(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    body = secrets.token_bytes(200_000)
    written = await store.write("media/a1/b2", chunks_of(body), max_bytes=len(body))
    assert (written.size, written.sha256) == (len(body), hashlib.sha256(body).hexdigest())
    assert written.head == body[:8192]
    assert await read_all(store, "media/a1/b2") == body
    assert await read_all(store, "media/a1/b2", 70_000, 140_000) == body[70_000:140_001]
    assert await read_all(store, "media/a1/b2", len(body) - 5) == body[-5:]
    await store.delete("media/a1/b2")
    await store.delete("media/a1/b2")  # deleting twice is no error
    assert not (tmp_path / "media" / "a1" / "b2").exists()


async def test_a_file_over_the_limit_leaves_nothing(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    with pytest.raises(BlobTooLarge):
        await store.write("media/t/x", chunks_of(secrets.token_bytes(5000)), max_bytes=4999)
    assert list((tmp_path / "media" / "t").iterdir()) == []


async def test_a_failed_write_keeps_the_previous_file(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    await store.write("media/t/y", chunks_of(b"first"), max_bytes=100)

    async def broken() -> AsyncIterator[bytes]:
        yield b"second, partly"
        raise ConnectionError("the download broke off")

    with pytest.raises(ConnectionError):
        await store.write("media/t/y", broken(), max_bytes=100)
    assert await read_all(store, "media/t/y") == b"first"
    assert [p.name for p in (tmp_path / "media" / "t").iterdir()] == ["y"]


@pytest.mark.parametrize("key", ["../etc/passwd", "media/../../x", "/abs", "Media/UPPER", "", "a\x00b"])
async def test_keys_from_outside_are_refused(tmp_path: Path, key: str) -> None:
    store = FileBlobStore(tmp_path)
    with pytest.raises(ValueError, match="not a blob key"):
        await store.write(key, chunks_of(b"x"), max_bytes=10)
