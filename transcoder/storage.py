"""Object storage through prefect-aws `S3Bucket` / `AwsCredentials` blocks.

The bucket comes from settings: a saved block by name (production, the embedded
stack), or, when `TRANSCODE_S3_ENDPOINT` is set, a block built from the environment
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY). MinIO, SeaweedFS and AWS look the same.
Transfers stream from and to files (boto3 multipart); no video is held in memory.
Downloads land under a temporary name and are renamed, so a half file never looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

from .errors import (ConfigurationError, DiskFullError, RetryableError, StorageFullError,
                     storage_full_code)
from .settings import Settings, get_settings
from .workspace import write_aside

# Checksums only where the API requires them: segments carry their own sha256, and a
# CRC32 over every byte of every transfer costs CPU the encoders could use.
CLIENT_CONFIG = {"request_checksum_calculation": "when_required", "response_checksum_validation": "when_required",
                 "signature_version": "s3v4",  # presigned links: SigV4 (AWS and MinIO want it)
                 # connections kept per client: a worker's tasks share one, each with several
                 # requests in flight (MANY_IN_FLIGHT, s3_transfer_threads); boto3's default is 10
                 "max_pool_connections": 32,
                 # A restarted or briefly unreachable S3 server: each call retries with backoff
                 # (standard mode, up to 20 s apart; about 40 s in all), then a task retry
                 # starts over. Measured: a 20 s outage mid-run is ridden out (tests/test_chaos.py).
                 "retries": {"mode": "standard", "max_attempts": 9}}

T = TypeVar("T")
R = TypeVar("R")
CHUNK_TAG = "transcode-intermediate=chunk"  # see deployments/setup.py LIFECYCLE_RULES
_lock = threading.Lock()
_cache: dict[tuple, Any] = {}


def make_bucket_block(settings: Settings):
    """An S3Bucket block from the environment (not saved)."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not key or not secret:
        raise RuntimeError("TRANSCODE_S3_ENDPOINT is set but AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not")
    creds = AwsCredentials(
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=settings.s3_region,
        aws_client_parameters=AwsClientParameters(endpoint_url=settings.s3_endpoint, config=CLIENT_CONFIG),
    )
    return S3Bucket(bucket_name=settings.bucket, credentials=creds)


def get_bucket(settings: Settings | None = None):
    settings = settings or get_settings()
    ident = (settings.s3_endpoint, settings.bucket, settings.storage_block)
    with _lock:
        if ident not in _cache:
            if settings.s3_endpoint:
                _cache[ident] = make_bucket_block(settings)
            else:
                from prefect_aws import S3Bucket

                _cache[ident] = S3Bucket.load(settings.storage_block, _sync=True)
        return _cache[ident]


def forget_buckets() -> None:
    with _lock:
        _cache.clear()


class DirectBucket:
    """What `Storage` uses of an S3Bucket block, over a plain boto3 session: for a command
    that answers without Prefect (importing it costs seconds, transcoder/reuse.py)."""

    def __init__(self, endpoint: str | None, access_key: str | None, secret_key: str | None, bucket: str, region: str,
                 attempts: int = CLIENT_CONFIG["retries"]["max_attempts"]):
        import boto3

        self.attempts = attempts
        self.bucket_name = bucket
        self.endpoint = endpoint
        self.credentials = self  # the block's credentials hand out the session and client
        self.session = boto3.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                     region_name=region)

    def get_boto3_session(self):
        return self.session

    @cached_property
    def _client(self):
        from botocore.config import Config

        # a server that does not answer should send the caller its other way quickly
        config = {**CLIENT_CONFIG, "retries": {"mode": "standard", "max_attempts": self.attempts},
                  "connect_timeout": 3, "read_timeout": 20}
        return self.session.client("s3", endpoint_url=self.endpoint, config=Config(**config))

    def get_s3_client(self):
        return self._client

    def upload_from_path(self, path: str, key: str, **kwargs: Any) -> None:
        self._client.upload_file(path, self.bucket_name, key, **kwargs)

    def download_object_to_path(self, key: str, path: str, **kwargs: Any) -> None:
        self._client.download_file(self.bucket_name, key, path, **kwargs)


