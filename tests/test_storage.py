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
