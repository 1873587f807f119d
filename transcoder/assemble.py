"""Concatenate a rung's segments (MPEG-TS, stream copy) and mux the audio into an MP4."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

from . import ffmpeg
from .models import Plan, Segment


def concat_list(segments: list[tuple[Segment, Path]], fps: Fraction) -> str:
    """A concat demuxer script; `duration` pins every joint to the frame grid."""
    lines = ["ffconcat version 1.0"]
    for seg, path in segments:
        lines.append(f"file '{ffmpeg.file_url(path)}'")
        lines.append(f"duration {float(seg.frames / fps):.9f}")
    return "\n".join(lines) + "\n"


# HEVC in MP4 as `hvc1` (what Apple players and MSE ask for): parameter sets only in the
# hvcC box. x265 repeats VPS/SPS/PPS (NAL types 32-34) at every chunk's IDR; the chunks
# of a rung share them (one encoder configuration), so the in-band copies go.
HEVC_MP4 = ["-tag:v", "hvc1", "-bsf:v", "filter_units=remove_types=32|33|34"]


def assemble_argv(list_file: Path, audio: Path | None, out: Path, codec: str = "h264") -> list[str]:
    argv = [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y",
            "-f", "concat", "-safe", "0", "-protocol_whitelist", "file", "-i", ffmpeg.file_url(list_file)]
    if audio is not None:
        argv += ffmpeg.trusted_input(audio)
    argv += ["-map", "0:v:0"]
    if audio is not None:
        argv += ["-map", "1:a:0"]
    argv += ["-c", "copy", *(HEVC_MP4 if codec == "hevc" else []),
             "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4", ffmpeg.file_url(out)]
    return argv


def assemble(plan: Plan, segments: list[tuple[Segment, Path]], audio: Path | None, out: Path, timeout: float,
             codec: str = "h264") -> Path:
    ordered = sorted(segments, key=lambda s: s[0].index)
    list_file = out.with_suffix(".ffconcat")
    list_file.write_text(concat_list(ordered, plan.fps))
    tmp = out.with_name(out.stem + ".part.mp4")
    ffmpeg.run(assemble_argv(list_file, audio, tmp, codec), timeout, f"assemble {out.name}")
    tmp.replace(out)
    list_file.unlink(missing_ok=True)
    return out
