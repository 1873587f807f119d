"""A poster and a seek-bar thumbnail strip (sprites + WebVTT), picked from shot starts.

Every frame is scored: the scene change score and the brightness range. A frame is
*blank* when it is dark or flat (black, a fade, a title card's plain background). Each
thumbnail is the first settled frame of the last shot that starts in its interval, or the
non-blank frame nearest the interval's middle; the poster is the most contrasted shot
start in the first half of the video.

The scoring rides along each chunk's encode (`scan_filter`, `chunk_scan`): a branch of the
smallest rung's pictures, shrunk to thumbnail size, scored, and the few frames that can
become a thumbnail kept as JPEGs. The merge then only joins the chunks' scores (a chunk's
first frame is scored against the previous chunk's last, `joints_argv`), picks, and tiles
the kept pictures (`tile_argv`): no pass over the video after the last chunk. Chunks encoded without a scan
(an older version's cache) fall back to one pass over the smallest rendition
(`scan_argv`, `sprite_argv`), read through presigned URLs.
"""

from __future__ import annotations

import base64
import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import ffmpeg

SCENE_CUT = 0.3  # `select` scene score above which a frame starts a new shot
SETTLE_SECONDS = 0.4  # a shot's first frames can be a dissolve: look a little later
THUMB_BOX = 160  # thumbnails fit in this many pixels, either way
SPRITE_COLUMNS, SPRITE_ROWS = 10, 10
MIN_INTERVAL, MAX_THUMBS = 2.0, 120
SCAN_VERSION = 1  # of ChunkScan's stored form and of what decides its picks


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


def shot_starts(frames: Sequence[FrameStats], fps: float, bounds: Sequence[int] = (),
                count: int | None = None) -> list[FrameStats]:
    """The settled first frame of every shot (the video's start is a shot start).

    `bounds`: the first frame of each chunk; a shot's settled frame stays in the chunk its
    cut is in (the chunk's scan keeps it), so a cut just before a chunk's end gives that
    chunk's last frame. `frames` and `count`: see `pick_thumbnails`."""
    if not frames:
        return []
    by_number = {f.n: f for f in frames}
    settle = max(1, round(SETTLE_SECONDS * fps))
    cuts = [0] + [f.n for f in frames if f.scene > SCENE_CUT]
    last = (len(frames) if count is None else count) - 1
    starts = []
    for c in cuts:
        after = bisect.bisect_right(bounds, c)  # the next chunk's first frame, if any
        end = bounds[after] - 1 if after < len(bounds) else last
        starts.append(by_number[min(c + settle, end, last)])
    return starts


def intervals(duration: float) -> list[tuple[float, float]]:
    """The cues' spans: `interval_for` seconds each; a short tail joins the last cue."""
    interval = interval_for(duration)
    count = max(1, math.ceil(duration / interval - 0.5))
    return [(k * interval, duration if k == count - 1 else (k + 1) * interval) for k in range(count)]


def nearest_middle(frames: Iterable[FrameStats], lo: float, hi: float) -> FrameStats | None:
    """The non-blank frame nearest the middle of [lo, hi) (the first of equals), else the nearest."""
    middle = (lo + hi) / 2
    inside = [f for f in frames if lo <= f.time < hi]
    return min(inside, key=lambda f: (f.blank, abs(f.time - middle))) if inside else None


def pick_thumbnails(frames: Sequence[FrameStats], fps: float, duration: float, bounds: Sequence[int] = (),
                    count: int | None = None) -> list[tuple[float, float, FrameStats]]:
    """(cue start, cue end, frame) for every interval of the video.

    `frames`: every frame of the video in order; or, with `count` (the video's frames), only
    those the picks can land on, in order (`digest_scan`), for the same picks."""
    starts = shot_starts(frames, fps, bounds, count)
    picks = []
    for lo, hi in intervals(duration):
        fallback = nearest_middle(frames, lo, hi)
        if fallback is None:
            continue
        shots = [f for f in starts if lo <= f.time < hi and not f.blank]
        picks.append((lo, hi, shots[-1] if shots else fallback))
    return picks


