"""HLS packaging by stream copy (fMP4/CMAF segments) and a master playlist we write ourselves.

ffmpeg 5.1 writes the media playlists and segments well, but its master playlist omits
CODECS and gets BANDWIDTH wrong, so the master is computed here from what was written:
the exact avc1 profile/level from the init segment's avcC box, and the peak and average
segment bit rates as RFC 8216 defines them.
"""

from __future__ import annotations

import re
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


def avc1_codec(init_segment: Path) -> str:
    """`avc1.PPCCLL` from the avcC box: profile, constraint flags, level, as stored."""
    data = init_segment.read_bytes()
    at = data.find(b"avcC")
    if at < 0 or len(data) < at + 8:
        raise ValueError(f"{init_segment} has no avcC box")
    profile, compat, level = data[at + 5], data[at + 6], data[at + 7]
    return f"avc1.{profile:02x}{compat:02x}{level:02x}"


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


