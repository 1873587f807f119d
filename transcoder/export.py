"""Copies of a finished video's outputs in a local folder (`transcode run --output-dir`).

Plain functions over a `Storage`: the flow's export tasks call them, and so does the
command when it answers a rerun from storage without starting a flow (transcoder/reuse.py).
"""

from __future__ import annotations

from pathlib import Path

from . import keys
from .errors import VerificationError
from .ingest import sha256_file
from .models import Rendition
from .storage import Storage


def export_rendition(storage: Storage, rendition: Rendition, output_dir: str) -> Rendition:
    """Copy a published rendition to `output_dir` (kept when the same bytes are there)."""
    dest = Path(output_dir).expanduser().resolve() / Path(rendition.key).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not (dest.exists() and dest.stat().st_size == rendition.size and sha256_file(dest) == rendition.sha256):
        storage.download(rendition.key, dest)
        if sha256_file(dest) != rendition.sha256:
            dest.unlink()
            raise VerificationError(f"{rendition.key} changed while it was being copied (another run?); run again")
    return rendition.model_copy(update={"path": str(dest)})


def export_package(storage: Storage, video_id: str, output_dir: str) -> str:
    """Copy the HLS package, the poster and thumbnails, and report.json to `output_dir`
    (`DIR/hls/`, `DIR/thumbnails/`, `DIR/report.json`); returns the master playlist's path."""
    root = Path(output_dir).expanduser().resolve()
    for prefix, folder in ((keys.hls(video_id), "hls"), (keys.thumbnails(video_id), "thumbnails")):  # may be empty
        for key in storage.list_keys(prefix):
            storage.download(key, root / folder / key[len(prefix):])
    storage.download(keys.report(video_id), root / "report.json")
    return str(root / "hls" / "master.m3u8")