def pick_poster(frames: Sequence[FrameStats], fps: float, duration: float, bounds: Sequence[int] = (),
                count: int | None = None) -> FrameStats:
    """`frames` and `count`: as `pick_thumbnails`."""
    candidates = [f for f in shot_starts(frames, fps, bounds, count) if not f.blank and f.time <= duration / 2]
    if candidates:
        return max(candidates, key=lambda f: f.interest)
    # one long shot: the liveliest non-blank frame of the first half, else the middle
    lively = [f for f in frames if not f.blank and f.time <= duration / 2]
    if lively:
        return max(lively, key=lambda f: f.interest)
    middle = (len(frames) if count is None else count) // 2
    return next(f for f in frames if f.n == middle)


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


# ---------------------------------------------------------------- the scan in each chunk's encode

def scan_filter(label: str, size: tuple[int, int], stats_file: Path, out_label: str) -> str:
    """Filter graph branch: `label`'s pictures at thumbnail size, scored into `stats_file`,
    on to `out_label` (written as JPEGs, `scan_output_args`). 8-bit, so that the blank test's
    levels hold for 10-bit rungs too."""
    return (f"[{label}]scale={size[0]}:{size[1]}:flags=bicubic,setsar=1,format=yuv420p,select='gte(scene\\,0)',"
            f"signalstats,metadata=mode=print:file={stats_file.resolve()}[{out_label}]")


def scan_output_args(label: str, frames: int, pictures: Path) -> list[str]:
    """Every frame of the branch as a small JPEG, numbered from 0 (few are kept)."""
    return ["-map", f"[{label}]", "-frames:v", str(frames), "-fps_mode", "passthrough", "-q:v", "2",
            "-start_number", "0", "-f", "image2", str(pictures / "thumb_%05d.jpg")]


def chunk_candidates(frames: list[FrameStats], fps: float, duration: float) -> list[int]:
    """The frames of one chunk (global numbers) that `pick_thumbnails` over the whole video
    can choose, whatever the other chunks hold: every settled shot start (the chunk's first
    frame may start a shot: that is decided at the merge), each cue's best frame inside this
    chunk, and the first and last frames, which score the joints."""
    if not frames:
        return []
    settle = max(1, round(SETTLE_SECONDS * fps))
    cuts = [0] + [i for i, f in enumerate(frames) if f.scene > SCENE_CUT]
    chosen = {frames[0].n, frames[-1].n} | {frames[min(i + settle, len(frames) - 1)].n for i in cuts}
    for lo, hi in intervals(duration):
        if hi > frames[0].time and lo <= frames[-1].time:
            best = nearest_middle(frames, lo, hi)
            if best is not None:
                chosen.add(best.n)
    return sorted(chosen)


def chunk_scan(stats_file: Path, pictures: Path, out_start: int, out_frames: int, fps: float,
               duration: float) -> dict:
    """The stored form of one chunk's scan: each frame's scores, and the candidates' JPEGs."""
    with stats_file.open() as lines:
        local = parse_scan(lines)[:out_frames]  # a padded stream may print a frame past the last
    if len(local) != out_frames:
        raise ValueError(f"the scan has {len(local)} frames, the chunk {out_frames}")
    frames = [FrameStats(n=out_start + f.n, time=(out_start + f.n) / fps, scene=f.scene, luma_avg=f.luma_avg,
                         luma_low=f.luma_low, luma_high=f.luma_high, saturation=f.saturation) for f in local]
    kept = {str(n): base64.b64encode((pictures / f"thumb_{n - out_start:05d}.jpg").read_bytes()).decode()
            for n in chunk_candidates(frames, fps, duration)}
    return {"version": SCAN_VERSION, "out_start": out_start,
            "frames": [[round(f.scene, 5), f.luma_avg, f.luma_low, f.luma_high, f.saturation] for f in local],
            "pictures": kept}


