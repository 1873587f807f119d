"""The HLS package: parsed with a real HLS parser, checked against ffprobe, read back by ffmpeg."""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import m3u8
import pytest

from tests.checks import keyframe_times, streams

SETTINGS = {"chunk_seconds": 2.0, "gop_seconds": 1.0}


@pytest.fixture
def package(engine, media, tmp_path, monkeypatch):
    from flows.transcode import transcode_video
    from transcoder.settings import reload_settings

    monkeypatch.setenv("TRANSCODE_SEGMENT_SECONDS", "2")
    reload_settings()
    src = media("standard", seconds=7)
    result = transcode_video(str(src), renditions="240p,144p", output_dir=str(tmp_path / "out"), **SETTINGS)
    return result, tmp_path / "out", src


def test_master_playlist_is_correct(package):
    result, out, _ = package
    master = m3u8.load(str(out / "hls" / "master.m3u8"))
    assert master.is_variant and len(master.playlists) == 2
    audio = [m for m in master.media if m.type == "AUDIO"]
    assert len(audio) == 1 and audio[0].uri == "audio/index.m3u8"
    for playlist, rendition in zip(master.playlists, result.renditions):
        info = playlist.stream_info
        assert playlist.uri == f"{rendition.name}/index.m3u8"
        assert info.resolution == (rendition.width, rendition.height)
        assert info.bandwidth >= info.average_bandwidth > 0
        assert abs(info.frame_rate - 25.0) < 1e-6
        assert info.audio == audio[0].group_id
        video_codec, audio_codec = info.codecs.split(",")
        assert audio_codec == "mp4a.40.2"
        # the exact profile and level that ffprobe reports for the rendition
        probe = streams(Path(rendition.path))["video"]
        assert video_codec.startswith("avc1.64")  # High profile
        assert int(video_codec[-2:], 16) == int(probe["level"])


def test_media_playlists_segments_and_keyframes(package):
    result, out, _ = package
    keyframes = {}
    for rendition in result.renditions:
        playlist = m3u8.load(str(out / "hls" / rendition.name / "index.m3u8"))
        assert playlist.is_endlist and playlist.playlist_type == "vod"
        assert playlist.segment_map and (out / "hls" / rendition.name / playlist.segment_map[0].uri).exists()
        durations = [s.duration for s in playlist.segments]
        assert all((out / "hls" / rendition.name / s.uri).exists() for s in playlist.segments)
        assert all(abs(d - 2.0) < 1e-3 for d in durations[:-1]) and 0 < durations[-1] <= 2.0 + 1e-3
        assert abs(sum(durations) - rendition.duration) <= 1 / 25
        starts = [round(sum(durations[:i]), 3) for i in range(len(durations))]
        mp4 = Path(rendition.path)
        keyframes[rendition.name] = keyframe_times(mp4)
        assert set(starts) <= set(keyframes[rendition.name]), (starts, keyframes[rendition.name])
    assert keyframes["240p"] == keyframes["144p"]


def test_ffmpeg_reads_the_master_back_and_decodes_every_rung(package):
    _, out, src = package
    proc = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(out / "hls" / "master.m3u8"),
                           "-map", "0", "-f", "null", "-"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    assert (out / "report.json").exists()


def test_bitrates_follow_the_spec(tmp_path):
    """Peak: the worst run of segments lasting 0.5-1.5 target durations; a short tail joins its neighbour."""
    from transcoder.hls import bitrates

    folder = tmp_path / "p"
    folder.mkdir()
    sizes = [100_000, 300_000, 100_000, 10_000]  # bytes; the last segment lasts 0.2 s
    durations = [2.0, 2.0, 2.0, 0.2]
    lines = ["#EXTM3U", "#EXT-X-TARGETDURATION:2"]
    for i, (size, d) in enumerate(zip(sizes, durations)):
        (folder / f"s{i}.m4s").write_bytes(b"x" * size)
        lines += [f"#EXTINF:{d},", f"s{i}.m4s"]
    (folder / "index.m3u8").write_text("\n".join(lines + ["#EXT-X-ENDLIST"]) + "\n")
    peak, average = bitrates(folder / "index.m3u8", 2.0)
    assert peak == 8 * 300_000 / 2.0
    assert average == round(8 * sum(sizes) / sum(durations))
    assert Fraction(peak) > average
