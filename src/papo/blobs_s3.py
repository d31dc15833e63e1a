"""Blobs as objects in an S3-compatible bucket (AWS S3, MinIO, Ceph, Cloudflare R2...), through
aiobotocore.

The same promises as the file store: a write streams, in parts of PART_BYTES (S3's multipart
upload; one PUT for a small file), so memory holds one part, not the file; the limit is enforced
and the sha256 computed while writing; an object appears only when complete (S3 makes a PUT or a
completed multipart upload visible at once), and a write that fails is aborted, leaving the
previous object, if any, as it was."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from papo.blobs import READ_CHUNK, Tally, WrittenBlob, checked_key
from papo.settings import Settings

PART_BYTES = 5 * 1024 * 1024  # S3's smallest part (all but the last)


class BlobStoreUnavailable(RuntimeError):
    """The configured bucket cannot be used (papo does not start with a store it cannot write)."""


class S3BlobStore:
    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        self.client = client  # an open aiobotocore S3 client
        self.bucket = bucket
        self.prefix = prefix

    def _name(self, key: str) -> str:
        return self.prefix + checked_key(key)

    async def write(self, key: str, chunks: AsyncIterable[bytes], *, max_bytes: int) -> WrittenBlob:
        name = self._name(key)
        tally = Tally(max_bytes)
        part = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []

        async def send_part() -> None:
            nonlocal upload_id
            if upload_id is None:
                started = await self.client.create_multipart_upload(Bucket=self.bucket, Key=name)
                upload_id = str(started["UploadId"])
            number = len(parts) + 1
            sent = await self.client.upload_part(
                Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=bytes(part)
            )
            parts.append({"ETag": sent["ETag"], "PartNumber": number})
            part.clear()

        try:
            async for chunk in tally.through(chunks):
                part += chunk
                if len(part) >= PART_BYTES:
                    await send_part()
            if upload_id is None:
                await self.client.put_object(Bucket=self.bucket, Key=name, Body=bytes(part))
            else:
                if part:
                    await send_part()
                await self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):  # the bucket's lifecycle rules clean up what this misses
                    await self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            raise
        return tally.written()

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        ranged = {"Range": f"bytes={start}-{'' if end is None else end}"} if start or end is not None else {}
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=self._name(key), **ranged)
        except self.client.exceptions.NoSuchKey as exc:
            raise FileNotFoundError(key) from exc
        async with response["Body"] as body:
            async for chunk in body.iter_chunks(READ_CHUNK):
                yield chunk

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=self._name(key))  # no error when absent

    async def check(self) -> None:
        try:
            await self.client.head_bucket(Bucket=self.bucket)
        except Exception as exc:
            raise BlobStoreUnavailable(f"the media bucket {self.bucket!r} cannot be used: {exc}") from exc


async def open_s3_store(settings: Settings, stack: AsyncExitStack) -> S3BlobStore:
    """The configured bucket's store, its client closed with `stack`; checked before papo serves."""
    from aiobotocore.config import AioConfig
    from aiobotocore.session import get_session

    assert settings.media_s3_bucket is not None
    client = await stack.enter_async_context(
        get_session().create_client(
            "s3",
            endpoint_url=settings.media_s3_endpoint_url,
            region_name=settings.media_s3_region,
            aws_access_key_id=settings.media_s3_access_key_id,
            aws_secret_access_key=settings.media_s3_secret_access_key,
            config=AioConfig(
                retries={"max_attempts": 4, "mode": "standard"},
                max_pool_connections=20,
                # a self-hosted endpoint (MinIO...) rarely has a DNS name per bucket
                s3={"addressing_style": "path" if settings.media_s3_endpoint_url else "auto"},
            ),
        )
    )
    store = S3BlobStore(client, settings.media_s3_bucket, settings.media_s3_prefix)
    await store.check()
    return store
