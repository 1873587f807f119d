"""A poster and a seek-bar thumbnail strip (sprites + WebVTT), picked from shot starts.

One pass over a small rung (the cheapest to decode) scores every frame: the scene
change score and the brightness range. A frame is *blank* when it is dark or flat
(black, a fade, a title card's plain background). Each thumbnail is the first settled
frame of the last shot that starts in its interval, or the non-blank frame nearest the
interval's middle; the poster is the most contrasted shot start in the first half of
the video. Pictures are cut from the renditions in storage through presigned URLs, so
no rendition is downloaded whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from . import ffmpeg

SCENE_CUT = 0.3  # `select` scene score above which a frame starts a new shot
SETTLE_SECONDS = 0.4  # a shot's first frames can be a dissolve: look a little later
THUMB_BOX = 160  # thumbnails fit in this many pixels, either way
SPRITE_COLUMNS, SPRITE_ROWS = 10, 10
MIN_INTERVAL, MAX_THUMBS = 2.0, 120


@dataclass(frozen=True, slots=True)  # one per frame of the video
class FrameStats:
    n: int
    time: float
    scene: float
    luma_avg: float
    luma_low: float
    luma_high: float
    saturation: float

    @property
    def blank(self) -> bool:
        # dark (limited-range black is 16) or nearly one flat level
        return self.luma_avg < 28 or self.luma_high - self.luma_low < 24

    @property
    def interest(self) -> float:
        return (self.luma_high - self.luma_low) + self.saturation


def remote_input(url: str, rough: bool = False) -> list[str]:
    """Input options for one of our own renditions read over http(s) (a presigned URL).

    `rough`: skip the deblocking filter (about 20% less decoding), for pictures that are
    only scored or shrunk to thumbnails, where it makes no visible difference.
    """
    return (["-skip_loop_filter", "all"] if rough else []) + ["-protocol_whitelist", ffmpeg.REMOTE_PROTOCOLS, "-i", url]


def scan_argv(url: str, stats_file: Path) -> list[str]:
    graph = (f"scale={THUMB_BOX}:-2,select='gte(scene\\,0)',signalstats,"
             f"metadata=mode=print:file={stats_file.resolve()}")
    return [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", *remote_input(url, rough=True),
            "-map", "0:v:0", "-vf", graph, "-f", "null", "-"]


def parse_scan(lines: Iterable[str]) -> list[FrameStats]:
    """The scan's stats file, line by line (an open file: read whole, a 10-minute video's
    13 MB of text cost the worker ~57 MB at its peak, measured)."""
    frames, current = [], {}
    for line in lines:
        if line.startswith("frame:"):
            if current:
                frames.append(_frame(current))
            parts = dict(p.split(":", 1) for p in line.split())
            current = {"n": int(parts["frame"]), "time": float(parts["pts_time"])}
        elif "=" in line:
            name, value = line.split("=", 1)
            current[name.rsplit(".", 1)[-1]] = float(value)
    if current:
        frames.append(_frame(current))
    return frames


def _frame(d: dict) -> FrameStats:
    return FrameStats(n=d["n"], time=d["time"], scene=d.get("scene_score", 0.0), luma_avg=d.get("YAVG", 0.0),
                      luma_low=d.get("YLOW", 0.0), luma_high=d.get("YHIGH", 0.0), saturation=d.get("SATAVG", 0.0))


def interval_for(duration: float) -> float:
    return max(MIN_INTERVAL, math.ceil(duration / MAX_THUMBS))


def shot_starts(frames: list[FrameStats], fps: float) -> list[FrameStats]:
    """The settled first frame of every shot (the video's start is a shot start)."""
    settle = max(1, round(SETTLE_SECONDS * fps))
    cuts = [0] + [f.n for f in frames if f.scene > SCENE_CUT]
    last = len(frames) - 1
    return [frames[min(c + settle, last)] for c in cuts] if frames else []


def pick_thumbnails(frames: list[FrameStats], fps: float, duration: float) -> list[tuple[float, float, FrameStats]]:
    """(cue start, cue end, frame) for every interval of the video."""
    interval = interval_for(duration)
    starts = shot_starts(frames, fps)
    picks = []
    count = max(1, math.ceil(duration / interval - 0.5))  # a short tail joins the last cue
    for k in range(count):
        lo, hi = k * interval, duration if k == count - 1 else (k + 1) * interval
        inside = [f for f in frames if lo <= f.time < hi]
        if not inside:
            continue
        shots = [f for f in starts if lo <= f.time < hi and not f.blank]
        if shots:
            choice = shots[-1]
        else:
            middle = (lo + hi) / 2
            choice = min(inside, key=lambda f: (f.blank, abs(f.time - middle)))
        picks.append((lo, hi, choice))
    return picks


def pick_poster(frames: list[FrameStats], fps: float, duration: float) -> FrameStats:
    candidates = [f for f in shot_starts(frames, fps) if not f.blank and f.time <= duration / 2]
    if candidates:
        return max(candidates, key=lambda f: f.interest)
    # one long shot: the liveliest non-blank frame of the first half, else the middle
    lively = [f for f in frames if not f.blank and f.time <= duration / 2]
    if lively:
        return max(lively, key=lambda f: f.interest)
    return frames[len(frames) // 2]


def thumb_size(width: int, height: int) -> tuple[int, int]:
    scale = THUMB_BOX / max(width, height)
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def sprite_argv(url: str, frame_numbers: list[int], size: tuple[int, int], out_pattern: Path) -> list[str]:
    """One pass: keep the chosen frames, shrink them, tile them 10x10 per JPEG."""
    # ffmpeg's expression parser refuses a sum of more than about 100 terms ("Error while
    # parsing expression"; a video over ~200 s asks for up to 120): sums of 10 in brackets
    groups = [frame_numbers[i:i + 10] for i in range(0, len(frame_numbers), 10)]
    chosen = "+".join("(" + "+".join(f"eq(n\\,{n})" for n in group) + ")" for group in groups)
    graph = (f"select='{chosen}',scale={size[0]}:{size[1]}:flags=bicubic,setsar=1,"
             f"tile={SPRITE_COLUMNS}x{SPRITE_ROWS}")
    return [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", *remote_input(url, rough=True),
            "-map", "0:v:0", "-vf", graph, "-fps_mode", "passthrough", "-q:v", "4", "-f", "image2", str(out_pattern)]


def poster_argv(url: str, time: float, fps: float, out: Path) -> list[str]:
    # an exact input seek: decoding starts at the keyframe before and drops frames
    # until this time, a quarter frame early so rounding cannot skip the frame
    seek = max(0.0, time - 0.25 / fps)
    return [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", "-ss", f"{seek:.6f}",
            *remote_input(url), "-map", "0:v:0", "-frames:v", "1", "-q:v", "2", "-f", "image2", str(out)]


def vtt(picks: list[tuple[float, float, FrameStats]], size: tuple[int, int], sprite_name) -> str:
    """WebVTT thumbnails track: each cue names a sprite and the region of its picture."""
    per_sprite = SPRITE_COLUMNS * SPRITE_ROWS
    lines = ["WEBVTT", ""]
    for i, (lo, hi, _) in enumerate(picks):
        cell = i % per_sprite
        x, y = (cell % SPRITE_COLUMNS) * size[0], (cell // SPRITE_COLUMNS) * size[1]
        lines += [f"{_clock(lo)} --> {_clock(hi)}", f"{sprite_name(i // per_sprite)}#xywh={x},{y},{size[0]},{size[1]}",
                  ""]
    return "\n".join(lines)


def _clock(seconds: float) -> str:
    ms = round(seconds * 1000)
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}.{ms % 1000:03d}"
