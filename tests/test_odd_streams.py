"""Sources whose timestamps make frame-exact chunks hard: one long GOP in a container
without a seek index, packets with a decode time but no presentation time, packets with
no time at all, raw elementary streams.

Every source is made with ffmpeg (lavfi, no audio), run through the real flow in 2 s
chunks of 1 s segments, and the output checked frame by frame against the source.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.checks import decoded_frames, streams

CHUNKING = {"chunk_seconds": 2.0, "gop_seconds": 1.0}
PICTURE = "testsrc2=size=320x240:rate=25"


def make(path, seconds, *encode):
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "lavfi", "-i", f"{PICTURE}:duration={seconds}",
                    *encode, str(path)], check=True)
    return path


def run_flow(source, **kwargs):
    from flows.transcode import transcode_video

    return transcode_video(str(source), **{**CHUNKING, **kwargs})


def psnr_by_number(output, source) -> list[float]:
    """PSNR of output frame n against source frame n, whatever their times: the psnr filter
    pairs frames by time, and a stream with decode times only starts later by its reorder
    delay. (checks.per_frame_psnr pairs by time: an output of a source in time base 1/25
    has a few frames with times off by most of a frame, see the report.)"""
    graph = ("[0:v]setpts=N/(25*TB),format=yuv420p[dis];[1:v]setpts=N/(25*TB),format=yuv420p[ref];"
             "[dis][ref]psnr=stats_file=-")
    proc = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(output), "-i", str(source),
                           "-lavfi", graph, "-f", "null", "-"], capture_output=True, text=True, check=True)
    return [float(m.group(1)) for m in re.finditer(r"psnr_avg:(\S+)", proc.stdout)]


def assert_frame_exact(src, engine, tmp_path):
    """Every source frame, once, in order, in a run of several chunks."""
    result = run_flow(src, renditions="240p")
    assert result.chunks >= 3
    (rendition,) = result.renditions
    out = engine.download(rendition.key, tmp_path / "240p.mp4")
    expected = decoded_frames(src)
    assert int(streams(out)["video"]["nb_read_frames"]) == expected
    # a frame lost or shifted at a joint shows as a dip: testsrc2 moves every frame (one
    # frame off: about 22 dB)
    psnr = psnr_by_number(out, src)
    assert len(psnr) == expected
    low = [(n, value) for n, value in enumerate(psnr) if value <= 28]
    assert not low, low


def test_mpegts_with_one_keyframe_decodes_every_chunk(engine, tmp_path):
    # One GOP for the whole video: a seek back by the longest GOP between keyframes (none
    # here) plus a second landed after the only keyframe, and chunks 1-2 decoded no frame.
    src = make(tmp_path / "one_gop.ts", 6, "-c:v", "libx264", "-g", "1000", "-sc_threshold", "0", "-bf", "2")
    assert_frame_exact(src, engine, tmp_path)


@pytest.mark.parametrize("name, encode", [
    ("bframes.avi", ["-c:v", "libx264", "-bf", "2", "-g", "12"]),  # AVI: its time base is one frame, too
    ("bframes.m2v", ["-c:v", "mpeg2video", "-bf", "2", "-g", "12", "-q:v", "3"]),  # raw MPEG-2 video
])
def test_stream_with_decode_times_only_is_frame_exact(engine, tmp_path, name, encode):
    # The packets carry dts but no pts; the decoder shows each frame later by its reorder
    # delay, so a plan on the dts cut chunk 0 short and shifted the others.
    src = make(tmp_path / name, 6, *encode)
    assert_frame_exact(src, engine, tmp_path)


def test_packets_without_any_timestamp_are_refused(engine, tmp_path):
    from transcoder.errors import BadInputError

    # Negative times in Matroska: the first packets are written with no timestamp at all.
    # They were left out of the plan but still decoded: 18 frames went missing, exit 0.
    src = make(tmp_path / "untimed.mkv", 4, "-c:v", "libx264", "-bf", "2", "-output_ts_offset", "-0.7",
               "-avoid_negative_ts", "disabled")
    with pytest.raises(BadInputError, match=r"18 of the video's packets have no timestamp"):
        run_flow(src, renditions="240p")
    assert not engine.keys("encoded/")


@pytest.mark.parametrize("name, codec", [("raw.h264", "libx264"), ("raw.hevc", "libx265")])
def test_raw_elementary_stream_is_refused_with_what_to_do(engine, tmp_path, name, codec):
    from transcoder.errors import BadInputError

    extra = ["-x265-params", "log-level=error"] if codec == "libx265" else []
    src = make(tmp_path / name, 2, "-c:v", codec, *extra)
    with pytest.raises(BadInputError, match=r"raw elementary stream.*put it in a container"):
        run_flow(src, renditions="240p")
    assert not engine.keys("encoded/")
