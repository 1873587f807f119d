"""Encode one chunk into the rungs that are still missing, check, and store them."""

from __future__ import annotations

import shutil
from pathlib import Path

from . import encode, ffmpeg, keys
from .errors import DiskFullError, FFmpegError, VerificationError
from .ingest import sha256_file
from .models import Chunk, Plan, Quality, Rung, Segment
from .quality import measure_outputs
from .settings import Settings
from .storage import Storage
from .verify import decoded_frames, packet_frames
from .workspace import out_of_space


def segment_key(plan: Plan, rung: Rung, chunk: Chunk) -> str:
    return keys.segment(plan.video_id, rung.name, plan.profile_hash(rung), ffmpeg.encoder_version(), chunk.index,
                        chunk.sha256, encode.segment_ext(rung))


def stored_segment(storage: Storage, plan: Plan, rung: Rung, chunk: Chunk) -> Segment | None:
    """The segment if a finished copy is in storage (written whole, with its metadata)."""
    key = segment_key(plan, rung, chunk)
    found = storage.head(key)
    if not found:
        return None
    meta = found["metadata"]
    if meta.get("frames") != str(chunk.out_frames) or not meta.get("sha256"):
        return None
    quality = Quality.model_validate_json(meta["quality"]) if meta.get("quality") else None
    return Segment(rung=rung.name, index=chunk.index, key=key, frames=chunk.out_frames,
                   size=found["size"], sha256=meta["sha256"], quality=quality, etag=found["etag"])


def chunk_timeout(plan: Plan, chunk: Chunk, settings: Settings) -> float:
    media_seconds = chunk.out_frames / float(plan.fps)
    return max(settings.ffmpeg_min_timeout, settings.ffmpeg_timeout_per_media_second * media_seconds)


def encode_chunk(source: Path | str, plan: Plan, chunk: Chunk, rungs: list[Rung], storage: Storage,
                 settings: Settings, scratch: Path) -> list[Segment]:
    """One ffmpeg: decode the chunk once, write each rung; check each whole (frames,
    decoding, PSNR/SSIM), upload. `source`: a local file or a presigned link to it."""
    scratch.mkdir(parents=True, exist_ok=True)
    outputs = [(r, scratch / f"{r.name}_{chunk.name}.{encode.segment_ext(r)}") for r in rungs]
    measure = settings.quality_metrics
    argv = encode.chunk_argv(source, plan, chunk, outputs, settings.max_dimension**2, measure)
    timeout = chunk_timeout(plan, chunk, settings)
    try:
        try:
            qualities = _encode_and_check(argv, source, plan, chunk, outputs, scratch, settings, timeout)
        except (FFmpegError, VerificationError):
            if out_of_space(scratch):
                raise DiskFullError(f"transcode chunk {chunk.name}") from None
            raise
        segments = []
        for (rung, path), quality in zip(outputs, qualities):
            sha = sha256_file(path)
            key = segment_key(plan, rung, chunk)
            meta = {"sha256": sha, "frames": str(chunk.out_frames)}
            if quality is not None:
                meta["quality"] = quality.model_dump_json()
            storage.upload(path, key, metadata=meta,
                           content_type="video/mp2t" if path.suffix == ".ts" else "application/octet-stream")
            stored = storage.head(key)  # its ETag, so a later overwrite is seen (Storage.holds)
            segments.append(Segment(rung=rung.name, index=chunk.index, key=key, frames=chunk.out_frames,
                                    size=path.stat().st_size, sha256=sha, quality=quality,
                                    etag=stored["etag"] if stored else None))
        return segments
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _encode_and_check(argv: list[str], source: Path | str, plan: Plan, chunk: Chunk, outputs: list[tuple[Rung, Path]],
                      scratch: Path, settings: Settings, timeout: float) -> list[Quality | None]:
    """Run the chunk's ffmpeg; every output has the planned frame count, every frame decoded
    (by the comparison, by x264's own reconstruction, or by a decode check here)."""
    proc = ffmpeg.run(argv, timeout, f"transcode chunk {chunk.name} ({', '.join(r.name for r, _ in outputs)})")
    qualities: list[Quality | None] = (
        list(measure_outputs(proc.stderr, source, plan, chunk, outputs, scratch, settings.max_dimension**2, timeout))
        if settings.quality_metrics else [None] * len(outputs))
    for (rung, path), quality in zip(outputs, qualities):
        if quality is not None and quality.method == "ffmpeg":
            continue  # decoded whole by the comparison
        if quality is not None and quality.method == "x264" and not settings.decode_segments:
            frames, how = packet_frames(path, timeout), "written"  # x264 decoded them (settings.decode_segments)
        else:
            frames, how = decoded_frames(path, timeout), "decoded"
        if frames != chunk.out_frames:
            raise VerificationError(
                f"chunk {chunk.name} {rung.name}: {frames} frames {how}, the plan has {chunk.out_frames}")
    return qualities
