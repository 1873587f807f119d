"""Which rungs to make, and their picture sizes.

A rung `<N>p` is named by the short side of the displayed picture (the height of a
landscape video, the width of a portrait one), after rotation and non-square pixels.
No rung upscales; the source's own size joins the ladder when it sits below the top.
"""

from __future__ import annotations

import re
from fractions import Fraction

from .errors import BadInputError
from .models import Rung, VideoInfo

DEFAULT_LADDER = (1080, 720, 480, 360)
EARLIER_SYSTEM_LADDER = (720, 480, 320)  # `--renditions 720p,480p,320p`
_RUNG = re.compile(r"^(\d{2,4})p$")


def parse_rungs(spec: str | list[str] | tuple[str, ...] | None) -> tuple[int, ...] | None:
    """'1080p,720p' → (1080, 720); None or '' → None (the default ladder)."""
    if spec is None:
        return None
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        return None
    sizes = []
    for item in items:
        m = _RUNG.match(item)
        if not m or not 16 <= int(m.group(1)) <= 4320:
            raise BadInputError(f"not a rendition: {item!r} (expected <height>p between 16p and 4320p, e.g. 720p)")
        sizes.append(int(m.group(1)))
    return tuple(sorted(set(sizes), reverse=True))


def build_ladder(video: VideoInfo, requested: tuple[int, ...] | None) -> tuple[tuple[Rung, ...], tuple[str, ...]]:
    """The rungs to make (largest first) and the requested ones skipped as upscales."""
    short = min(video.display_width, video.display_height)
    short_even = short - short % 2
    if requested is None:
        sizes = [n for n in DEFAULT_LADDER if n <= short]
        if short_even < DEFAULT_LADDER[0] and short_even not in sizes:
            sizes.append(short_even)
        skipped: list[int] = []
    else:
        sizes = [n for n in requested if n <= short]
        skipped = [n for n in requested if n > short]
        if not sizes:
            sizes = [short_even]
    sizes = sorted(set(sizes), reverse=True)
    return tuple(rung_for(n, video) for n in sizes), tuple(f"{n}p" for n in skipped)


def rung_for(n: int, video: VideoInfo) -> Rung:
    dw, dh = video.display_width, video.display_height
    if dw >= dh:
        height, width = n, _even(Fraction(n * dw, dh))
    else:
        width, height = n, _even(Fraction(n * dh, dw))
    return Rung(name=f"{n}p", width=_even(Fraction(width)), height=_even(Fraction(height)))


def _even(x: Fraction) -> int:
    return max(2, 2 * round(x / 2))
