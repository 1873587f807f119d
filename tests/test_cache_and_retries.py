"""Caching across runs, a killed chunk retried alone, an interrupted run resumed."""

from __future__ import annotations

import os

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactCollectionFilter,
    ArtifactCollectionFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterParentFlowRunId,
)

from tests.checks import FFmpegSignaller as FFmpegKiller
from tests.checks import video_md5

CHUNKING = {"chunk_seconds": 2.0, "gop_seconds": 1.0}


def task_runs(flow_run_id) -> dict[str, int]:
    """Task runs of a flow run and of its stage subflows, by name."""
    with get_client(sync_client=True) as client:
        stages = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        ids = [flow_run_id] + [run.id for run in stages]
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    return {r.name: r.run_count for r in runs if r.name.startswith(("transcode-", "audio", "assemble"))}


def test_rerun_is_all_cache_hits_and_identical(engine, media):
    from flows.transcode import transcode_video

    src = str(media("standard", seconds=6))
    first = transcode_video(src, renditions="240p,144p", **CHUNKING)
    assert first.transcoded == first.chunks * 2 and first.cached == 0
    second = transcode_video(src, renditions="240p,144p", **CHUNKING)
    assert second.transcoded == 0 and second.cached == first.chunks * 2
    assert [r.sha256 for r in second.renditions] == [r.sha256 for r in first.renditions]
    # the run's report: a table artifact in the UI and report.json in storage
    with get_client(sync_client=True) as client:
        table = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=[f"renditions-{first.video_id}"])))
    assert table and table[0].type == "table"
    assert first.report_key in engine.keys(first.video_id)
    # a new rung reuses the decode of nothing cached: only its own tasks run
    third = transcode_video(src, renditions="240p,144p,180p", **CHUNKING)
    assert third.transcoded == third.chunks and third.cached == third.chunks * 2


def test_killed_chunk_is_retried_alone(engine, media):
    from flows.transcode import transcode_video

    killer = FFmpegKiller("00001", times=1)
    killer.start()
    state = transcode_video(str(media("standard", seconds=6)), renditions="240p", return_state=True, **CHUNKING)
    killer.stop.set()
    assert killer.killed == 1
    assert state.is_completed(), state
    runs = task_runs(state.state_details.flow_run_id)
    transcodes = {name: count for name, count in runs.items() if name.startswith("transcode-")}
    assert transcodes["transcode-240p-00001"] == 2
    assert all(count == 1 for name, count in transcodes.items() if name != "transcode-240p-00001")


def test_interrupted_run_resumes_with_only_the_missing_chunk(engine, media):
    from flows.transcode import transcode_video

    src = str(media("standard", seconds=6))
    # every attempt dies: both rungs' tasks, 1 + 2 retries each (either sibling encodes both)
    killer = FFmpegKiller("00002", times=1000)
    killer.start()
    state = transcode_video(src, renditions="240p,144p", return_state=True, **CHUNKING)
    killer.stop.set()
    assert state.is_failed()
    assert "killed by signal SIGKILL" in str(state.message) or "SIGKILL" in repr(state.result(raise_on_failure=False))
    assert not engine.keys("encoded/"), "nothing may look finished after a failed run"
    resumed = transcode_video(src, renditions="240p,144p", **CHUNKING)
    assert resumed.transcoded == 2  # chunk 2, both rungs; everything else came from the cache
    assert resumed.cached == resumed.chunks * 2 - 2


