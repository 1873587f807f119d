"""The flow on synthetic sources with the traits that break chunked transcoders.

Every source is split into several chunks (2 s chunks of 1 s segments) so joints are
exercised; each output is then checked independently of the pipeline's own verify.
"""

from __future__ import annotations

import re
import subprocess
from fractions import Fraction

import pytest

from tests.checks import decoded_frames, keyframe_times, moov_before_mdat, per_frame_psnr, streams

CHUNKING = {"chunk_seconds": 2.0, "gop_seconds": 1.0}


def run_flow(source, **kwargs):
    from flows.transcode import transcode_video

    return transcode_video(str(source), **{**CHUNKING, **kwargs})


def check_outputs(result, engine, tmp_path, source_frames=None, audio=True):
    """Common checks; returns {rung: local path}."""
    assert result.chunks >= 3
    paths = {}
    for r in result.renditions:
        path = engine.download(r.key, tmp_path / f"{r.name}.mp4")
        info = streams(path)
        v = info["video"]
        assert (int(v["width"]), int(v["height"])) == (r.width, r.height)
        assert v["pix_fmt"] == "yuv420p" and v["codec_name"] == "h264"
        frames = int(v["nb_read_frames"])
        if source_frames is not None:
            assert frames == source_frames, f"{r.name}: {frames} frames, source has {source_frames}"
        if audio:
            a = info["audio"]
            frame = 1 / float(Fraction(result.fps))
            assert abs(float(a["duration"]) - float(v["duration"])) <= frame, (a["duration"], v["duration"])
            assert abs(float(a["start_time"]) - float(v["start_time"])) <= frame, (a["start_time"], v["start_time"])
            assert a["codec_name"] == "aac"
        else:
            assert "audio" not in info
        assert moov_before_mdat(path), "MP4 is not faststart"
        paths[r.name] = path
    return paths


def test_scene_cuts_frame_exact_with_audio_in_sync(engine, media, tmp_path):
    src = media("standard", seconds=6)
    result = run_flow(src, renditions="240p,144p")
    paths = check_outputs(result, engine, tmp_path, source_frames=decoded_frames(src))
    assert [r.name for r in result.renditions] == ["240p", "144p"]
    assert (result.renditions[1].width, result.renditions[1].height) == (192, 144)
    # same size as the source: every frame must match its own source frame closely
    psnr = per_frame_psnr(paths["240p"], src, 320, 240)
    assert len(psnr) == decoded_frames(src) and min(psnr) > 28, min(psnr)
    # storage layout: the original, the manifest, the report, the final MP4s
    keys = set(engine.keys())
    assert result.source_key in keys and result.manifest_key in keys and result.report_key in keys
    assert {f"encoded/{result.video_id}_240p.mp4", f"encoded/{result.video_id}_144p.mp4"} <= keys
    assert not engine.keys(f"{result.video_id}/chunks/")
    # every rung has its keyframes on the same frames: one every GOP (1 s here), joints included
    keys_240, keys_144 = keyframe_times(paths["240p"]), keyframe_times(paths["144p"])
    assert keys_240 == keys_144 and keys_240[:3] == [0.0, 1.0, 2.0]


def assert_frame_exact(src, engine, tmp_path):
    result = run_flow(src, renditions="240p")
    paths = check_outputs(result, engine, tmp_path, source_frames=decoded_frames(src))
    psnr = per_frame_psnr(paths["240p"], src, 320, 240)
    assert min(psnr) > 28, min(psnr)


def test_open_gop_source_loses_no_frame(engine, media, tmp_path):
    # keyframes every 30 frames, chunk joints every 50: most joints fall mid-GOP,
    # behind open-GOP B-frames that reference the previous GOP
    assert_frame_exact(media("open_gop", seconds=6), engine, tmp_path)


def test_mpegts_source_with_b_frames_and_a_late_start(engine, media, tmp_path):
    src = media("mpegts", seconds=6)
    assert float(streams(src)["format"]["start_time"]) > 1.0
    assert_frame_exact(src, engine, tmp_path)


def test_a_time_base_of_one_frame_keeps_every_frame_in_its_place(engine, tmp_path):
    """An MP4 whose video time scale is its frame rate (25), with B-frames: frame n at n/25
    s exactly. Before, setpts truncated 28.999... to 28 and two frames shared a time."""
    src = tmp_path / "tb25.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-f", "lavfi",
                    "-i", "sine=f=440", "-t", "6", "-c:v", "libx264", "-bf", "2", "-g", "25", "-c:a", "aac",
                    "-video_track_timescale", "25", str(src)], check=True)
    assert subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "stream=time_base", "-of",
                           "csv=p=0", str(src)], capture_output=True, text=True, check=True).stdout.strip() == "1/25"
    result = run_flow(src, renditions="240p")
    path = check_outputs(result, engine, tmp_path, source_frames=decoded_frames(src))["240p"]
    dts = [int(line) for line in subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v", "-show_entries", "packet=dts", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True).stdout.split()]
    assert all(a < b for a, b in zip(dts, dts[1:]))
    psnr = per_frame_psnr(path, src, 320, 240)
    assert len(psnr) == decoded_frames(src) and min(psnr) > 28, min(psnr)


def tone_start(path, copyts=False) -> float:
    """When the first audio track's tone begins (the end of the silence before it), in
    the file's own timestamps with `copyts`."""
    log = subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", *(["-copyts"] if copyts else []), "-i", str(path),
                          "-map", "0:a:0", "-af", "silencedetect=n=-30dB:d=0.1", "-f", "null", "-"],
                         capture_output=True, text=True, check=True).stderr
    return float(re.findall(r"silence_end: (-?[\d.]+)", log)[0])


