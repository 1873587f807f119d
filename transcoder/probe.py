"""ffprobe → typed `Probe`; the only module that parses ffprobe output.

Rejects what is not a usable video with a `BadInputError` that says why.
"""

from __future__ import annotations

import json
import re
import tempfile
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from . import ffmpeg
from .errors import BadInputError, DiskFullError, FFmpegError, is_disk_full
from .models import AudioInfo, Probe, VideoInfo
from .settings import Settings

PROBE_TIMEOUT = 120.0
STANDARD_RATES = [Fraction(24000, 1001), Fraction(24), Fraction(25), Fraction(30000, 1001), Fraction(30),
                  Fraction(48), Fraction(50), Fraction(60000, 1001), Fraction(60)]


@dataclass(frozen=True)
class FrameIndex:
    """Presentation times of every video frame, in stream time-base units, sorted."""

    pts: Sequence[int]  # array("q") when read from a file: 8 bytes a frame
    keyframes: set[int]  # positions in `pts` (frame numbers) that are keyframes
    time_base: Fraction
    # bytes of each frame's packet, in the same order: where the picture is busy (the
    # source spent bits on it), encoding costs more; the plan weighs chunks by it
    sizes: Sequence[int] | None = None

    def seconds(self, frame: int) -> Fraction:
        return self.pts[frame] * self.time_base


def probe(path: Path, settings: Settings) -> Probe:
    size = path.stat().st_size
    if size == 0:
        raise BadInputError("the file is empty (0 bytes)")
    if size > settings.max_input_bytes:
        raise BadInputError(f"the file is {size} bytes, over the limit of {settings.max_input_bytes}")
    # warnings too, each tagged with its level: the one below is only a warning
    argv = [ffmpeg.FFPROBE, "-loglevel", "level+warning", "-hide_banner", "-of", "json", "-show_format",
            "-show_streams", *ffmpeg.source_input(path)]
    try:
        proc = ffmpeg.run(argv, PROBE_TIMEOUT, "probe")
    except FFmpegError as exc:
        # ffprobe names the file by its path on this worker: the user is told its name only
        detail = (_first_line(exc.stderr) or exc.summary).replace(f"file:{path}", path.name)
        raise BadInputError(f"not a readable video: {detail.replace(str(path), path.name)}") from None
    if "external track" in proc.stderr:
        # A QuickTime data reference (alias) to another file. ffmpeg does not follow it
        # (enable_drefs is off), so the track would be read from bytes that are not its own.
        raise BadInputError("the file refers to media in other files (a QuickTime data reference); "
                            "submit a self-contained file")
    data = json.loads(proc.stdout or "{}")
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    videos = [s for s in streams if s.get("codec_type") == "video"
              and not (s.get("disposition") or {}).get("attached_pic")]
    if not videos:
        kinds = sorted({s.get("codec_type", "?") for s in streams})
        what = "audio only" if kinds == ["audio"] else ("no streams" if not kinds else "streams: " + ", ".join(kinds))
        raise BadInputError(f"no video stream in the file ({what})")
    v = videos[0]
    video = _video_info(v, fmt, settings)
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    audio = _audio_info(audios[0]) if audios else None
    duration = _float(fmt.get("duration")) or video.duration
    if duration > settings.max_duration_seconds:
        raise BadInputError(f"the video lasts {duration:.0f} s, over the limit of {settings.max_duration_seconds:.0f} s")
    _check_decodes(path, settings)
    return Probe(
        format_name=fmt.get("format_name", "?"),
        format_start=_float(fmt.get("start_time")),
        duration=duration,
        size=size,
        bit_rate=int(_float(fmt.get("bit_rate"))),
        video=video,
        audio=audio,
    )