def test_failed_upload_of_the_original_fails_the_run_and_publishes_nothing(engine, media, monkeypatch):
    """Mode local encodes while the original uploads; an upload that fails (here: after its
    retries) still fails the run, with nothing published, and the rerun does only the rest."""
    import tasks.ingest
    from flows.transcode import transcode_video
    from transcoder.errors import RetryableError

    stored = tasks.ingest.store_source

    def refused(*args, **kwargs):
        raise RetryableError("upload of the original failed: the storage server refused it (injected)")

    monkeypatch.setattr(tasks.ingest, "store_source", refused)
    src = str(media("standard", seconds=6))
    state = transcode_video(src, renditions="240p", return_state=True, **CHUNKING)
    assert state.is_failed()
    assert "upload of the original failed" in repr(state.result(raise_on_failure=False))
    assert not engine.keys("encoded/"), "nothing may look finished after a failed run"
    video_id = next(k.split("/")[0] for k in engine.keys("") if k.endswith("/manifests/facts.json"))
    assert not [k for k in engine.keys(video_id) if "/source/" in k or k.endswith("report.json")]

    monkeypatch.setattr(tasks.ingest, "store_source", stored)
    resumed = transcode_video(src, renditions="240p", **CHUNKING)
    assert resumed.video_id == video_id and resumed.cached == resumed.chunks  # the encodes were kept
    assert resumed.source_key in engine.keys(video_id)


def test_deleted_segment_is_encoded_again_and_other_chunking_never_reuses_segments(engine, media, tmp_path):
    from flows.transcode import transcode_video
    from tests.checks import decoded_frames, per_frame_psnr

    src = media("standard", seconds=6)
    first = transcode_video(str(src), renditions="240p", **CHUNKING)
    segments = engine.keys(f"{first.video_id}/outputs/240p/segments/")
    engine.s3.delete_object(Bucket=engine.bucket, Key=sorted(segments)[1])
    again = transcode_video(str(src), renditions="240p", **CHUNKING)
    assert again.transcoded == 1 and again.cached == again.chunks - 1
    # encoding is bit-exact from run to run: the same video stream
    assert video_md5(engine.download(again.renditions[0].key, tmp_path / "again.mp4")) == \
        video_md5(engine.download(first.renditions[0].key, tmp_path / "first.mp4"))
    # other chunk boundaries: other chunks, other objects; the output is still frame-exact
    other = transcode_video(str(src), renditions="240p", chunk_seconds=3.0, gop_seconds=1.0)
    assert other.cached == 0 and other.transcoded == other.chunks
    path = engine.download(other.renditions[0].key, tmp_path / "other.mp4")
    psnr = per_frame_psnr(path, src, 320, 240)
    assert len(psnr) == decoded_frames(src) and min(psnr) > 28


def test_bad_encoder_settings_are_bad_input(engine, media):
    import pytest

    from flows.transcode import transcode_video
    from transcoder.errors import BadInputError

    with pytest.raises(BadInputError, match="crf"):
        transcode_video(str(media("standard", seconds=6)), crf=99)
    with pytest.raises(BadInputError, match="preset"):
        transcode_video(str(media("standard", seconds=6)), preset="warp")
    with pytest.raises(BadInputError, match="chunk seconds"):
        transcode_video(str(media("standard", seconds=6)), chunk_seconds=-1)


def test_corrupt_segment_is_never_assembled_and_is_encoded_again(engine, media, tmp_path):
    """Bytes written over a stored segment, its metadata copied: the rerun sees the ETag
    changed and encodes that chunk again; the merge step, handed it anyway, refuses it."""
    from flows.transcode import transcode_video
    from tasks.assemble import assemble_rendition
    from transcoder.errors import VerificationError

    src = media("standard", seconds=6)
    first = transcode_video(str(src), renditions="240p", **CHUNKING)
    before = video_md5(engine.download(first.renditions[0].key, tmp_path / "first.mp4"))
    key = sorted(engine.keys(f"{first.video_id}/outputs/240p/segments/"))[1]
    head = engine.s3.head_object(Bucket=engine.bucket, Key=key)
    engine.s3.put_object(Bucket=engine.bucket, Key=key, Body=os.urandom(head["ContentLength"]),
                         Metadata=head["Metadata"])
    again = transcode_video(str(src), renditions="240p", **CHUNKING)
    assert again.transcoded == 1 and again.cached == again.chunks - 1
    assert video_md5(engine.download(again.renditions[0].key, tmp_path / "again.mp4")) == before

    # the merge step's own check: a segment whose bytes are not the ones encoded
    from transcoder.storage import Storage

    plan, segments, audio = _stage_inputs(first.video_id, engine)
    engine.s3.put_object(Bucket=engine.bucket, Key=segments[0].key, Body=b"\0" * segments[0].size,
                         Metadata={"sha256": segments[0].sha256, "frames": str(segments[0].frames)})
    with pytest.raises(VerificationError, match="not the one encoded"):
        assemble_rendition.fn(plan, plan.rungs[0], segments, audio)
    assert Storage().head(segments[0].key) is None  # removed: the next run encodes it again
    assert transcode_video(str(src), renditions="240p", **CHUNKING).transcoded == 1


