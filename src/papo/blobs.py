"""Where files live: a blob store behind one small interface (the file system by default).

Blobs are written from a stream, never held whole in memory: the size limit is enforced while
writing, the sha256 computed on the way, and the first bytes kept so the caller can check what the
file really is. A write lands under a temporary name and is renamed into place, so a reader never
sees half a file and a failed write leaves nothing behind. Keys are papo's own (tenant and
attachment ids), never names that came from outside."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anyio

from papo.private_files import ensure_private_dir
from papo.settings import Settings

READ_CHUNK = 64 * 1024
HEAD_BYTES = 8192  # enough for any file signature puremagic knows
SAFE_KEY = re.compile(r"^[a-z0-9][a-z0-9/_.-]{0,300}$")


class BlobTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class WrittenBlob:
    size: int
    sha256: str
    head: bytes  # the first bytes, to tell what the file is


class BlobStore(Protocol):
    async def write(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int) -> WrittenBlob: ...

    def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """Bytes start..end (inclusive, as in an HTTP range); end None: to the last byte."""
        ...

    async def delete(self, key: str) -> None: ...


class Tally:
    """What a write has streamed so far: its size (refused past the limit as it grows), its sha256
    and its first bytes; every store counts the same way."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self.digest = hashlib.sha256()
        self.head = b""

    async def through(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise BlobTooLarge(self.max_bytes)
            if len(self.head) < HEAD_BYTES:
                self.head += chunk[: HEAD_BYTES - len(self.head)]
            self.digest.update(chunk)
            yield chunk

    def written(self) -> WrittenBlob:
        return WrittenBlob(self.size, self.digest.hexdigest(), self.head)


def checked_key(key: str) -> str:
    if not SAFE_KEY.match(key) or ".." in key:
        raise ValueError(f"not a blob key: {key!r}")
    return key


class FileBlobStore:
    """Blobs as files under a directory of the server's data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        return self.root / checked_key(key)

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int) -> WrittenBlob:
        target = self._path(key)
        ensure_private_dir(target.parent)
        partial = target.with_name(f".{target.name}.{secrets.token_hex(4)}.partial")
        tally = Tally(max_bytes)
        try:
            async with await anyio.open_file(partial, "wb") as out:
                async for chunk in tally.through(chunks):
                    await out.write(chunk)
            await anyio.to_thread.run_sync(os.replace, partial, target)
        except BaseException:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        return tally.written()

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        remaining = None if end is None else end - start + 1
        async with await anyio.open_file(self._path(key), "rb") as source:
            await source.seek(start)
            while remaining is None or remaining > 0:
                chunk = await source.read(READ_CHUNK if remaining is None else min(READ_CHUNK, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    async def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await anyio.to_thread.run_sync(self._path(key).unlink)


async def open_blob_store(settings: Settings, stack: contextlib.AsyncExitStack) -> BlobStore:
    """The configured store: an S3-compatible bucket when one is named, else files under data_dir."""
    if settings.media_s3_bucket:
        from papo.blobs_s3 import open_s3_store

        return await open_s3_store(settings, stack)
    return FileBlobStore(settings.data_dir / "blobs")