def frame_index(path: Path, settings: Settings) -> FrameIndex:
    """Read every video packet's timestamp, size and key flag, without decoding."""
    # ffprobe writes a CSV file, one line a packet ("packet,pts,dts,size,flags"; then
    # "stream,time_base"), read a line at a time into flat arrays: 16 bytes a frame held, and
    # little more at the peak (10 minutes, 15,000 frames, measured with tracemalloc: held 1.17
    # -> 0.26 MiB, peak 3.56 -> 0.38 MiB against the output read whole into a tuple a packet;
    # the JSON form before that, a dict a packet, had cost about 10 MiB)
    try:
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="index-", dir=settings.work_dir) as folder:
            table = Path(folder) / "packets.csv"
            argv = [ffmpeg.FFPROBE, "-v", "error", "-hide_banner", "-select_streams", "v:0",
                    "-show_entries", "packet=pts,dts,size,flags:stream=time_base", "-of", "csv=p=1",
                    "-o", f"file:{table}", *ffmpeg.source_input(path)]
            try:
                proc = ffmpeg.run(argv, PROBE_TIMEOUT * 5, "index")
            except FFmpegError as exc:
                raise BadInputError(f"cannot read the video's packets: {_first_line(exc.stderr) or exc.summary}") from None
            damage = _first_line(proc.stderr)
            if damage:
                raise BadInputError(f"the file is damaged or truncated: {damage}")
            with table.open() as lines:
                tb, pts, sizes, keys, dts_only, untimed = _packets(lines)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError("the packet index") from None
        raise
    if untimed and not pts:
        # A raw H.264/HEVC elementary stream: ffmpeg makes up a timeline as it reads, which
        # starts over at a seek, so no chunk after the first could be cut at its frames.
        raise BadInputError("the video's packets have no timestamps (a raw elementary stream such as "
                            ".h264 or .hevc): put it in a container first, e.g. "
                            "ffmpeg -r RATE -i in.h264 -c copy out.mp4")
    if untimed:
        # ffmpeg decodes them and makes up their times, which the next timestamps contradict:
        # frames would be lost or land in another chunk
        count, first = untimed
        raise BadInputError(f"{count} of the video's packets have no timestamp (the first is packet {first}), "
                            "so where their frames belong is unknown: remux the file with timestamps")
    if not pts:
        raise BadInputError("the video stream has no frames")
    _check_frame_count(len(pts), settings)  # before the decode below, too
    if dts_only:
        # Decode times only (AVI, raw MPEG video): the decoder shows each frame later, by its
        # reorder delay, and makes up the last ones' times. The times every chunk's `trim` will
        # see are those of a decode, so the frames' times come from one.
        seconds = float((max(pts) - min(pts)) * tb)
        tb, shown, keys = _decoded_times(path, settings, seconds)
        sizes = sizes if len(sizes) == len(shown) else None
        pts = shown
        _check_frame_count(len(pts), settings)  # a packet can hold several frames
    if any(a > b for a, b in zip(pts, pts[1:])):  # decode order (B-frames): sort into presentation order
        order = sorted(range(len(pts)), key=pts.__getitem__)
        position = {old: new for new, old in enumerate(order) if old in keys}
        pts, sizes = array("q", (pts[i] for i in order)), array("q", (sizes[i] for i in order))
        keys = {position[k] for k in keys}
    keys.add(0)  # the first frame shown is reached by decoding from the start anyway
    return FrameIndex(pts=pts, keyframes=keys, time_base=tb, sizes=sizes)


def _check_frame_count(frames: int, settings: Settings) -> None:
    if frames > settings.max_frames:
        raise BadInputError(f"the video has {frames} frames, over the limit of {settings.max_frames}")


def _packets(lines: Iterable[str]) -> tuple[Fraction, array, array, set[int], bool, tuple[int, int] | None]:
    """(time base, pts, sizes, keyframe positions, whether some packets had a dts but no pts,
    (how many packets had no timestamp at all, the first's number) or None) of
    `frame_index`'s CSV, in file order."""
    tb = Fraction(1, 90000)
    pts, sizes, keys = array("q"), array("q"), set()
    dts_only, untimed, first_untimed, seen = False, 0, 0, 0
    for line in lines:
        fields = line.rstrip("\n").split(",")  # side data (MPEG-TS packets, a rotated stream) may follow
        if fields[0] == "stream":
            tb = Fraction(fields[1])
            continue
        if fields[0] != "packet" or len(fields) < 5:
            continue
        ts, dts, size, flags = fields[1:5]
        if "D" in flags:  # discarded packets are never shown
            continue
        seen += 1
        if ts == "N/A":
            ts = dts
            dts_only = dts_only or ts != "N/A"
        if ts == "N/A":
            untimed, first_untimed = untimed + 1, (first_untimed if untimed else seen - 1)
            continue
        if "K" in flags:
            keys.add(len(pts))
        pts.append(int(ts))
        sizes.append(int(size) if size.isdigit() else 0)
    return tb, pts, sizes, keys, dts_only, ((untimed, first_untimed) if untimed else None)