def _stage_inputs(video_id: str, engine):
    """The plan (from the manifest) and the segments the last run stored."""
    from transcoder import keys
    from transcoder.models import Plan
    from transcoder.storage import Storage
    from transcoder.transcode import stored_segment

    storage = Storage()
    plan = Plan.model_validate(storage.get_json(keys.manifest(video_id))["plan"])
    segments = [stored_segment(storage, plan, plan.rungs[0], chunk) for chunk in plan.chunks]
    return plan, segments, None


def test_rerun_of_a_finished_video_is_answered_from_storage(engine, media, tmp_path, cli_env):
    """`transcode run` again with the same file and settings: no flow run, the same outputs,
    checked in storage first; anything changed since sends it down the flow again."""
    import json
    import subprocess
    import sys

    src = media("standard", seconds=6)
    out = tmp_path / "out"

    def run(*extra: str) -> dict:
        proc = subprocess.run([sys.executable, "-m", "transcoder.cli", "run", str(src), "--renditions", "240p,144p",
                               "--json", "--output-dir", str(out), *CLI_CHUNKING, *extra],
                              capture_output=True, text=True, env=cli_env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    def flow_runs() -> int:
        with get_client(sync_client=True) as client:
            return client.count_flow_runs()

    first = run()
    assert not first["reused"] and first["transcoded"] == first["chunks"] * 2
    # the run's hard link to the file, made and removed, left its remembered hash valid:
    # the rerun's check reads none of its bytes
    from transcoder.ingest import remembered_sha256
    assert remembered_sha256(src, engine.settings) is not None
    before = flow_runs()
    again = run()
    assert again["reused"] and again["transcoded"] == 0 and flow_runs() == before  # no flow run at all
    assert [r["sha256"] for r in again["renditions"]] == [r["sha256"] for r in first["renditions"]]
    for r in again["renditions"]:  # exported again, whole
        assert os.path.getsize(r["path"]) == r["size"]
    assert (out / "hls" / "master.m3u8").is_file() and (out / "player.html").is_file()
    assert again["player_url"] != first["player_url"]  # a fresh page with fresh links

    # other settings: the flow runs (and records its own result) ...
    other = run("--crf", "30")
    assert not other["reused"] and other["transcoded"] == other["chunks"] * 2
    # ... and the first settings are not taken from storage now: the package is the other run's
    back = run()
    assert not back["reused"] and back["transcoded"] == 0 and back["cached"] == first["chunks"] * 2
    assert run()["reused"]

    # a published rung deleted: the flow runs and puts it back
    engine.s3.delete_object(Bucket=engine.bucket, Key=first["renditions"][0]["key"])
    mended = run()
    assert not mended["reused"] and mended["renditions"][0]["sha256"] == first["renditions"][0]["sha256"]
    assert not run("--no-reuse")["reused"]


CLI_CHUNKING = ["--chunk-seconds", "2", "--gop-seconds", "1"]


def test_worker_without_the_source_reads_its_chunk_from_storage(engine, media, monkeypatch):
    """With TRANSCODE_RANGE_READS, a chunk task on a machine without the source (another
    worker in mode "deployments") reads the stored original through a presigned link with
    range requests: the same bytes out as from a local copy, part of the file over the wire
    (the last chunk: ffmpeg reads from the chunk's keyframe to the end), and no copy left behind.
    With "auto", a chunk that decodes far before its start downloads the source once instead."""
    import socket
    import threading
    import urllib.request
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlsplit, urlunsplit

    from flows.transcode import transcode_video
    from tasks.transcode import transcode_chunk
    from transcoder import keys
    from transcoder.ingest import local_source_path
    from transcoder.models import Plan, SourceObject
    from transcoder.settings import reload_settings
    from transcoder.storage import Storage
    from transcoder.transcode import segment_key

    # big enough that a chunk is a small part of it even counting what the connections buffer
    src = media("standard", seconds=16, width=1280, height=720)
    first = transcode_video(str(src), renditions="240p", **CHUNKING)
    storage = Storage()
    manifest = storage.get_json(keys.manifest(first.video_id))
    plan, source = Plan.model_validate(manifest["plan"]), SourceObject.model_validate(manifest["source"])
    chunk, rung = plan.chunks[-1], plan.rungs[0]
    key = segment_key(plan, rung, chunk)
    encoded_here = storage.head(key)["metadata"]["sha256"]
    storage.delete(key)
    local = local_source_path(engine.settings, source.video_id, source.ext)
    local.unlink(missing_ok=True)  # (the run's cleanup may have removed it already)

    # a counting proxy in front of the S3 server; it keeps the Host the link was signed for
    served = []

    class Proxy(BaseHTTPRequestHandler):
        def setup(self):
            super().setup()  # a small send queue: what is counted is close to what ffmpeg took
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)

        def do_GET(self):  # noqa: N802
            headers = {k: v for k, v in self.headers.items() if k.lower() == "range"}
            try:
                resp = urllib.request.urlopen(urllib.request.Request(upstream + self.path, headers=headers))
            except urllib.error.HTTPError as exc:
                resp = exc
            self.send_response(resp.status)
            for name in ("Content-Type", "Content-Range", "Content-Length", "Accept-Ranges", "ETag", "Last-Modified"):
                if resp.headers.get(name):
                    self.send_header(name, resp.headers[name])
            self.end_headers()
            sent = 0
            try:  # what ffmpeg takes before it closes the connection (a seek) is what crossed
                while block := resp.read(1 << 16):
                    self.wfile.write(block)
                    sent += len(block)
            except OSError:
                pass
            finally:
                resp.close()
                served.append(sent)

        def log_message(self, *args):
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    signed = Storage.presigned_url
    upstream = ""

    def through_proxy(self, key, expires=3600, public=False):
        nonlocal upstream
        parts = urlsplit(signed(self, key, expires, public))
        upstream = f"{parts.scheme}://{parts.netloc}"
        return urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy.server_port}"))

    monkeypatch.setattr(Storage, "presigned_url", through_proxy)
    monkeypatch.setenv("TRANSCODE_RANGE_READS", "ranges")
    reload_settings()
    try:
        segment = transcode_chunk.fn(plan, source, chunk, rung)
    finally:
        proxy.shutdown()
    assert segment.sha256 == encoded_here  # the same bytes as from the local copy
    assert not local.exists()  # nothing downloaded whole
    assert served and sum(served) < 0.5 * source.size, (served, source.size)  # a 2 s chunk of a 16 s file

    # "auto" (the default): this chunk decodes from a keyframe more than a chunk length before
    # its first frame, so the worker downloads the source once instead of reading ranges
    assert chunk.lead > chunk.out_frames / float(plan.fps), chunk.lead
    storage.delete(key)
    served.clear()
    monkeypatch.setenv("TRANSCODE_RANGE_READS", "auto")
    reload_settings()
    assert transcode_chunk.fn(plan, source, chunk, rung).sha256 == encoded_here
    assert not served and local.exists()  # no link read; the whole file, then read locally


