"""Storage details users rely on: public presigned links, the lifecycle tag of intermediates."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest


def test_public_links_are_signed_for_the_public_host(engine, monkeypatch):
    from transcoder.settings import reload_settings
    from transcoder.storage import Storage

    engine.s3.put_object(Bucket=engine.bucket, Key="a/page.html", Body=b"<p>hello</p>")
    internal = engine.s3.meta.endpoint_url  # http://127.0.0.1:PORT
    public = internal.replace("127.0.0.1", "localhost")  # the same server under another name
    monkeypatch.setenv("TRANSCODE_PUBLIC_S3_ENDPOINT", public)
    reload_settings()
    storage = Storage()
    link = storage.presigned_url("a/page.html", 600, public=True)
    assert link.startswith(public + "/")
    with urllib.request.urlopen(link, timeout=10) as resp:  # noqa: S310 - loopback
        assert resp.read() == b"<p>hello</p>"
    # signed for its host: the same query string on the internal name is refused
    moved = link.replace(public, internal)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(moved, timeout=10)  # noqa: S310 - loopback
    assert refused.value.code == 403
    # the pipeline's own reads (ffmpeg on a rung) keep the internal endpoint
    assert storage.presigned_url("a/page.html").startswith(internal + "/")


def test_chunk_intermediates_carry_the_lifecycle_tag(engine, tmp_path):
    """`*/chunks/` cannot be a lifecycle prefix: such objects are tagged for the rule instead."""
    from transcoder.storage import Storage

    part = tmp_path / "c.ts"
    part.write_bytes(b"x" * 100)
    storage = Storage()
    storage.upload(part, "vid/chunks/source/chunk_00000.ts")
    storage.upload(part, "vid/outputs/240p/segments/seg_00000.ts")
    tags = engine.s3.get_object_tagging(Bucket=engine.bucket, Key="vid/chunks/source/chunk_00000.ts")["TagSet"]
    assert tags == [{"Key": "transcode-intermediate", "Value": "chunk"}]
    assert engine.s3.get_object_tagging(Bucket=engine.bucket, Key="vid/outputs/240p/segments/seg_00000.ts")["TagSet"] == []


def test_large_objects_download_whole_with_little_held_in_memory(engine, tmp_path):
    """An object of several parts comes back byte for byte on each download path: on its
    own (parts in flight, at most IO_QUEUE pieces read but not yet written: boto3 allows
    100, 25 MiB, and a 30-minute video's audio filled it), inside `in_parallel` (one
    stream per thread) and hashed as it downloads."""
    import hashlib
    import os

    from transcoder.storage import IO_QUEUE, Storage, in_parallel

    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(19 * 2**20))  # three 8 MiB parts
    want = hashlib.sha256(big.read_bytes()).hexdigest()
    storage = Storage()
    storage.upload(big, "vid/outputs/audio/big.bin")
    config = storage.transfer_config
    assert config.use_threads and config.max_io_queue == IO_QUEUE and IO_QUEUE * config.io_chunksize <= 2 * 2**20
    alone = storage.download("vid/outputs/audio/big.bin", tmp_path / "alone.bin")
    assert hashlib.sha256(alone.read_bytes()).hexdigest() == want
    pooled = in_parallel(lambda i: storage.download("vid/outputs/audio/big.bin", tmp_path / f"p{i}.bin"), [0, 1])
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == want for p in pooled)
    assert storage.download_hashed("vid/outputs/audio/big.bin", tmp_path / "hashed.bin") == want
    assert not list(tmp_path.glob(".*.part"))  # no half file left behind


def test_every_storage_call_fails_retryable_when_the_server_is_unreachable(tmp_path):
    """Lookups, reads and listings, as uploads and downloads already did: a task retries an
    outage longer than botocore's own retries instead of failing at once."""
    import socket

    from transcoder.errors import RetryableError
    from transcoder.storage import DirectBucket, Storage

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    storage = Storage(DirectBucket(f"http://127.0.0.1:{port}", "key", "secret", "bucket", "us-east-1", attempts=1))
    calls = {"head": lambda: storage.head("a/b"), "get_json": lambda: storage.get_json("a/b.json"),
             "list_keys": lambda: storage.list_keys("a/"), "delete": lambda: storage.delete("a/b"),
             "put_text": lambda: storage.put_text("a/b", "x", "text/plain"),
             "download": lambda: storage.download("a/b", tmp_path / "b")}
    for name, call in calls.items():
        with pytest.raises(RetryableError):
            call()
