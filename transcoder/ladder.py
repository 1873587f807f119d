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
CODECS = ("h264", "hevc", "av1")
AV1_MIN_SIDE = 64  # SVT-AV1 refuses smaller pictures
_RUNG = re.compile(r"^(\d{2,4})p(?::(\w+))?$")

Wanted = tuple[int, str]  # (short side, codec)


def parse_rungs(spec: str | list[str] | tuple[str, ...] | None, codec: str = "h264") -> tuple[Wanted, ...] | None:
    """'1080p:av1,720p' → ((1080, 'av1'), (720, codec)); None or '' → None (the default ladder).

    A ladder may mix codecs, and hold one size in two codecs (`720p,720p:av1`).
    """
    check_codec(codec)
    if spec is None:
        return None
    items = [s.strip().lower() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        return None
    wanted = []
    for item in items:
        m = _RUNG.match(item)
        if not m or not 16 <= int(m.group(1)) <= 4320:
            raise BadInputError(f"not a rendition: {item!r} (expected <height>p between 16p and 4320p, e.g. 720p, "
                                f"optionally with a codec: 720p:av1)")
        wanted.append((int(m.group(1)), check_codec(m.group(2) or codec)))
    return tuple(sorted(set(wanted), key=_order))


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise BadInputError(f"unknown codec {codec!r} (one of {', '.join(CODECS)})")
    return codec


def _order(w: Wanted) -> tuple[int, int]:
    return (-w[0], CODECS.index(w[1]))


def rung_name(n: int, codec: str) -> str:
    return f"{n}p" if codec == "h264" else f"{n}p-{codec}"


def build_ladder(video: VideoInfo, requested: tuple[Wanted, ...] | None,
                 codec: str = "h264") -> tuple[tuple[Rung, ...], tuple[str, ...]]:
    """The rungs to make (largest first) and the requested ones skipped as upscales."""
    short = min(video.display_width, video.display_height)
    short_even = short - short % 2
    if requested is None:
        sizes = [n for n in DEFAULT_LADDER if n <= short]
        if short_even < DEFAULT_LADDER[0] and short_even not in sizes:
            sizes.append(short_even)
        wanted = [(n, codec) for n in sizes]
        skipped: list[Wanted] = []
    else:
        wanted = [w for w in requested if w[0] <= short]
        skipped = [w for w in requested if w[0] > short]
        if not wanted:
            wanted = sorted({(short_even, c) for _, c in requested}, key=_order)
    wanted = sorted(set(wanted), key=_order)
    rungs = tuple(rung_for(n, video, c) for n, c in wanted)
    for rung in rungs:
        if rung.codec == "av1" and min(rung.width, rung.height) < AV1_MIN_SIDE:
            raise BadInputError(f"{rung.name} would be {rung.width}x{rung.height}: SVT-AV1 needs at least "
                                f"{AV1_MIN_SIDE} pixels each way")
    return rungs, tuple(rung_name(n, c) for n, c in skipped)


def rung_for(n: int, video: VideoInfo, codec: str = "h264") -> Rung:
    """Even sides (4:2:0) that never exceed the source's: an odd `n` rounds down (363p of a
    363-line source is 362 lines, not an upscale to 364), and so does a long side that would
    round past the source's."""
    dw, dh = video.display_width, video.display_height
    short_side, long_side = min(dw, dh), max(dw, dh)
    short = max(2, n - n % 2)
    long = max(2, min(_even(Fraction(short * long_side, short_side)), long_side - long_side % 2))
    width, height = (long, short) if dw >= dh else (short, long)
    return Rung(name=rung_name(n, codec), width=width, height=height, codec=codec)


def _even(x: Fraction) -> int:
    return max(2, 2 * round(x / 2))
