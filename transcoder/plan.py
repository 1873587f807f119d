"""Chunk boundaries (frame numbers) and the ladder: the plan every later stage follows.

Boundaries are whole multiples of the segment length (in frames) so every chunk starts
a GOP that all rungs share; among those, a source keyframe is preferred (the seek then
decodes nothing it throws away). Keyframes come from the packet index, read without
decoding; an x264-style source puts them on scene cuts.
"""

from __future__ import annotations

import bisect
from fractions import Fraction

from .ladder import build_ladder
from .models import Chunk, EncoderSettings, Plan, Probe, stable_hash
from .probe import FrameIndex, frame_rate
from .settings import Settings


def make_plan(
    video_id: str,
    source_sha256: str,
    probe: Probe,
    index: FrameIndex,
    requested_rungs: tuple[tuple[int, str], ...] | None,
    encoder: EncoderSettings,
    gop_seconds: float,
    chunk_seconds: float,
) -> Plan:
    rate, vfr = frame_rate(index, probe.video.fps)
    gop = max(1, round(gop_seconds * rate))
    n = len(index.pts)
    # VFR output frames are not source frames, so its joints need not sit on GOP multiples
    step = 1 if vfr else gop
    bounds = _boundaries(n, step, max(1, round(chunk_seconds * rate)), index.keyframes)
    rungs, skipped = build_ladder(probe.video, requested_rungs, encoder.codec)

    t0 = index.seconds(0)
    frame_dur = 1 / rate  # the last frame lasts one frame of the output rate
    key_times = [index.seconds(k) for k in sorted(index.keyframes)]
    longest = _longest_gop(key_times) if UNINDEXED_FORMATS & set(probe.format_name.split(",")) else None

    def grid(frame: int) -> int:
        if not vfr:
            return frame
        t = index.seconds(frame) if frame < n else index.seconds(n - 1) + frame_dur
        return round((t - t0) * rate)

    chunks = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        out_start, out_end = grid(a), grid(b)
        margin = Fraction(0) if longest is None else _seek_margin(index, key_times, longest, a)
        chunks.append(
            Chunk(
                index=i,
                start_frame=a,
                end_frame=b,
                seek=_seek(index, a, rate, probe.format_start, margin),
                start_time=float(_cut(index, a, rate)) if a > 0 else None,
                end_time=float(_cut(index, b, rate)) if b < n else None,
                out_start=out_start,
                out_frames=out_end - out_start,
                lead=float(_lead(index, key_times, a, rate, margin)),
                weight=sum(index.sizes[a:b]) if index.sizes else 0,
                sha256=stable_hash({"source": source_sha256, "frames": [a, b], "out": [out_start, out_end]}),
            )
        )
    return Plan(
        video_id=video_id,
        source_sha256=source_sha256,
        rungs=rungs,
        chunks=tuple(chunks),
        fps_num=rate.numerator,
        fps_den=rate.denominator,
        vfr=vfr,
        deinterlace=probe.video.interlaced,
        gop_frames=gop,
        total_frames=sum(c.out_frames for c in chunks),
        has_audio=probe.audio is not None,
        video_start=float(t0) - probe.format_start,
        encoder=encoder,
        skipped_rungs=skipped,
        source_width=probe.video.display_width,
        source_height=probe.video.display_height,
    )


AUTO_CHUNK_SECONDS = (8.0, 32.0)
CHUNKS_PER_SLOT = 2  # two rounds: the heaviest chunks go first, so the last round is short
DEPLOYMENT_SLOTS = 16


def encode_slots(settings: Settings, mode: str) -> int:
    return settings.parallel_chunks or (settings.max_workers if mode == "local" else DEPLOYMENT_SLOTS)


def auto_chunk_seconds(duration: float, slots: int) -> float:
    """The longest chunks that still give every encode slot about two.

    Measured on 60 s of 1080p, 4 rungs, 2 cores, two runs each: 8 s chunks (8) took 70.1 /
    72.3 s and 131.1 / 137.0 CPU-s, 16 s chunks (4) 65.9 / 68.1 s and 122.4 / 127.5 CPU-s
    (-6% wall, -7% CPU), 30 s chunks (2, one per core) 71.3 s: the busier half ran alone
    at the end. Below 8 s the per-chunk costs grow fast (2 s chunks: +23% CPU), so more
    slots than that fills are left idle rather than cut finer.
    """
    low, high = AUTO_CHUNK_SECONDS
    return min(high, max(low, duration / (CHUNKS_PER_SLOT * slots)))


