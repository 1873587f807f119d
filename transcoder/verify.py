"""Checks of what was written: never trust an exit status of 0 alone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from . import ffmpeg
from .errors import VerificationError
from .models import Plan, Rung



def decoded_frames(path: Path, timeout: float) -> int:
    """Decode every video frame of a file this project wrote; return how many came out.

    Any decoder error fails the check. The deblocking filter is skipped: it only smooths
    pixels and cannot fail, and skipping it makes this check about 20% cheaper.
    """
    return _count(path, timeout, decode=True)


def packet_frames(path: Path, timeout: float) -> int:
    """Read every video packet of a file this project wrote (no decoding); return how many.

    Any demuxing error (a truncated or garbled file) fails the check.
    """
    return _count(path, timeout, decode=False)


def _count(path: Path, timeout: float, decode: bool) -> int:
    if decode:
        options, field, verb = ["-skip_loop_filter", "all", "-count_frames"], "nb_read_frames", "decode"
    else:
        options, field, verb = ["-count_packets"], "nb_read_packets", "read"
    argv = [ffmpeg.FFPROBE, "-v", "error", *options, "-select_streams", "v:0",
            "-show_entries", f"stream={field}", "-of", "json", *ffmpeg.trusted_input(path)]
    proc = ffmpeg.run(argv, timeout, f"{verb} check")
    if proc.stderr.strip():
        raise VerificationError(f"{path.name} does not {verb} cleanly: {proc.stderr.strip().splitlines()[0]}")
    streams = json.loads(proc.stdout or "{}").get("streams") or [{}]
    return int(streams[0].get(field) or 0)


@dataclass(frozen=True)
class Checked:
    frames: int
    duration: float
    audio_duration: float | None
    width: int
    height: int
    bitrate: int
    size: int


def verify_rendition(path: Path, plan: Plan, rung: Rung) -> Checked:
    """Compare an assembled rendition with the plan: frames, size, format, durations.

    Its packets are the segments' packets, each segment having been decoded end to end
    when it was encoded, so this reads packets (no decoding) and checks that the joints
    lost or added nothing.
    """
    argv = [ffmpeg.FFPROBE, "-v", "error", "-count_packets", "-show_entries",
            "stream=codec_type,width,height,pix_fmt,nb_read_packets,duration:format=duration,bit_rate,size",
            "-of", "json", *ffmpeg.trusted_input(path)]
    proc = ffmpeg.run(argv, max(120.0, plan.duration), f"verify {rung.name}")
    if proc.stderr.strip():
        raise VerificationError(f"{rung.name}: the output does not read cleanly: {proc.stderr.strip().splitlines()[0]}")
    data = json.loads(proc.stdout)
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video"), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None:
        raise VerificationError(f"{rung.name}: no video stream in the output")
    frames = int(video.get("nb_read_packets") or 0)
    if frames != plan.total_frames:
        raise VerificationError(f"{rung.name}: {frames} frames in the output, the plan has {plan.total_frames}")
    if (int(video.get("width", 0)), int(video.get("height", 0))) != (rung.width, rung.height):
        raise VerificationError(f"{rung.name}: picture is {video.get('width')}x{video.get('height')}, "
                                f"expected {rung.width}x{rung.height}")
    if video.get("pix_fmt") != plan.encoder.pix_fmt:
        raise VerificationError(f"{rung.name}: pixel format {video.get('pix_fmt')}, expected {plan.encoder.pix_fmt}")
    frame = 1 / plan.fps
    duration = float(video.get("duration") or 0)
    if abs(Fraction(duration) - Fraction(plan.duration)) > frame:
        raise VerificationError(f"{rung.name}: video lasts {duration:.3f} s, the plan {plan.duration:.3f} s")
    audio_duration = None
    if plan.has_audio:
        if audio is None:
            raise VerificationError(f"{rung.name}: the audio track is missing")
        audio_duration = float(audio.get("duration") or 0)
        if abs(Fraction(audio_duration) - Fraction(duration)) > frame:
            raise VerificationError(f"{rung.name}: audio lasts {audio_duration:.3f} s, video {duration:.3f} s")
    fmt = data.get("format", {})
    return Checked(
        frames=frames,
        duration=duration,
        audio_duration=audio_duration,
        width=rung.width,
        height=rung.height,
        bitrate=int(fmt.get("bit_rate") or 0),
        size=int(fmt.get("size") or path.stat().st_size),
    )
