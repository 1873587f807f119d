"""Chunk boundaries (frame numbers) and the ladder: the plan every later stage follows.

Boundaries are whole multiples of the segment length (in frames) so every chunk starts
a GOP that all rungs share; among those, a source keyframe is preferred (the seek then
decodes nothing it throws away). Keyframes come from the packet index, read without
decoding; an x264-style source puts them on scene cuts.
"""

from __future__ import annotations

from fractions import Fraction

from .ladder import build_ladder
from .models import Chunk, EncoderSettings, Plan, Probe, stable_hash
from .probe import FrameIndex, frame_rate


def make_plan(
    video_id: str,
    source_sha256: str,
    probe: Probe,
    index: FrameIndex,
    requested_rungs: tuple[int, ...] | None,
    encoder: EncoderSettings,
    segment_seconds: float,
    chunk_seconds: float,
) -> Plan:
    rate, vfr = frame_rate(index, probe.video.fps)
    gop = max(1, round(segment_seconds * rate))
    n = len(index.pts)
    if vfr:
        step = 1
        target = max(1, round(chunk_seconds * rate))
    else:
        step = gop
        target = max(1, round(chunk_seconds / segment_seconds)) * gop
    bounds = _boundaries(n, step, target, index.keyframes)
    rungs, skipped = build_ladder(probe.video, requested_rungs)

    t0 = index.seconds(0)
    frame_dur = 1 / rate  # the last frame lasts one frame of the output rate

    def grid(frame: int) -> int:
        if not vfr:
            return frame
        t = index.seconds(frame) if frame < n else index.seconds(n - 1) + frame_dur
        return round((t - t0) * rate)

    chunks = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        out_start, out_end = grid(a), grid(b)
        chunks.append(
            Chunk(
                index=i,
                start_frame=a,
                end_frame=b,
                seek=_seek(index, a, rate, probe.format_start),
                out_start=out_start,
                out_frames=out_end - out_start,
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
    )


def _boundaries(n: int, step: int, target: int, keyframes: set[int]) -> list[int]:
    """Frame numbers where chunks start, plus n. Each is a multiple of `step`."""
    bounds = [0]
    while True:
        start = bounds[-1]
        if n - start < target * 3 // 2 + step:  # what is left is one chunk, not a chunk and a sliver
            break
        lo, hi = start + max(step, target // 2), start + target * 3 // 2
        candidates = range(lo - lo % step + (step if lo % step else 0), min(hi, n - step) + 1, step)
        keyed = [b for b in candidates if b in keyframes]
        ideal = start + target
        best = min(keyed, key=lambda b: (abs(b - ideal), b)) if keyed else ideal
        bounds.append(best)
    bounds.append(n)
    return bounds


def _seek(index: FrameIndex, frame: int, rate: Fraction, format_start: float) -> float | None:
    """Input `-ss` for a chunk starting at `frame`: between it and the frame before.

    ffmpeg drops decoded frames presented before the seek point, so the point must sit
    after the previous frame and not after this one; a quarter frame before it leaves
    room for rounding to microseconds.
    """
    if frame == 0:
        return None
    gap = index.seconds(frame) - index.seconds(frame - 1)
    delta = min(gap / 2, 1 / (4 * rate))
    return float(index.seconds(frame) - delta) - format_start
