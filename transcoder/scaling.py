"""Where each rung's pictures are scaled from: the source, or a larger rung's pictures.

Shrinking costs what the input picture costs, not the output: scaling 1080p to 360p reads
every source pixel, as scaling it to 720p does. Scaling the smaller rungs from a larger
rung's already-scaled pictures saves most of that: on a 1080p source with a 720/480/360
ladder, 480p and 360p from the 720p pictures took the filter graph from 3.5 to 2.5 CPU-s per
20 s of video (decoding alone 1.2; three runs each, outputs to null), about 3 CPU-s of the
60 s benchmark's 106 in its chunk ffmpegs.

It must not cost quality. Measured on 6 s of 1080p encoded at CRF 23, against the source
scaled straight to the rung (bicubic, what one ffmpeg process does) and against a lanczos
scale of it (a neutral, sharper reference), size / PSNR / PSNR:
- 360p from 720p, bicubic (a 2:1 step): -0.3% / -0.06 dB / -0.05 dB: the same pictures
  within 60.8 dB before encoding.
- 480p from 720p (a 1.5:1 step), bicubic: -5.1% / -0.27 / -0.28 (a second low-pass: softer);
  spline: +0.3% / -0.08 / +0.17, which is what is used.
- 360p from 480p (1.33:1), bicubic: -3.6% / -0.57: too soft, so no step below 1.5:1.
A rung as large as the source is the source's pictures, so the next one down is scaled from
the source itself, as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .models import Rung

MIN_STEP = 1.5  # a smaller ratio cascades two low-passes too close together (measured above)
BICUBIC_STEP = 2.0  # from 2:1 down, bicubic from a rung matches bicubic from the source


@dataclass(frozen=True)
class Step:
    parent: int  # index of the rung whose pictures are scaled, or -1: the source
    flags: str  # swscale's algorithm


def _pixels(r: Rung) -> int:
    return r.width * r.height


def smallest(rungs: Sequence[Rung]) -> Rung:
    """The rung the thumbnail scan takes its pictures from (the first, where sizes tie)."""
    return min(rungs, key=_pixels)


def _ratio(big: Rung, small: Rung) -> float:
    # to two places: 1280/854 is the 1.5 step of 720p to 480p, rounded to even widths
    return round(min(big.width / small.width, big.height / small.height), 2)


def steps(rungs: Sequence[Rung], source: tuple[int, int]) -> list[Step]:
    """One step per rung, in the rungs' order. `source` is the displayed size, (0, 0) when
    unknown (then every rung is scaled from the source)."""
    src_pixels = source[0] * source[1]
    out = []
    for r in rungs:
        parents = [j for j, q in enumerate(rungs) if _pixels(q) < src_pixels and _ratio(q, r) >= MIN_STEP]
        if not parents:
            out.append(Step(-1, "bicubic"))
            continue
        p = min(parents, key=lambda j: (_pixels(rungs[j]), j))
        out.append(Step(p, "bicubic" if _ratio(rungs[p], r) >= BICUBIC_STEP else "spline"))
    return out


def lineage(rungs: Sequence[Rung], source: tuple[int, int], i: int) -> list[str]:
    """How rung `i`'s pictures are made, source first: part of its cache key, since the
    same rung comes out differently in another ladder."""
    chain = steps(rungs, source)
    out = []
    while i >= 0:
        out.append(f"{rungs[i].width}x{rungs[i].height}:{chain[i].flags}")
        i = chain[i].parent
    return out[::-1]


def needed(chain: Sequence[Step], wanted: Sequence[int]) -> list[int]:
    """The rungs whose pictures `wanted` needs, given their `steps`: themselves and every
    rung they descend from (a cached 720p is still scaled, not encoded, when its 480p is)."""
    out: set[int] = set()
    for i in wanted:
        while i >= 0 and i not in out:
            out.add(i)
            i = chain[i].parent
    return sorted(out)