def _package(engine, result) -> dict[str, str]:
    """The master playlist and every playlist, init segment, media segment, sprite, track
    and poster that it and the result name: {key: its text for a playlist, else ''}; a
    name with nothing stored under it is given as None."""
    import m3u8

    vid, stored = result.video_id, set(engine.keys(result.video_id))

    def text(key: str) -> str | None:
        return engine.s3.get_object(Bucket=engine.bucket, Key=key)["Body"].read().decode() if key in stored else None

    found = {result.hls_master_key: text(result.hls_master_key)}
    master = m3u8.loads(found[result.hls_master_key])
    for uri in [p.uri for p in master.playlists] + [m.uri for m in master.media if m.uri]:
        key = f"{vid}/hls/{uri}"
        found[key] = text(key)
        folder = key.rsplit("/", 1)[0]
        if found[key] is not None:
            media = m3u8.loads(found[key])
            for name in [s.uri for s in media.segments] + [m.uri for m in media.segment_map]:
                found[f"{folder}/{name}"] = "" if f"{folder}/{name}" in stored else None
    pictures = result.thumbnails
    for key in (pictures.poster_key, pictures.vtt_key, *pictures.sprite_keys):
        found[key] = "" if key in stored else None
    return found


def test_a_deleted_package_and_thumbnails_are_made_again(engine, media):
    """The cached assembly, audio package, thumbnails and poster find their files gone:
    each is made again, and the package is whole (before, the master named missing files)."""
    from flows.transcode import transcode_video

    src = str(media("standard", seconds=6))
    first = transcode_video(src, renditions="240p", **CHUNKING)
    before = _package(engine, first)
    assert None not in before.values()
    for prefix in ("hls/", "thumbnails/"):
        for key in engine.keys(f"{first.video_id}/{prefix}"):
            engine.s3.delete_object(Bucket=engine.bucket, Key=key)
    again = transcode_video(src, renditions="240p", **CHUNKING)
    assert again.cached == again.chunks  # the segments were kept: only the package was redone
    assert _package(engine, again) == before


