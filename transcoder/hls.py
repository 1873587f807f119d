"""HLS packaging by stream copy (fMP4/CMAF segments) and a master playlist we write ourselves.

ffmpeg 5.1 writes the media playlists and segments well, but its master playlist omits
CODECS and gets BANDWIDTH wrong, so the master is computed here from what was written:
the exact codec profile/level from the init segment's configuration box, and the peak and average
segment bit rates as RFC 8216 defines them.
"""

from __future__ import annotations

import re
import struct
from fractions import Fraction
from pathlib import Path

from . import ffmpeg
from .models import HlsMedia

AUDIO_GROUP = "audio"
AAC_LC = "mp4a.40.2"


CONTENT_TYPES = {".m3u8": "application/vnd.apple.mpegurl", ".m4s": "video/iso.segment", ".mp4": "video/mp4"}


def segment_time(fps: Fraction, gop_frames: int, wanted_seconds: float) -> tuple[float, float]:
    """(`-hls_time`, target duration): a whole number of GOPs near the wanted length.

    Every GOP starts with a keyframe shared by all rungs, so segments of whole GOPs
    start on the same frame in every rung. `-hls_time` sits half a frame short of the
    target so rounding never pushes a cut to the next keyframe.
    """
    gops = max(1, round(wanted_seconds * float(fps) / gop_frames))
    frames = gops * gop_frames
    return float((frames - Fraction(1, 2)) / fps), float(frames / fps)


def package_argv(source: Path, out_dir: Path, stream: str, segment_seconds: float) -> list[str]:
    """Stream-copy one stream (`v` or `a`) of a finished MP4 into fMP4 HLS in `out_dir`."""
    return [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", *ffmpeg.trusted_input(source),
            "-map", f"0:{stream}:0", "-c", "copy", "-f", "hls", "-hls_time", f"{segment_seconds:g}",
            "-hls_playlist_type", "vod", "-hls_segment_type", "fmp4", "-hls_flags", "independent_segments",
            "-hls_fmp4_init_filename", "init.mp4",
            "-hls_segment_filename", str(out_dir / "seg_%05d.m4s"), str(out_dir / "index.m3u8")]


def package(source: Path, out_dir: Path, stream: str, segment_seconds: float, timeout: float) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    ffmpeg.run(package_argv(source, out_dir, stream, segment_seconds), timeout, f"package HLS {out_dir.name}")
    return out_dir / "index.m3u8"


def segment_durations(playlist: Path) -> list[tuple[float, str]]:
    """(EXTINF duration, URI) of every media segment, in order."""
    out, pending = [], None
    for line in playlist.read_text().splitlines():
        line = line.strip()
        if line.startswith("#EXTINF:"):
            pending = float(line[len("#EXTINF:"):].split(",")[0])
        elif line and not line.startswith("#") and pending is not None:
            out.append((pending, line))
            pending = None
    return out


def bitrates(playlist: Path, target: float) -> tuple[int, int]:
    """(peak, average) segment bit rate in bits/s.

    Peak: the largest rate of any run of consecutive segments lasting 0.5 to 1.5 times
    the target duration (RFC 8216, 4.3.4.2), so a short last segment is judged with its
    neighbour. Average: all segment bytes over the whole duration.
    """
    segs = [(d, (playlist.parent / uri).stat().st_size) for d, uri in segment_durations(playlist)]
    total_d = sum(d for d, _ in segs)
    total_b = sum(b for _, b in segs)
    peak = 0.0
    for i in range(len(segs)):
        dur = size = 0.0
        for d, b in segs[i:]:
            dur, size = dur + d, size + b
            if dur > 1.5 * target:
                break
            if dur >= 0.5 * target:
                peak = max(peak, 8 * size / dur)
    if peak == 0 and total_d > 0:  # shorter than half a target in all
        peak = 8 * total_b / total_d
    return round(peak), round(8 * total_b / total_d) if total_d else 0


def video_codec(init_segment: Path) -> str:
    """RFC 6381 CODECS value of the video in an init segment, from its sample entry:
    `avc1.PPCCLL`, `hvc1.P.C.TLL.B...` (ISO/IEC 14496-15 E.3) or `av01.P.LLT.DD`."""
    data = init_segment.read_bytes()
    entry, config = _sample_entry(data)
    if entry in (b"avc1", b"avc3"):
        if len(config) < 4:
            raise ValueError(f"{init_segment}: avcC too short")
        return f"{entry.decode()}.{config[1]:02x}{config[2]:02x}{config[3]:02x}"
    if entry in (b"hvc1", b"hev1"):
        return _hevc_codec(entry, config)
    return _av1_codec(entry, config)


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"mvex", b"moof", b"traf"}
_CONFIG_BOX = {b"avc1": b"avcC", b"avc3": b"avcC", b"hvc1": b"hvcC", b"hev1": b"hvcC", b"av01": b"av1C"}


