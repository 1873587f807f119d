"""The HLS player page: player/player.html with hls.js and a config inlined.

One self-contained file (no CDN, nothing fetched but the media) so that it can be
stored next to the renditions, opened from disk or served by anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "player" / "player.html"
_PLACEHOLDER = re.compile(r"/\*__(HLSJS|CONFIG)__\*/")
# `//# sourceMappingURL=...` would make developer tools fetch a map that is not there
_SOURCE_MAP = re.compile(r"^//# sourceMappingURL=.*$", re.MULTILINE)


def hlsjs_path() -> Path:
    path = ROOT / "player" / "node_modules" / "hls.js" / "dist" / "hls.min.js"
    if not path.is_file():
        raise RuntimeError(f"hls.js is missing ({path}): run `make setup`")
    return path


def config_literal(config: dict) -> str:
    """`config` as a JavaScript literal that cannot end the <script> it sits in.

    JSON is valid JavaScript, but a string holding `</script>` or `<!--` would close
    or confuse the HTML script element; `\\u003c` is the same string to the parser.
    U+2028/2029 are escaped too: older engines reject them raw in string literals.
    """
    text = json.dumps(config, ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


def render(config: dict) -> str:
    hlsjs = _SOURCE_MAP.sub("", hlsjs_path().read_text(encoding="utf-8"))
    # hls.min.js holds no "</script" today; keep it that way whatever a new release does
    hlsjs = re.sub(r"</(script)", r"<\\/\1", hlsjs, flags=re.IGNORECASE)
    parts = {"HLSJS": hlsjs, "CONFIG": config_literal(config)}
    # one pass: text put in by one placeholder is never searched for the other
    return _PLACEHOLDER.sub(lambda m: parts[m.group(1)], TEMPLATE.read_text(encoding="utf-8"))