_SHOWN = re.compile(r"\bn:\s*\d+\s+pts:\s*(\S+)\s.*?\biskey:(\d)")
_FILTER_TB = re.compile(r"config in time_base: (\d+/\d+)")


def _decoded_times(path: Path, settings: Settings, seconds: float) -> tuple[Fraction, array, set[int]]:
    """(time base, presentation times, keyframe positions) of every video frame as ffmpeg's
    decode hands them to a filter graph (`showinfo`), from one decode of the whole stream
    (`seconds` long: the timeout follows it, as an encode's does)."""
    argv = [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-nostats", "-v", "info", "-copyts",
            *ffmpeg.source_input(path, max_pixels=settings.max_dimension**2),
            "-map", "0:v:0", "-vf", "showinfo", "-fps_mode", "passthrough", "-an", "-sn", "-dn", "-f", "null", "-"]
    try:
        proc = ffmpeg.run(argv, max(PROBE_TIMEOUT * 5, settings.ffmpeg_timeout_per_media_second * seconds),
                          "decode times")
    except FFmpegError as exc:
        raise BadInputError(f"the video stream cannot be decoded: {_first_line(exc.stderr) or exc.summary}") from None
    found = _FILTER_TB.search(proc.stderr)
    tb = Fraction(found.group(1)) if found else Fraction(1, 90000)
    pts, keys = array("q"), set()
    for m in _SHOWN.finditer(proc.stderr):
        if not m.group(1).lstrip("-").isdigit():
            raise BadInputError(f"the video's frame {len(pts)} has no time, and its packets have no "
                                "presentation times: remux the file with timestamps")
        if m.group(2) == "1":
            keys.add(len(pts))
        pts.append(int(m.group(1)))
    back = next((i for i in range(1, len(pts)) if pts[i] <= pts[i - 1]), None)
    if back is not None:
        raise BadInputError(f"the video's packets have no presentation times, and the decoded frames' times "
                            f"do not increase (frame {back}): remux the file with timestamps")
    return tb, pts, keys


def frame_rate(index: FrameIndex, nominal: Fraction) -> tuple[Fraction, bool]:
    """The constant output rate, and whether the source's timestamps are irregular."""
    # the steps between frames, counted (a few distinct values): not a list as long as the video
    diffs = Counter(b - a for a, b in zip(index.pts, index.pts[1:]))
    if not diffs:
        return (nominal if 0 < nominal <= 240 else Fraction(25)), False
    med = _median(diffs)
    tolerance = max(1, 0.02 * med)
    vfr = any(abs(d - med) > tolerance for d in diffs)
    if not vfr:
        measured = 1 / (Fraction(med).limit_denominator(10**6) * index.time_base)
        if nominal > 0 and abs(float(nominal / measured) - 1) < 0.01:
            return nominal, False
        return _snap(measured), False
    span = (index.pts[-1] - index.pts[0]) * index.time_base
    avg = Fraction(len(index.pts) - 1) / span if span > 0 else nominal
    # The container's base rate, when sane, is the rate the frames were made at (a
    # dropped frame becomes a repeat); otherwise the average rate, snapped.
    if 0 < nominal <= 60 and nominal >= avg * Fraction(99, 100):
        return nominal, True
    return min(_snap(avg), Fraction(60)), True