@pytest.mark.parametrize("fmt", ["ts", "mpg"])
def test_audio_starting_after_the_video_stays_in_sync_in_mpeg_ts_and_ps(engine, tmp_path, fmt):
    # MPEG-TS/PS, whose audio starts 0.5 s after the first video frame (timestamps from
    # ~1.4 s / 0.5 s): silence, then a tone 3 s after the first frame. ffmpeg reading only
    # the audio starts its timestamps at the audio's own start there, not the container's.
    src = tmp_path / f"late_audio.{fmt}"
    tone = "aevalsrc='if(gte(t\\,2.5)\\,0.4*sin(2*PI*880*t)\\,0)':s=48000:d=5.5"
    codecs = (["-c:v", "libx264", "-preset", "ultrafast", "-bf", "2", "-c:a", "aac"] if fmt == "ts"
              else ["-c:v", "mpeg2video", "-bf", "2", "-c:a", "mp2"])
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=192x144:rate=25:duration=6",
                    "-itsoffset", "0.5", "-f", "lavfi", "-i", tone,
                    "-map", "0:v", "-map", "1:a", *codecs, "-pix_fmt", "yuv420p", str(src)], check=True, timeout=120)
    info = streams(src)
    video_start = float(info["video"]["start_time"])
    assert float(info["audio"]["start_time"]) - video_start > 0.4
    expected = tone_start(src, copyts=True) - video_start  # where a player puts it
    assert abs(expected - 3.0) < 0.05, expected
    result = run_flow(src)
    paths = check_outputs(result, engine, tmp_path, source_frames=decoded_frames(src))
    for path in paths.values():
        got = tone_start(path)
        assert abs(got - expected) <= 0.025, f"tone at {got:.3f} s of the output, {expected:.3f} s in the source"


def test_variable_frame_rate_becomes_constant(engine, media, tmp_path):
    src = media("vfr", seconds=8)
    info = streams(src)
    result = run_flow(src, renditions="240p")
    assert result.fps == "25/1"
    paths = check_outputs(result, engine, tmp_path)
    out = streams(paths["240p"])["video"]
    frame = 1 / 25
    assert abs(float(out["duration"]) - float(info["video"]["duration"])) <= frame
    assert int(out["nb_read_frames"]) > int(info["video"]["nb_read_frames"])  # repeats fill the gaps


def test_rotated_source_gives_portrait_renditions(engine, media, tmp_path):
    src = media("rotated", seconds=6, width=480, height=270)
    result = run_flow(src)
    paths = check_outputs(result, engine, tmp_path, source_frames=decoded_frames(src))
    assert [(r.name, r.width, r.height) for r in result.renditions] == [("270p", 270, 480)]
    assert "side_data_list" not in streams(paths["270p"])["video"]  # upright pixels, no rotation flag left


def test_odd_dimensions_and_non_square_pixels(engine, media, tmp_path):
    src = media("odd_size", seconds=6)  # 321x241 with 16:15 pixels, 4:4:4
    result = run_flow(src)
    check_outputs(result, engine, tmp_path, source_frames=decoded_frames(src))
    assert [(r.name, r.width, r.height) for r in result.renditions] == [("240p", 340, 240)]


def test_no_audio(engine, media, tmp_path):
    src = media("no_audio", seconds=6)
    result = run_flow(src, renditions="240p")
    check_outputs(result, engine, tmp_path, source_frames=decoded_frames(src), audio=False)


def test_ten_bit_source_becomes_eight_bit(engine, media, tmp_path):
    src = media("ten_bit", seconds=6)
    assert streams(src)["video"]["pix_fmt"] == "yuv420p10le"
    result = run_flow(src, renditions="240p")
    check_outputs(result, engine, tmp_path, source_frames=decoded_frames(src))


def test_interlaced_source_is_deinterlaced(engine, media, tmp_path):
    src = media("interlaced", seconds=6)
    assert streams(src)["video"]["field_order"] == "tt"
    result = run_flow(src, renditions="240p")
    paths = check_outputs(result, engine, tmp_path, source_frames=decoded_frames(src))
    assert streams(paths["240p"])["video"].get("field_order", "progressive") == "progressive"
    psnr = per_frame_psnr(paths["240p"], src, 320, 240, extra_filters="yadif=mode=send_frame:parity=auto:deint=all")
    assert min(psnr) > 25, min(psnr)


def test_audio_only_is_refused(engine, media):
    from transcoder.errors import BadInputError

    with pytest.raises(BadInputError, match="no video stream"):
        run_flow(media("audio_only", seconds=3))
    assert not engine.keys("encoded/")
