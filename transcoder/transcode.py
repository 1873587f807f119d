"""Encode one chunk into the rungs that are still missing, check, and store them."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from . import encode, ffmpeg, keys, scaling, thumbnails
from .errors import DiskFullError, FFmpegError, VerificationError
from .ingest import sha256_file
from .models import Chunk, Plan, Quality, Rung, Segment, stable_hash
from .quality import measure_outputs
from .settings import Settings
from .storage import Storage
from .verify import decoded_frames, packet_frames
from .workspace import out_of_space


log = logging.getLogger(__name__)


def thumb_size(plan: Plan) -> tuple[int, int]:
    """Thumbnails are the smallest rung's shape at thumbnail size."""
    small = scaling.smallest(plan.rungs)
    return thumbnails.thumb_size(small.width, small.height)


def scan_key(plan: Plan, chunk: Chunk) -> str:
    # what decides the scores and which frames are kept: the frames (chunk sha256, where
    # they sit), their size and rate, and the cues (from the duration)
    profile = stable_hash({"version": thumbnails.SCAN_VERSION, "size": thumb_size(plan), "duration": plan.duration,
                           "fps": f"{plan.fps_num}/{plan.fps_den}", "start": chunk.out_start,
                           "frames": chunk.out_frames, "from": plan.lineage(scaling.smallest(plan.rungs)),
                           **plan.filters_fingerprint()})[:16]
    return keys.scan(plan.video_id, profile, chunk.index, chunk.sha256)


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
                 settings: Settings, scratch: Path, scan: bool = False) -> list[Segment]:
    """One ffmpeg: decode the chunk once, write each rung; check each whole (frames,
    decoding, PSNR/SSIM), upload. `source`: a local file or a presigned link to it.
    `scan`: the same ffmpeg scores the chunk's frames for the thumbnails (stored first:
    a chunk whose segments are stored has its scan, unless storing the scan failed)."""
    scratch.mkdir(parents=True, exist_ok=True)
    try:  # from here on, the scratch folder is removed whatever happens
        outputs = [(r, scratch / f"{r.name}_{chunk.name}.{encode.segment_ext(r)}") for r in rungs]
        measure = settings.quality_metrics
        files = None
        if scan:
            files = encode.ChunkScanFiles(stats=scratch / "scan.txt", pictures=scratch / "scan", size=thumb_size(plan))
            files.pictures.mkdir()
        argv = encode.chunk_argv(source, plan, chunk, outputs, settings.max_dimension**2, measure, files)
        timeout = chunk_timeout(plan, chunk, settings)
        try:
            qualities = _encode_and_check(argv, source, plan, chunk, outputs, scratch, settings, timeout)
        except (FFmpegError, VerificationError):
            if out_of_space(scratch):
                raise DiskFullError(f"transcode chunk {chunk.name}") from None
            raise
        if files is not None:
            _store_scan(files, plan, chunk, storage)
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


def _store_scan(files: encode.ChunkScanFiles, plan: Plan, chunk: Chunk, storage: Storage) -> None:
    """Keep the chunk's scan; without it the merge scans the smallest rendition instead, so
    a scan that cannot be read or stored costs time there, never the chunk."""
    try:
        scan = thumbnails.chunk_scan(files.stats, files.pictures, chunk.out_start, chunk.out_frames, float(plan.fps),
                                     plan.duration)
    except (OSError, ValueError, KeyError) as exc:
        log.warning("chunk %s: no thumbnail scan kept (%s)", chunk.name, exc)
        return
    storage.put_text(scan_key(plan, chunk), json.dumps(scan, separators=(",", ":")), "application/json")


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
