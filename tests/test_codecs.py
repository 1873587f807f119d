"""HEVC and AV1 rungs, alone or mixed with H.264 in one ladder: frame-exact, cached the
same way, packaged as fMP4 HLS with CODECS that match the streams."""

from __future__ import annotations

import subprocess
from pathlib import Path

import m3u8
import pytest

from tests.checks import keyframe_times, per_frame_psnr, streams

SETTINGS = {"chunk_seconds": 2.0, "gop_seconds": 1.0}
LADDER = "240p:av1,144p:av1,240p:hevc,144p"


@pytest.fixture(scope="module")
def mixed(module_engine, media, tmp_path_factory):
    from flows.transcode import transcode_video

    out = tmp_path_factory.mktemp("codecs")
    src = media("standard", seconds=6, width=426, height=240)
    result = transcode_video(str(src), renditions=LADDER, output_dir=str(out), **SETTINGS)
    return result, out, src


def test_every_rung_is_frame_exact(mixed):
    result, _, src = mixed
    assert [(r.name, r.width, r.height) for r in result.renditions] == [
        ("240p-hevc", 426, 240), ("240p-av1", 426, 240), ("144p", 256, 144), ("144p-av1", 256, 144)]
    expected = {"240p-hevc": "hevc", "240p-av1": "av1", "144p": "h264", "144p-av1": "av1"}
    for r in result.renditions:
        info = streams(Path(r.path))
        assert info["video"]["codec_name"] == expected[r.name]
        assert int(info["video"]["nb_read_frames"]) == r.frames == 150
        # every frame is the source frame it should be: no dip at any chunk joint
        psnr = per_frame_psnr(Path(r.path), src, r.width, r.height)
        assert len(psnr) == 150 and min(psnr) > 25, (r.name, min(psnr))
        assert r.quality["method"] == ("x264" if expected[r.name] == "h264" else "ffmpeg")
        assert r.quality["frames"] == 150 and r.quality["ssim"] > 0.85
    assert len({tuple(keyframe_times(Path(r.path))) for r in result.renditions}) == 1


def test_codecs_strings_match_the_streams(mixed):
    result, out, _ = mixed
    master = m3u8.load(str(out / "hls" / "master.m3u8"))
    by_uri = {p.uri: p.stream_info.codecs.split(",")[0] for p in master.playlists}
    for r in result.renditions:
        codec = by_uri[f"{r.name}/index.m3u8"]
        video = streams(Path(r.path))["video"]
        if r.name.endswith("-hevc"):
            # hvc1.<profile>.<compat>.L<level>.<constraints>: Main = 1
            parts = codec.split(".")
            assert parts[0] == "hvc1" and parts[1] == "1" and video["profile"] == "Main"
            assert parts[3] == f"L{video['level']}"
        elif r.name.endswith("-av1"):
            # av01.<profile>.<level><tier>.<depth>: Main = 0, 8-bit
            parts = codec.split(".")
            assert parts[0] == "av01" and parts[1] == "0" and video["profile"] == "Main"
            assert int(parts[2][:2]) == int(video["level"]) and parts[2][2] == "M" and parts[3] == "08"
        else:
            assert codec.startswith("avc1.64") and int(codec[-2:], 16) == int(video["level"])


def test_ffmpeg_decodes_every_rung_from_the_master(mixed):
    _, out, _ = mixed
    proc = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(out / "hls" / "master.m3u8"),
                           "-map", "0:v", "-f", "null", "-"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


def test_rerun_is_all_cache_hits(mixed):
    from flows.transcode import transcode_video

    first, _, src = mixed
    again = transcode_video(str(src), renditions=LADDER, **SETTINGS)
    assert again.transcoded == 0 and again.cached == first.chunks * 4
    assert [r.sha256 for r in again.renditions] == [r.sha256 for r in first.renditions]


def test_av1_plays_in_chromium_and_hevc_is_not_offered(mixed):
    from tests.browser import chromium_available, play
    from transcoder.player import ROOT

    reason = chromium_available()
    if reason:
        pytest.skip(f"BROWSER TESTS SKIPPED: {reason}")
    result, _, _ = mixed
    shot = ROOT / "test-artifacts" / "player-av1-ladder.png"
    # hls.js lists levels by height: 144p h264, 144p av1, 240p av1 (hvc1 dropped by MSE)
    state = play(result.player_url, shot, switch_to=2)
    assert state["ended"] and not state["errors"], state
    codecs = [lvl["codecs"].split(",")[0].split(".")[0] for lvl in state["levels"]]
    assert "hvc1" not in codecs and codecs.count("av01") == 2 and "avc1" in codecs, state["levels"]
    assert state["levels"][2]["codecs"].startswith("av01") and state["switchedTo"][-1] == 2
    assert state["videoSize"] == [426, 240]