def direct_bucket(settings: Settings, api_url: str | None, attempts: int = 2) -> DirectBucket | None:
    """The configured bucket without importing Prefect: from the environment when
    `TRANSCODE_S3_ENDPOINT` is set, else the saved S3Bucket block read over Prefect's REST
    API (`api_url`). None where only prefect-aws knows how to connect (a bucket folder,
    a profile, an assumed role)."""
    if settings.s3_endpoint:
        return DirectBucket(settings.s3_endpoint, os.environ.get("AWS_ACCESS_KEY_ID", ""),
                            os.environ.get("AWS_SECRET_ACCESS_KEY", ""), settings.bucket, settings.s3_region, attempts)
    if not api_url:
        return None
    import base64
    import urllib.parse
    import urllib.request

    headers = {"Accept": "application/json"}
    if os.environ.get("PREFECT_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['PREFECT_API_KEY']}"
    elif os.environ.get("PREFECT_API_AUTH_STRING"):
        headers["Authorization"] = "Basic " + base64.b64encode(os.environ["PREFECT_API_AUTH_STRING"].encode()).decode()
    url = (f"{api_url.rstrip('/')}/block_types/slug/s3-bucket/block_documents/name/"
           f"{urllib.parse.quote(settings.storage_block, safe='')}?include_secrets=true")
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as resp:  # nosec B310
        data = json.load(resp)["data"]
    creds = data.get("credentials") or {}
    params = creds.get("aws_client_parameters") or {}
    if (data.get("bucket_folder") or "aws_access_key_id" not in creds or creds.get("profile_name")
            or creds.get("assume_role_arn") or creds.get("aws_session_token") or params.get("verify") is not None
            or params.get("verify_cert_path") or params.get("use_ssl") is False):
        return None  # MinIO-style credentials, a profile, a role, own TLS settings: prefect-aws's to apply
    return DirectBucket(params.get("endpoint_url"), creds.get("aws_access_key_id"),
                        creds.get("aws_secret_access_key"), data["bucket_name"], creds.get("region_name") or
                        settings.s3_region, attempts)


# Requests in flight for many small objects (segments, HLS files, lookups): one after
# another, each waits out a round trip; a 10-minute video's merge makes about 1,000.
MANY_IN_FLIGHT = 8


# Set in in_parallel's threads: a transfer there is one of many in flight already, so it
# runs in its own thread. boto3 otherwise starts threads of its own for every transfer
# (s3_transfer_threads and one for the file's writes); the merge, 8 segments in flight
# per rung and every rung at once, ran 73 threads, and their stacks made the worker's
# peak (bench_memory, 10 minutes: 151 MiB against 143 before the merge).
_pooled = threading.local()

# Pieces (256 KiB each) a threaded download may hold in memory, read but not yet written:
# boto3 allows 100. Its parts arrive faster than its one writer thread gets the GIL while
# the merge's other threads run, so the queue filled: downloading a 30-minute video's
# audio track (29 MB, three times at once: each rung's assembly and the audio's HLS
# package) held 12 MiB of it (tracemalloc), the worker's peak at the merge's start
# (bench_memory, 30 minutes: 156.0-157.6 MiB; 153 with 8, the start's rise gone).
IO_QUEUE = 8


def stamp_of(etags: dict[str, str]) -> str:
    """`Storage.stamp` of a listing already in hand: {key: ETag}."""
    return hashlib.sha256(json.dumps(etags, sort_keys=True).encode()).hexdigest()[:24]


def in_parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`fn` over `items`, MANY_IN_FLIGHT at a time; results in order, the first error raised."""
    items = list(items)
    if len(items) < 2:
        return [fn(item) for item in items]

    def pooled(item: T) -> R:
        _pooled.inside = True
        return fn(item)

    with ThreadPoolExecutor(max_workers=min(MANY_IN_FLIGHT, len(items))) as pool:
        return list(pool.map(pooled, items))


class Storage:
    """The few storage operations the pipeline needs, on one bucket."""

    def __init__(self, bucket=None):
        self.block = bucket or get_bucket()
        folder = getattr(self.block, "bucket_folder", "")
        if folder:
            # The block applies its folder to uploads and downloads, but the engine's direct
            # requests (lookups, JSON records, locks, presigned links), the ingest API and the
            # bucket notifications name keys from the bucket's root: half the objects would
            # land where the other half is never looked for.
            name = getattr(self.block, "_block_document_name", None) or get_settings().storage_block
            raise ConfigurationError(
                f"storage block {name!r} has bucket_folder {folder!r}, which the engine does not support: it lays "
                "out its own keys from the bucket's root ({video_id}/..., encoded/...); save the block without a "
                "folder and give the engine a bucket of its own")

    @cached_property
    def client(self):
        return self.block.credentials.get_s3_client()

    @cached_property
    def _transfer_configs(self):
        from boto3.s3.transfer import TransferConfig

        return (TransferConfig(max_concurrency=get_settings().s3_transfer_threads, max_io_queue=IO_QUEUE),
                TransferConfig(use_threads=False))

    @property
    def transfer_config(self):
        """Parts in flight (s3_transfer_threads) for a transfer on its own; none in `in_parallel`."""
        threaded, in_this_thread = self._transfer_configs
        return in_this_thread if getattr(_pooled, "inside", False) else threaded

    @property
    def name(self) -> str:
        return self.block.bucket_name

    def upload(self, path: Path, key: str, metadata: dict[str, str] | None = None, content_type: str | None = None) -> None:
        extra: dict[str, Any] = {}
        if metadata:
            extra["Metadata"] = metadata
        if content_type:
            extra["ContentType"] = content_type
        if "/chunks/" in key:  # intermediates: the bucket's lifecycle rule expires what a crash leaves
            extra["Tagging"] = CHUNK_TAG
        try:
            self.block.upload_from_path(str(path), key, Config=self.transfer_config,
                                        **({"ExtraArgs": extra} if extra else {}))
        except Exception as exc:  # boto3 raises many types; all mean "storage failed"
            if full := storage_full_code(exc):
                raise StorageFullError(f"upload of {key}", full) from exc
            raise RetryableError(f"upload of {key} failed: {exc}") from exc

    def download(self, key: str, path: Path) -> Path:
        self._download(key, path, lambda tmp: self.block.download_object_to_path(key, str(tmp),
                                                                                 Config=self.transfer_config))
        return path

    def download_hashed(self, key: str, path: Path) -> str:
        """Download `key` to `path` and return the bytes' sha256, in one pass, 64 KiB a read.
        The merge fetches and checks 16 segments at once: downloading, then reading each file
        again to hash it, added to the worker's peak (30 minutes of video, at the merge's start:
        166 MiB; 156-158 hashing as it downloads; the rest of that rise was the audio's
        download queue, IO_QUEUE)."""
        digest = hashlib.sha256()

        def stream(tmp: Path) -> None:
            body = self.client.get_object(Bucket=self.name, Key=key)["Body"]
            with open(tmp, "wb") as f:
                for block in body.iter_chunks(1 << 16):
                    digest.update(block)
                    f.write(block)

        self._download(key, path, stream)
        return digest.hexdigest()

    def _download(self, key: str, path: Path, write: Callable[[Path], None]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_aside(path, write, f"download of {key}")
        except DiskFullError:
            raise
        except Exception as exc:
            raise RetryableError(f"download of {key} failed: {exc}") from exc

    def head(self, key: str) -> dict | None:
        """Size, user metadata and ETag of an object, or None when it does not exist."""
        try:
            resp = self.client.head_object(Bucket=self.name, Key=key)
        except Exception as exc:  # an error answer, or the server unreachable after botocore's retries
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise RetryableError(f"storage lookup of {key} failed: {exc}") from exc
        return {"size": resp["ContentLength"], "metadata": resp.get("Metadata", {}), "etag": resp.get("ETag")}

    def holds(self, key: str, sha256: str, size: int | None = None, etag: str | None = None) -> bool:
        """Whether `key` is the object with this sha256 (metadata written at upload).

        With `etag` (the one seen right after the upload), bytes written over the object
        since, even with its metadata copied, do not pass: the server's ETag changed."""
        found = self.head(key)
        return (bool(found) and found["metadata"].get("sha256") == sha256 and size in (None, found["size"])
                and etag in (None, found["etag"]))

    def holds_each(self, objects: list[tuple[str, str, int | None, str | None]]) -> list[bool]:
        """`holds` for many (key, sha256, size, etag) at once."""
        return in_parallel(lambda o: self.holds(*o), objects)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.name, Key=key)
        except Exception as exc:
            raise RetryableError(f"delete of {key} failed: {exc}") from exc

    def put_json(self, key: str, value: Any) -> None:
        self.put_text(key, json.dumps(value, indent=2, sort_keys=True, default=str), "application/json")

    def put_text(self, key: str, text: str, content_type: str) -> None:
        """A small object written from memory (a playlist, a page, a report)."""
        try:
            self.client.put_object(Bucket=self.name, Key=key, Body=text.encode(), ContentType=content_type)
        except Exception as exc:
            if full := storage_full_code(exc):
                raise StorageFullError(f"write of {key}", full) from exc
            raise RetryableError(f"write of {key} failed: {exc}") from exc

    def get_json(self, key: str) -> Any | None:
        try:
            resp = self.client.get_object(Bucket=self.name, Key=key)
            body = resp["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        except Exception as exc:  # boto3 raises many types; all mean "storage failed"
            raise RetryableError(f"read of {key} failed: {exc}") from exc
        return json.loads(body)

    def list_objects(self, prefix: str) -> list[dict]:
        """Every object under `prefix`: Key, ETag, Size, LastModified."""
        found = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix):
                found += page.get("Contents", [])
        except Exception as exc:
            raise RetryableError(f"listing of {prefix} failed: {exc}") from exc
        return found

    def etags(self, prefix: str) -> dict[str, str]:
        """ETag of every object under `prefix`, by key (one listing request per 1000)."""
        return {o["Key"]: o["ETag"] for o in self.list_objects(prefix)}

    def stamp(self, prefix: str, only: Iterable[str] | None = None) -> str:
        """One hash of what is stored under `prefix` (or of just the keys `only`): each
        object's key and ETag. Taken when a cached task writes its files and compared when
        its result is reused, it tells whether they are still the ones it wrote, not deleted
        or written over by a run with other settings (the keys are the same)."""
        found = self.etags(prefix)
        if only is not None:
            wanted = set(only)
            found = {k: v for k, v in found.items() if k in wanted}
        return stamp_of(found)

    def list_keys(self, prefix: str) -> list[str]:
        return [o["Key"] for o in self.list_objects(prefix)]

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            self.client.delete_objects(Bucket=self.name, Delete={"Objects": batch, "Quiet": True})
        return len(keys)

    def presigned_url(self, key: str, expires: int = 3600, public: bool = False) -> str:
        """A GET link. `public`: for a viewer's browser, signed for TRANSCODE_PUBLIC_S3_ENDPOINT
        when set (inside the compose network the server is `minio:9000`, which no browser
        reaches); without `public`, for this stack's own processes (ffmpeg reading a rung)."""
        client = self.public_client if public and get_settings().public_s3_endpoint else self.client
        return client.generate_presigned_url("get_object", Params={"Bucket": self.name, "Key": key}, ExpiresIn=expires)

    @cached_property
    def public_client(self):
        from botocore.config import Config

        # SigV4 signs the host name: the link must be signed for the host the browser asks
        session = self.block.credentials.get_boto3_session()
        return session.client("s3", endpoint_url=get_settings().public_s3_endpoint, config=Config(**CLIENT_CONFIG))