def chunk_length(requested: float | None, settings: Settings, mode: str, duration: float) -> float:
    return requested or settings.chunk_seconds or auto_chunk_seconds(duration, encode_slots(settings, mode))


def _boundaries(n: int, step: int, target: int, keyframes: set[int]) -> list[int]:
    """Frame numbers where chunks start, plus n; every one a multiple of `step`.

    The video is cut into about as many chunks as `target` suggests, all of nearly the same
    length (a short last chunk would leave workers idle at the end); each boundary then
    moves to a source keyframe within one step of it when there is one, so the seek
    decodes nothing it throws away.
    """
    units = -(-n // step)  # GOPs, the last one maybe short
    count = max(1, round(n / target))
    # An even count splits evenly over two workers (or any even number); an odd one
    # leaves one worker alone with the last chunk. It must not depend on this machine's
    # worker count: the plan decides the cache keys, which other machines share.
    count += count % 2 if count > 1 else 0
    count = min(count, units)
    bounds = [0]
    for i in range(1, count):
        ideal = round(units * i / count) * step
        near = [b for b in (ideal, ideal - step, ideal + step) if b in keyframes and bounds[-1] < b < n]
        bounds.append(near[0] if near else ideal)
    bounds.append(n)
    return sorted(set(b for b in bounds if 0 <= b <= n))


# Demuxers that find a time by reading and guessing rather than from an index: a seek
# can land late, past the keyframe it needed, so they seek earlier by a margin.
UNINDEXED_FORMATS = {"mpegts", "mpegtsraw", "mpeg", "mpegvideo", "h264", "hevc", "m4v"}


def _longest_gop(key_times: list[Fraction]) -> Fraction:
    """Seconds between the two keyframes furthest apart (0 with one keyframe)."""
    return max((b - a for a, b in zip(key_times, key_times[1:])), default=Fraction(0))


def _seek_margin(index: FrameIndex, key_times: list[Fraction], longest: Fraction, frame: int) -> Fraction:
    """How much earlier than a chunk starting at `frame` a demuxer without an index seeks:
    the longest GOP plus a second, since such a seek can land late; and never less than
    the way back to the keyframe of the chunk's own GOP plus that second. Only the last GOP
    (from the last keyframe to the end of the stream) can be longer than `longest`: with
    one keyframe, a long final GOP, a seek by the longest GOP alone landed after the
    keyframe it needed and the chunk decoded no frame."""
    t = index.seconds(frame)
    at = bisect.bisect_right(key_times, t)
    own = t - (key_times[at - 1] if at else index.seconds(0))
    return max(longest, own) + 1


def _cut(index: FrameIndex, frame: int, rate: Fraction) -> Fraction:
    """Where a chunk starting at `frame` begins, in source seconds: just before the frame.

    Between it and the frame before, a quarter frame early (at most half the gap), so
    that rounding can never move the cut across a frame.
    """
    gap = index.seconds(frame) - index.seconds(frame - 1)
    return index.seconds(frame) - min(gap / 2, 1 / (4 * rate))


def _lead(index: FrameIndex, key_times: list[Fraction], frame: int, rate: Fraction, margin: Fraction) -> Fraction:
    """Seconds from the keyframe where decoding of a chunk starting at `frame` begins, to
    the frame (where `_seek` makes the demuxer land, plus the margin of demuxers without
    an index). `key_times`: the keyframes' times, sorted."""
    if frame == 0 or (frame in index.keyframes and not margin):
        return Fraction(0)
    at = bisect.bisect_right(key_times, _cut(index, frame, rate) - margin)
    start = key_times[at - 1] if at else index.seconds(0)
    return max(Fraction(0), index.seconds(frame) - start)


def _seek(index: FrameIndex, frame: int, rate: Fraction, format_start: float, margin: Fraction) -> float | None:
    """Input `-ss` (from the container start) for a chunk starting at `frame`, or None to
    decode from the start.

    The demuxer goes to the last keyframe at or before the target and decoding starts
    there; the exact first frame is then cut by `trim` (`Chunk.start_time`). When the
    chunk starts on a keyframe the target is just after it, so the seek lands on that
    keyframe and decodes nothing that is thrown away.
    """
    if frame == 0:
        return None
    t = index.seconds(frame)
    if frame in index.keyframes and not margin:
        after = index.seconds(frame + 1) - t if frame + 1 < len(index.pts) else 1 / rate
        target = t + min(after / 2, 1 / (4 * rate))
    else:
        target = _cut(index, frame, rate) - margin
    if float(target) <= format_start:
        # at or before the start: read from there without a seek (a raw MPEG video stream
        # sought to 0 landed on its second keyframe)
        return None
    return float(target) - format_start