def test_a_package_written_over_by_other_settings_is_made_again(engine, media, monkeypatch):
    """Segments of 4 s, then 2 s, then 4 s again: the third run's package is the first's,
    file for file (before, the audio kept its 2 s segments and the master the 4 s figures)."""
    from flows.transcode import transcode_video
    from transcoder.settings import reload_settings

    src = str(media("standard", seconds=8))
    first = transcode_video(src, renditions="240p", **CHUNKING)
    before, files = _package(engine, first), sorted(engine.keys(f"{first.video_id}/hls/"))
    monkeypatch.setenv("TRANSCODE_SEGMENT_SECONDS", "2")
    reload_settings()
    other = transcode_video(src, renditions="240p", **CHUNKING)
    assert _package(engine, other) != before
    monkeypatch.delenv("TRANSCODE_SEGMENT_SECONDS")
    reload_settings()
    third = transcode_video(src, renditions="240p", **CHUNKING)
    assert _package(engine, third) == before
    assert sorted(engine.keys(f"{first.video_id}/hls/")) == files  # no 2 s segments left behind


def test_a_published_mp4_written_over_with_its_metadata_is_made_again(engine, media, tmp_path):
    """Other bytes of the same size under the MP4's key, its sha256 metadata copied: the
    server's ETag changed, so the rerun assembles it again (before, every export failed)."""
    import hashlib

    from flows.transcode import transcode_video

    src = str(media("standard", seconds=6))
    first = transcode_video(src, renditions="240p", **CHUNKING)
    rendition = first.renditions[0]
    head = engine.s3.head_object(Bucket=engine.bucket, Key=rendition.key)
    engine.s3.put_object(Bucket=engine.bucket, Key=rendition.key, Body=os.urandom(rendition.size),
                         Metadata=head["Metadata"], ContentType="video/mp4")
    again = transcode_video(src, renditions="240p", output_dir=str(tmp_path / "out"), **CHUNKING)
    assert again.cached == again.chunks  # only the assembly was redone
    path = tmp_path / "out" / f"{first.video_id}_240p.mp4"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rendition.sha256 == again.renditions[0].sha256
