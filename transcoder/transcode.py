"""Encode one chunk into the rungs that are still missing, check, and store them."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import encode, ffmpeg, keys
from .errors import VerificationError
from .ingest import sha256_file
from .models import Chunk, Plan, Rung, Segment
from .settings import Settings
from .storage import Storage
from .verify import decoded_frames


def segment_key(plan: Plan, rung: Rung, chunk: Chunk) -> str:
    return keys.segment(plan.video_id, rung.name, plan.profile_hash(rung), ffmpeg.encoder_version(), chunk.index,
                        chunk.sha256)


def stored_segment(storage: Storage, plan: Plan, rung: Rung, chunk: Chunk) -> Segment | None:
    """The segment if a finished copy is in storage (written whole, with its metadata)."""
    key = segment_key(plan, rung, chunk)
    found = storage.head(key)
    if not found:
        return None
    meta = found["metadata"]
    if meta.get("frames") != str(chunk.out_frames) or not meta.get("sha256"):
        return None
    return Segment(rung=rung.name, index=chunk.index, key=key, frames=chunk.out_frames,
                   size=found["size"], sha256=meta["sha256"])


def encode_chunk(source: Path, plan: Plan, chunk: Chunk, rungs: list[Rung], storage: Storage,
                 settings: Settings, scratch: Path) -> list[Segment]:
    """One ffmpeg: decode the chunk once, write each rung, check frame counts, upload."""
    scratch.mkdir(parents=True, exist_ok=True)
    outputs = [(r, scratch / f"{r.name}_{chunk.name}.ts") for r in rungs]
    argv = encode.chunk_argv(source, plan, chunk, outputs, settings.max_dimension**2)
    media_seconds = chunk.out_frames / float(plan.fps)
    timeout = max(settings.ffmpeg_min_timeout, settings.ffmpeg_timeout_per_media_second * media_seconds)
    try:
        ffmpeg.run(argv, timeout, f"transcode chunk {chunk.name} ({', '.join(r.name for r in rungs)})")
        segments = []
        for rung, path in outputs:
            frames = decoded_frames(path, timeout)
            if frames != chunk.out_frames:
                raise VerificationError(
                    f"chunk {chunk.name} {rung.name}: {frames} frames decoded, the plan has {chunk.out_frames}"
                )
            sha = sha256_file(path)
            key = segment_key(plan, rung, chunk)
            storage.upload(path, key, metadata={"sha256": sha, "frames": str(frames)}, content_type="video/mp2t")
            segments.append(Segment(rung=rung.name, index=chunk.index, key=key, frames=frames,
                                    size=path.stat().st_size, sha256=sha))
        return segments
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
