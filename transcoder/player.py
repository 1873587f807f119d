"""The HLS player page: player/player.html with hls.js and a config inlined.

One self-contained file (no CDN, nothing fetched but the media) so that it can be
stored next to the renditions, opened from disk or served by anything.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

from . import keys
from .workspace import write_aside

if TYPE_CHECKING:
    from .models import Thumbnails
    from .storage import Storage

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


def page_config(video_id: str, title: str, thumbnails: Thumbnails | None, storage: Storage | None,
                expires: int = 0) -> dict:
    """The page's config. With `storage`, every file is reached through a presigned URL
    (the bucket is private); without, paths are relative to the page (a folder copy)."""
    root = keys.hls(video_id).removesuffix("hls/")
    config = {"title": title, "base": "", "signed": {}, "master": "hls/master.m3u8",
              "poster": "thumbnails/poster.jpg" if thumbnails else None,
              "thumbnails": "thumbnails/thumbnails.vtt" if thumbnails else None}
    if storage is not None:
        names = storage.list_keys(keys.hls(video_id)) + (storage.list_keys(keys.thumbnails(video_id)) if thumbnails else [])
        signed = {key[len(root):]: storage.presigned_url(key, expires, public=True) for key in names}
        master = signed["hls/master.m3u8"]
        config["signed"] = signed
        # the unsigned address of `{video_id}/`: what hls.js resolves relative URIs under
        config["base"] = master.split("?", 1)[0].removesuffix("hls/master.m3u8")
    return config


def publish(storage: Storage, video_id: str, title: str, thumbnails: Thumbnails | None, expires: int) -> str:
    """The page in storage, next to the package; returns its presigned address. Its links
    are presigned too, so the page works for as long as they do (`expires` seconds)."""
    storage.put_text(keys.player(video_id), render(page_config(video_id, title, thumbnails, storage, expires)),
                     "text/html; charset=utf-8")
    return storage.presigned_url(keys.player(video_id), expires, public=True)


def export(video_id: str, title: str, thumbnails: Thumbnails | None, output_dir: str) -> str:
    """`DIR/player.html` beside a folder copy (`--output-dir`): relative links, no expiry."""
    local = Path(output_dir).expanduser().resolve() / "player.html"
    page = render(page_config(video_id, title, thumbnails, None))
    # as every other exported file: a full disk leaves no half page
    write_aside(local, lambda tmp: tmp.write_text(page, encoding="utf-8"), f"export of player.html to {local.parent}")
    return str(local)