def _boxes(data: bytes, start: int, end: int):
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                break
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise ValueError(f"truncated or corrupt box {kind!r} at {pos}")
        yield kind, pos + header, pos + size
        pos += size


def _sample_entry(data: bytes) -> tuple[bytes, bytes]:
    """(sample entry type, its codec configuration box) of the first video track: walks
    moov/trak/.../stsd rather than searching bytes, which a payload could imitate."""
    def walk(start: int, end: int):
        for kind, body, stop in _boxes(data, start, end):
            if kind in _CONTAINERS:
                found = walk(body, stop)
            elif kind == b"stsd":  # version/flags, entry count
                found = walk(body + 8, stop)
            elif kind in _CONFIG_BOX:  # visual sample entry: 78 bytes, then child boxes
                found = next(((kind, data[cb:ce]) for child, cb, ce in _boxes(data, body + 78, stop)
                              if child == _CONFIG_BOX[kind]), None)
            else:
                found = None
            if found:
                return found
        return None

    found = walk(0, len(data))
    if not found:
        raise ValueError("no avc1/hvc1/av01 sample entry with its configuration box")
    return found


def _hevc_codec(entry: bytes, c: bytes) -> str:
    if len(c) < 13 or c[0] != 1:
        raise ValueError("hvcC too short or not configurationVersion 1")
    space, tier, profile = c[1] >> 6, (c[1] >> 5) & 1, c[1] & 0x1F
    compat = int(f"{struct.unpack_from('>I', c, 2)[0]:032b}"[::-1], 2)  # bits in reverse order
    constraints = list(c[6:12])
    while constraints and constraints[-1] == 0:  # trailing zero bytes are left out
        constraints.pop()
    return ".".join([entry.decode(), ("", "A", "B", "C")[space] + str(profile), f"{compat:X}",
                     ("L", "H")[tier] + str(c[12])] + [f"{b:02X}" for b in constraints])


def _av1_codec(entry: bytes, c: bytes) -> str:
    """The short form; the optional colour fields live in the sequence header, not av1C."""
    if len(c) < 4 or c[0] != 0x81:  # marker 1, version 1
        raise ValueError("av1C too short or not marker 1 / version 1")
    profile, level = c[1] >> 5, c[1] & 0x1F
    tier, high, twelve = c[2] >> 7, (c[2] >> 6) & 1, (c[2] >> 5) & 1
    depth = (12 if twelve else 10) if (profile == 2 and high) else (10 if high else 8)
    return f"{entry.decode()}.{profile}.{level:02d}{'MH'[tier]}.{depth:02d}"


def media_playlist(playlist: Path, uri: str, codecs: str, target: float) -> HlsMedia:
    peak, average = bitrates(playlist, target)
    return HlsMedia(uri=uri, codecs=codecs, peak_bps=peak, average_bps=average,
                    segments=len(segment_durations(playlist)), target_duration=target)


def master_playlist(variants: list[tuple[HlsMedia, int, int, Fraction]], audio: HlsMedia | None) -> str:
    """The multivariant playlist: one EXT-X-STREAM-INF per rung, audio as its own group."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-INDEPENDENT-SEGMENTS"]
    if audio:
        lines.append(f'#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="{AUDIO_GROUP}",NAME="audio",DEFAULT=YES,AUTOSELECT=YES,'
                     f'URI="{audio.uri}"')
    for media, width, height, fps in variants:
        codecs = media.codecs + (f",{audio.codecs}" if audio else "")
        peak = media.peak_bps + (audio.peak_bps if audio else 0)
        average = media.average_bps + (audio.average_bps if audio else 0)
        attrs = [f"BANDWIDTH={peak}", f"AVERAGE-BANDWIDTH={average}", f'CODECS="{codecs}"',
                 f"RESOLUTION={width}x{height}", f"FRAME-RATE={float(fps):.3f}"]
        if audio:
            attrs.append(f'AUDIO="{AUDIO_GROUP}"')
        lines += ["#EXT-X-STREAM-INF:" + ",".join(attrs), media.uri]
    return "\n".join(lines) + "\n"


def files_of(playlist: Path) -> list[Path]:
    """The playlist, its init segment and its media segments."""
    text = playlist.read_text()
    init = re.findall(r'#EXT-X-MAP:URI="([^"]+)"', text)
    return [playlist] + [playlist.parent / u for u in init] + [playlist.parent / u for _, u in segment_durations(playlist)]