def scan_frames(scan: dict, fps: float) -> list[FrameStats]:
    start = scan["out_start"]
    return [FrameStats(n=start + i, time=(start + i) / fps, scene=row[0], luma_avg=row[1], luma_low=row[2],
                       luma_high=row[3], saturation=row[4]) for i, row in enumerate(scan["frames"])]


@dataclass(frozen=True)
class ScanDigest:
    """What the merge keeps of one chunk's scan: the few frames a pick over the whole video
    can land on, and their pictures. Held for every chunk at once, so it must not grow with
    the chunk's length: the scan's per-frame scores (about 0.5 KB a frame as parsed JSON and
    `FrameStats`, 7 MiB for 10 minutes) are dropped as each scan is read."""

    out_start: int
    count: int  # the chunk's frames
    frames: tuple[FrameStats, ...]  # in order; the first and last always among them
    pictures: dict[str, str]  # frame number -> JPEG, base64 (`chunk_scan`)


def digest_scan(scan: dict, fps: float, duration: float, middle: int) -> ScanDigest:
    """The frames of a chunk's scan that `pick_thumbnails` and `pick_poster` can choose or
    decide by: the kept candidates (`chunk_candidates`), each frame that cuts to a new shot,
    the chunk's first (its joint score replaces its own) and last, its liveliest frame of the
    video's first half (the poster of a video without a cut) and the video's `middle` frame
    (of one with no lively frame either)."""
    every = scan_frames(scan, fps)
    keep = {int(n) for n in scan["pictures"]} | {every[0].n, every[-1].n, middle}
    keep |= {f.n for f in every if f.scene > SCENE_CUT}
    lively = [f for f in every if not f.blank and f.time <= duration / 2]
    if lively:
        keep.add(max(lively, key=lambda f: f.interest).n)
    return ScanDigest(scan["out_start"], len(every), tuple(f for f in every if f.n in keep), scan["pictures"])


def joint_pictures(scans: Sequence[ScanDigest], folder: Path) -> int:
    """For each joint, the previous chunk's last picture twice, then the next chunk's first
    (j_00000.jpg, ...): ffmpeg's scene score of that third frame is the joint's (the
    repeated frame makes the previous difference zero, as within a still shot)."""
    written = 0
    for before, after in zip(scans, scans[1:]):
        last = str(before.out_start + before.count - 1)
        first = str(after.out_start)
        for name in (last, last, first):
            source = before if name == last else after
            (folder / f"j_{written:05d}.jpg").write_bytes(base64.b64decode(source.pictures[name]))
            written += 1
    return written


def joints_argv(folder: Path, stats_file: Path) -> list[str]:
    graph = f"select='gte(scene\\,0)',metadata=mode=print:file={stats_file.resolve()}"
    return [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-f", "image2", "-framerate", "25",
            "-start_number", "0", "-i", str(folder / "j_%05d.jpg"), "-vf", graph, "-f", "null", "-"]


def joint_scores(stats_file: Path) -> list[float]:
    """The scene score of each joint, in order, from `joints_argv`'s stats."""
    with stats_file.open() as lines:
        frames = parse_scan(lines)
    return [f.scene for f in frames[2::3]]


def tile_argv(folder: Path, out_pattern: Path) -> list[str]:
    """The picked pictures (p_00000.jpg, ...) tiled 10x10 per sprite."""
    return [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", "-f", "image2", "-framerate", "25",
            "-start_number", "0", "-i", str(folder / "p_%05d.jpg"), "-vf",
            f"setsar=1,tile={SPRITE_COLUMNS}x{SPRITE_ROWS}", "-fps_mode", "passthrough", "-q:v", "4",
            "-f", "image2", str(out_pattern)]
