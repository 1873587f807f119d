"""What a viewer gets besides the MP4s: quality figures, poster and seek-bar thumbnails."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey

from tests.checks import per_frame_psnr

SETTINGS = {"chunk_seconds": 2.0, "gop_seconds": 1.0}


@pytest.fixture(scope="module")
def finished(module_engine, media, tmp_path_factory):
    """One run of a video that opens on two seconds of black, shared by the tests below."""
    from flows.transcode import transcode_video

    out = tmp_path_factory.mktemp("streaming")
    src = media("black_intro", seconds=9, width=480, height=270)
    result = transcode_video(str(src), renditions="270p,144p", output_dir=str(out), **SETTINGS)
    return module_engine, result, out, src


def brightness(picture: Path, crop: str | None = None) -> float:
    graph = (f"crop={crop}," if crop else "") + "signalstats,metadata=mode=print:file=-"
    proc = subprocess.run(["ffmpeg", "-v", "error", "-i", str(picture), "-vf", graph, "-f", "null", "-"],
                          capture_output=True, text=True, check=True)
    return float(next(l for l in proc.stdout.splitlines() if "YAVG" in l).split("=")[1])


def test_quality_per_rung_in_report_and_ui(finished):
    _, result, out, src = finished
    report = json.loads((out / "report.json").read_text())
    for rendition, entry in zip(result.renditions, report["renditions"]):
        quality = entry["quality"]
        assert quality["method"] == "x264" and quality["frames"] == rendition.frames
        assert 30 < quality["psnr_db"] < 60 and 0.85 < quality["ssim"] <= 1
        # an independent measurement of the published file agrees with the encoder's
        frames = per_frame_psnr(Path(rendition.path), src, rendition.width, rendition.height)
        assert len(frames) == rendition.frames
        mse = sum(255 ** 2 / 10 ** (p / 10) for p in frames) / len(frames)
        import math
        assert abs(10 * math.log10(255 ** 2 / mse) - quality["psnr_db"]) < 0.1
    assert report["run"]["speed_x_realtime"] > 0
    assert report["quality"]["vmaf"].startswith("not measured")
    with get_client(sync_client=True) as client:
        table = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=[f"renditions-{result.video_id}"])))
    rows = json.loads(table[0].data)
    assert [r["rendition"] for r in rows] == ["270p", "144p"]
    assert all(r["psnr_db"] > 30 and r["ssim"] > 0.85 and r["cached_chunks"] == f"0/{result.chunks}" for r in rows)


def test_poster_is_a_shot_start_not_black(finished):
    _, result, out, _ = finished
    thumbs = result.thumbnails
    assert thumbs.poster_time >= 2.0  # after the black opening
    poster = out / "thumbnails" / "poster.jpg"
    top = result.renditions[0]
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=width,height", "-of",
                                       "json", str(poster)], capture_output=True, text=True, check=True).stdout)
    assert (probe["streams"][0]["width"], probe["streams"][0]["height"]) == (top.width, top.height)
    assert brightness(poster) > 40


def test_thumbnail_track_covers_the_video(finished):
    _, result, out, _ = finished
    thumbs = result.thumbnails
    text = (out / "thumbnails" / "thumbnails.vtt").read_text()
    assert text.startswith("WEBVTT")
    cues = [block.splitlines() for block in text.strip().split("\n\n")[1:]]
    assert len(cues) == thumbs.count
    def seconds(clock: str) -> float:
        h, m, s = clock.split(":")
        return int(h) * 3600 + int(m) * 60 + float(s)
    spans = [tuple(seconds(t) for t in cue[0].split(" --> ")) for cue in cues]
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert abs(spans[-1][1] - result.duration) < 1e-3
    for (start, _), cue in zip(spans, cues):
        name, _, region = cue[1].partition("#xywh=")
        x, y, w, h = map(int, region.split(","))
        assert (w, h) == (thumbs.width, thumbs.height)
        sprite = out / "thumbnails" / name
        assert sprite.exists()
        if start >= 2.0:  # past the black opening every thumbnail shows a picture
            assert brightness(sprite, f"{w}:{h}:{x}:{y}") > 40, cue


def test_output_dir_has_everything(finished):
    _, result, out, _ = finished
    assert (out / "hls" / "master.m3u8").exists() and (out / "report.json").exists()
    assert {p.name for p in (out / "thumbnails").iterdir()} >= {"poster.jpg", "thumbnails.vtt", "sprite_000.jpg"}


def test_player_page_plays_from_storage(finished):
    """The page the command prints: presigned from the private bucket, played in Chromium."""
    from tests.browser import chromium_available, play
    from transcoder.player import ROOT

    reason = chromium_available()
    if reason:
        pytest.skip(f"BROWSER TESTS SKIPPED: {reason}")
    _, result, out, _ = finished
    assert result.player_url and "X-Amz-Signature=" in result.player_url
    shot = ROOT / "test-artifacts" / "player-pipeline.png"
    state = play(result.player_url, shot, switch_to=1)
    assert state["ended"] and not state["errors"], state
    assert [lvl["height"] for lvl in state["levels"]] == [144, 270]
    assert state["switchedTo"][-1] == 1 and state["videoSize"] == [480, 270]
    assert state["thumbnails"] == result.thumbnails.count
    assert shot.stat().st_size > 10_000
    # the folder copy has a page too, with relative links
    assert "hls/master.m3u8" in (out / "player.html").read_text()


def test_streaming_outputs_and_quality_can_be_switched_off(engine, media, monkeypatch):
    from flows.transcode import transcode_video
    from transcoder.settings import reload_settings

    monkeypatch.setenv("TRANSCODE_STREAMING_OUTPUTS", "false")
    monkeypatch.setenv("TRANSCODE_QUALITY_METRICS", "false")
    reload_settings()
    result = transcode_video(str(media("standard", seconds=4)), renditions="144p", **SETTINGS)
    assert result.hls_master_key is None and result.thumbnails is None and result.player_url is None
    assert result.renditions[0].quality is None and result.renditions[0].hls is None
    stored = engine.keys(result.video_id)
    assert not [k for k in stored if "/hls/" in k or "/thumbnails/" in k or k.endswith("player.html")]
    assert result.report_key in stored


def test_smallest_rung_is_published_first(finished):
    _, result, _, _ = finished
    ready = {r.name: r.ready_seconds for r in result.renditions}
    assert ready["144p"] <= ready["270p"] < result.wall_seconds, ready


def test_thumbnails_come_from_the_chunks_own_scans(finished, tmp_path):
    """Each chunk's encode scored its frames and kept the few a thumbnail can be; the merge
    picks from those (no pass over the video after the last chunk) and chooses the same
    frames as a pass over the smallest rendition would, the cut at a joint included."""
    from prefect import flow

    from tasks.thumbnails import _from_chunk_scans, _from_rendition
    from transcoder.ingest import sha256_file
    from transcoder.ladder import parse_rungs
    from transcoder.models import EncoderSettings
    from transcoder.plan import make_plan
    from transcoder.probe import frame_index, probe
    from transcoder.storage import Storage
    from transcoder.thumbnails import thumb_size

    engine, result, out, src = finished
    plan = make_plan(result.video_id, sha256_file(src), probe(src, engine.settings),
                     frame_index(src, engine.settings), parse_rungs("270p,144p", "h264"), EncoderSettings(),
                     **SETTINGS)
    assert len(plan.chunks) == result.chunks > 1
    scans = [k for k in engine.keys(result.video_id) if "/outputs/scans/" in k]
    assert len(scans) == result.chunks

    @flow
    def both():
        small = result.renditions[-1]
        (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
        return (_from_chunk_scans(plan, Storage(), tmp_path / "a", 60),
                _from_rendition(plan, small, Storage(), tmp_path / "b", 60, thumb_size(small.width, small.height)))

    (picks, poster), (rescanned, poster_again) = both()
    assert [(lo, hi, f.n) for lo, hi, f in picks] == [(lo, hi, f.n) for lo, hi, f in rescanned]
    assert poster.n == poster_again.n == 60  # the cut at 2.0 s is a joint (2 s chunks): 0.4 s after it
    assert sorted(p.name for p in (tmp_path / "a").glob("sprite_*.jpg")) == ["sprite_001.jpg"]
    w, h = thumb_size(256, 144)
    assert brightness(tmp_path / "a" / "sprite_001.jpg", f"{w}:{h}:{w}:0") > 40  # the cue of 2-4 s
    # a chunk without its scan (an older version's cache): the merge scans the rendition instead
    engine.s3.delete_object(Bucket=engine.bucket, Key=scans[-1])

    @flow
    def with_a_scan_missing():
        return _from_chunk_scans(plan, Storage(), tmp_path, 60)

    assert with_a_scan_missing() is None