def _median(counts: Counter) -> float:
    """`statistics.median` of the values `counts` counts (the middle two averaged)."""
    total = counts.total()

    def at(k: int) -> int:
        seen = 0
        for value in sorted(counts):
            seen += counts[value]
            if seen > k:
                return value
        raise IndexError(k)

    low, high = at((total - 1) // 2), at(total // 2)
    return low if low == high else (low + high) / 2


def _snap(rate: Fraction) -> Fraction:
    for std in STANDARD_RATES:
        if abs(float(rate / std) - 1) < 0.03:
            return std
    return max(Fraction(1), rate.limit_denominator(1001))


def _video_info(v: dict, fmt: dict, settings: Settings) -> VideoInfo:
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    if width <= 0 or height <= 0:
        raise BadInputError("the video stream has no picture size (not a decodable video)")
    if max(width, height) > settings.max_dimension:
        raise BadInputError(f"the picture is {width}x{height}, larger than {settings.max_dimension} pixels on a side")
    if min(width, height) < settings.min_dimension:
        raise BadInputError(f"the picture is {width}x{height}, smaller than {settings.min_dimension} pixels on a side")
    rotation = _rotation(v)
    sar = v.get("sample_aspect_ratio") or "1:1"
    try:
        num, den = (int(x) for x in sar.split(":"))
        sar_f = Fraction(num, den) if num > 0 and den > 0 else Fraction(1)
    except ValueError:
        sar_f = Fraction(1)
    disp_w, disp_h = width * sar_f, Fraction(height)
    if rotation % 180 != 0:
        disp_w, disp_h = disp_h, disp_w
    rate = Fraction(v.get("r_frame_rate") or "0/1") if (v.get("r_frame_rate") or "0/0") != "0/0" else Fraction(0)
    pix_fmt = v.get("pix_fmt") or "unknown"
    field_order = v.get("field_order") or "unknown"
    return VideoInfo(
        codec=v.get("codec_name", "?"),
        width=width,
        height=height,
        display_width=max(2, round(disp_w)),
        display_height=max(2, round(disp_h)),
        rotation=rotation,
        sar=f"{sar_f.numerator}:{sar_f.denominator}",
        pix_fmt=pix_fmt,
        bit_depth=_bit_depth(pix_fmt, v),
        field_order=field_order,
        interlaced=field_order in ("tt", "bb", "tb", "bt"),
        fps_num=rate.numerator,
        fps_den=rate.denominator or 1,
        frames=int(v.get("nb_frames") or 0),
        start_time=_float(v.get("start_time")),
        duration=_float(v.get("duration")) or _float(fmt.get("duration")),
        time_base=v.get("time_base", "1/90000"),
    )


def _audio_info(a: dict) -> AudioInfo:
    return AudioInfo(
        codec=a.get("codec_name", "?"),
        channels=int(a.get("channels") or 0),
        sample_rate=int(a.get("sample_rate") or 0),
        start_time=_float(a.get("start_time")),
        duration=_float(a.get("duration")),
    )


def _check_decodes(path: Path, settings: Settings) -> None:
    argv = [ffmpeg.FFMPEG, "-v", "error", "-hide_banner", "-nostdin",
            *ffmpeg.source_input(path, max_pixels=settings.max_dimension**2),
            "-map", "0:v:0", "-frames:v", "1", "-nostats", "-progress", "pipe:1", "-f", "null", "-"]
    try:
        proc = ffmpeg.run(argv, PROBE_TIMEOUT, "decode check")
    except FFmpegError as exc:
        raise BadInputError(f"the video stream cannot be decoded: {_first_line(exc.stderr) or exc.summary}") from None
    if "frame=1" not in proc.stdout:
        raise BadInputError(f"the video stream cannot be decoded: {_first_line(proc.stderr) or 'no frame came out'}")


def _rotation(v: dict) -> int:
    for sd in v.get("side_data_list") or []:
        if "rotation" in sd:
            return int(round(float(sd["rotation"]))) % 360
    rotate = (v.get("tags") or {}).get("rotate")
    return int(rotate) % 360 if rotate and rotate.lstrip("-").isdigit() else 0


def _bit_depth(pix_fmt: str, v: dict) -> int:
    raw = v.get("bits_per_raw_sample")
    if raw and str(raw).isdigit():
        return int(raw)
    m = re.search(r"p(\d{2})(le|be)?$", pix_fmt)
    return int(m.group(1)) if m else 8


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


_LEVEL_TAG = re.compile(r"\[(fatal|error|warning)\] ")
_CONTEXT = re.compile(r"\[[^\]]* @ 0x[0-9a-f]+\] ")  # "[IMGUTILS @ 0x7ffd...] ": not for a user


def _first_line(text: str) -> str:
    """The first error line (level-tagged output: the first at error level or worse)."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    if any(_LEVEL_TAG.search(line) for line in lines):
        lines = [line for line in lines if "[fatal] " in line or "[error] " in line] or lines
    return _CONTEXT.sub("", _LEVEL_TAG.sub("", lines[0]))[:300] if lines else ""
