from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from transcoder import keys
from transcoder.ingest import restamp
from transcoder.models import Plan, Probe, SourceObject, TranscodeResult
from transcoder.settings import get_settings
from transcoder.storage import Storage
from transcoder.workspace import remove_scratch

from .common import retry_transient


def _artifact_key(video_id: str, what: str) -> str:
    # artifact keys allow lowercase letters, digits and dashes only
    return f"{what}-{video_id}".lower()


@task(name="report", retries=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def publish_report(result: TranscodeResult, source: SourceObject, probe: Probe, plan: Plan) -> str:
    """report.json in storage, plus a table and a summary in the Prefect UI."""
    storage = Storage()
    v = probe.video
    report = {
        "video_id": result.video_id,
        "source": {"origin": source.origin, "key": source.key, "sha256": source.sha256, "size": source.size,
                   "format": probe.format_name, "codec": v.codec, "width": v.width, "height": v.height,
                   "display": f"{v.display_width}x{v.display_height}", "rotation": v.rotation,
                   "pix_fmt": v.pix_fmt, "interlaced": v.interlaced, "frames": plan.total_frames,
                   "audio": probe.audio.model_dump() if probe.audio else None},
        "plan": {"chunks": len(plan.chunks), "fps": result.fps, "vfr": plan.vfr, "gop_frames": plan.gop_frames,
                 "duration": result.duration, "skipped_rungs": list(plan.skipped_rungs)},
        "encoder": result.encoder.model_dump(),
        "run": {"transcoded": result.transcoded, "cached": result.cached, "wall_seconds": result.wall_seconds,
                "speed_x_realtime": round(result.duration / result.wall_seconds, 3) if result.wall_seconds else None},
        "renditions": [r.model_dump() for r in result.renditions],
        "quality": {"metrics": ["psnr", "ssim"] if any(r.quality for r in result.renditions) else [],
                    "reference": "the source through the encoder's own filters (trim, rate, deinterlace), "
                                 "scaled to the rung",
                    "vmaf": "not measured: this ffmpeg has no libvmaf"},
        "hls_master": result.hls_master_key,
        "thumbnails": result.thumbnails.model_dump() if result.thumbnails else None,
    }
    key = keys.report(result.video_id)
    storage.put_json(key, report)
    rows = [{"rendition": r.name, "size": f"{r.width}x{r.height}", "frames": r.frames,
             "duration_s": round(r.duration, 3), "bitrate_kbps": round(r.bitrate / 1000),
             "megabytes": round(r.size / 1e6, 2),
             "psnr_db": r.quality["psnr_db"] if r.quality else None,
             "ssim": r.quality["ssim"] if r.quality else None,
             "cached_chunks": f"{r.cached_chunks}/{result.chunks}",
             "key": f"s3://{storage.name}/{r.key}"} for r in result.renditions]
    create_table_artifact(rows, key=_artifact_key(result.video_id, "renditions"),
                          description=f"Renditions of {source.origin} ({result.video_id})")
    create_markdown_artifact(
        "\n".join([
            f"## Transcode of `{source.origin}`",
            f"- video id: `{result.video_id}`, {plan.total_frames} frames at {result.fps} fps "
            f"({result.duration:.2f} s), {len(plan.chunks)} chunks",
            f"- chunk x rung tasks: {result.transcoded} transcoded, {result.cached} from cache",
            f"- wall time {result.wall_seconds:.1f} s "
            f"({report['run']['speed_x_realtime']}x realtime)",
            f"- encoder: {result.encoder.codec} preset {result.encoder.preset} CRF {result.encoder.crf}, "
            f"GOP {result.encoder.gop_frames} frames",
            f"- report: `s3://{storage.name}/{key}`",
            f"- HLS: `s3://{storage.name}/{result.hls_master_key}`",
        ] + ([f"- skipped (would upscale): {', '.join(plan.skipped_rungs)}"] if plan.skipped_rungs else [])),
        key=_artifact_key(result.video_id, "summary"),
        description="Transcode summary",
    )
    return key


@task(name="cleanup", cache_policy=NO_CACHE)
def cleanup(video_id: str, origin: str | None = None) -> int:
    """Delete split intermediates (if any were written) and this machine's scratch files.
    `origin`: the user's file, when the source was one: unlinking this machine's copy of it
    (a hard link) moved its change time, which is not a change of its contents."""
    settings = get_settings()
    removed = Storage().delete_prefix(keys.chunks_prefix(video_id))
    remove_scratch(settings, video_id)
    if origin and "://" not in origin:
        restamp(Path(origin).expanduser(), settings)
    return removed
