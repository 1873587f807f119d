"""A request body streamed into object storage with an S3 multipart upload.

At most one part (8 MiB by default) is held in memory: a full buffer is sent as a part
(boto3 in a worker thread, so the event loop keeps serving) before more of the body is
read. A body over the size limit, a client that goes away, or a storage error aborts
the multipart upload, so nothing (no object, no orphaned parts) is left behind.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
from anyio import to_thread

logger = logging.getLogger(__name__)


class TooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"the upload is larger than the limit of {limit} bytes")
        self.limit = limit


class EmptyBody(Exception):
    def __str__(self) -> str:
        return "the request body is empty: send the video's bytes as the body"


class MultipartUpload:
    """The three calls of an S3 multipart upload, on one key (blocking; run in a thread)."""

    def __init__(self, client: Any, bucket: str, key: str, content_type: str | None):
        self.client, self.bucket, self.key = client, bucket, key
        extra = {"ContentType": content_type} if content_type else {}
        self.upload_id: str = client.create_multipart_upload(Bucket=bucket, Key=key, **extra)["UploadId"]
        self.parts: list[dict] = []

    def put(self, data: bytes) -> None:
        number = len(self.parts) + 1
        resp = self.client.upload_part(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                       PartNumber=number, Body=data)
        self.parts.append({"ETag": resp["ETag"], "PartNumber": number})

    def complete(self) -> None:
        self.client.complete_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id,
                                              MultipartUpload={"Parts": self.parts})

    def abort(self) -> None:
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)


async def stream_to_storage(body: AsyncIterator[bytes], client: Any, bucket: str, key: str, *, limit: int,
                            part_bytes: int, content_type: str | None = None) -> int:
    """Write `body` to `bucket/key`; the number of bytes written.

    Raises TooLarge past `limit` bytes and EmptyBody for no bytes; on any failure the
    multipart upload is aborted before the exception goes on.
    """
    upload: MultipartUpload | None = None
    buffer = bytearray()
    size = 0
    try:
        async for chunk in body:
            size += len(chunk)
            if size > limit:
                raise TooLarge(limit)
            buffer += chunk
            if len(buffer) >= part_bytes:
                if upload is None:
                    upload = await to_thread.run_sync(MultipartUpload, client, bucket, key, content_type)
                part, buffer = bytes(buffer), bytearray()
                await to_thread.run_sync(upload.put, part)
        if size == 0:
            raise EmptyBody()
        if upload is None:  # smaller than one part: a plain PUT
            data = bytes(buffer)
            await to_thread.run_sync(lambda: client.put_object(Bucket=bucket, Key=key, Body=data,
                                                               **({"ContentType": content_type} if content_type else {})))
        else:
            if buffer:
                await to_thread.run_sync(upload.put, bytes(buffer))
            await to_thread.run_sync(upload.complete)
    except BaseException:
        if upload is not None:
            with anyio.CancelScope(shield=True):  # also when the request was cancelled
                try:
                    await to_thread.run_sync(upload.abort)
                except Exception:  # the original failure is the one to report
                    logger.exception("abort of the multipart upload of %s failed (upload id %s)", key, upload.upload_id)
        raise
    return size
