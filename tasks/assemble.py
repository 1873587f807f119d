from __future__ import annotations

import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from transcoder import export, hls, keys
from transcoder.assemble import assemble
from transcoder.errors import VerificationError
from transcoder.ingest import sha256_file
from transcoder.models import AudioTrack, HlsMedia, Plan, Rendition, Rung, Segment
from transcoder.settings import get_settings
from transcoder.storage import Storage, in_parallel, stamp_of
from transcoder.verify import verify_rendition
from transcoder.workspace import scratch_dir

from .common import AssembleCache, locked, retry_transient


@task(name="assemble", task_run_name="assemble-{rung.name}", retries=2, retry_delay_seconds=1,
      retry_condition_fn=retry_transient, cache_policy=locked(AssembleCache()), persist_result=True)
def assemble_rendition(plan: Plan, rung: Rung, segments: list[Segment], audio: AudioTrack | None) -> Rendition:
    """Concat + mux + faststart, verify the whole file, and only then publish it."""
    settings = get_settings()
    storage = Storage()
    scratch = scratch_dir(settings, plan.video_id, f"assemble_{rung.name}")
    try:
        def fetch(seg: Segment) -> tuple[Segment, Path]:
            path = scratch / f"seg_{seg.index:05d}{Path(seg.key).suffix}"
            if storage.download_hashed(seg.key, path) != seg.sha256:
                storage.delete(seg.key)  # never assembled, never trusted again: a rerun encodes it anew
                raise VerificationError(f"{rung.name} segment {seg.index:05d} in storage is not the one encoded "
                                        f"(sha256 differs); it was removed: rerun to encode it again")
            return seg, path

        local_segments = in_parallel(fetch, sorted(segments, key=lambda s: s.index))
        audio_path = storage.download(audio.key, scratch / "audio.m4a") if audio else None
        out = scratch / f"{plan.video_id}_{rung.name}.mp4"
        assemble(plan, local_segments, audio_path, out, timeout=max(settings.ffmpeg_min_timeout, plan.duration * 2),
                 codec=rung.codec)
        checked = verify_rendition(out, plan, rung)
        sha = sha256_file(out)
        key = keys.encoded(plan.video_id, rung.name)
        storage.upload(out, key, metadata={"sha256": sha, "frames": str(checked.frames)}, content_type="video/mp4")
        published = storage.head(key)
        media = _package_hls(plan, rung, out, scratch / "hls", storage, settings) if settings.streaming_outputs else None
        return Rendition(name=rung.name, key=key, path=None, width=checked.width, height=checked.height,
                         frames=checked.frames, duration=checked.duration, audio_duration=checked.audio_duration,
                         bitrate=checked.bitrate, size=checked.size, sha256=sha,
                         etag=published["etag"] if published else None, hls=media)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _package_hls(plan: Plan, rung: Rung, mp4: Path, out_dir: Path, storage: Storage, settings) -> HlsMedia:
    """The rung's video as fMP4 HLS (stream copy) under `{video_id}/hls/{rung}/`."""
    hls_time, target = hls.segment_time(plan.fps, plan.gop_frames, settings.segment_seconds)
    playlist = hls.package(mp4, out_dir, "v", hls_time, timeout=max(settings.ffmpeg_min_timeout, plan.duration))
    media = hls.media_playlist(playlist, f"{rung.name}/index.m3u8", hls.video_codec(out_dir / "init.mp4"), target)
    return media.model_copy(update={"stored": upload_tree(storage, hls.files_of(playlist), plan.video_id, rung.name)})


def upload_tree(storage: Storage, files: list[Path], video_id: str, folder: str) -> str:
    """The media files several at a time, then the playlists: a playlist in storage
    names only files already there. Then files of an earlier package in the folder that
    this one does not have (other settings: more segments) are removed. Returns the
    folder's stamp (Storage.stamp), which a reuse of this result checks."""
    prefix = keys.hls(video_id, f"{folder}/")

    def put(path: Path) -> None:
        storage.upload(path, prefix + path.name, content_type=hls.CONTENT_TYPES.get(path.suffix,
                                                                                    "application/octet-stream"))

    in_parallel(put, [p for p in files if p.suffix != ".m3u8"])
    for path in files:
        if path.suffix == ".m3u8":
            put(path)
    found, names = storage.etags(prefix), {prefix + p.name for p in files}
    for stale in found.keys() - names:
        storage.delete(stale)
    return stamp_of({k: v for k, v in found.items() if k in names})


@task(name="export", task_run_name="export-{rendition.name}", retries=2, retry_condition_fn=retry_transient,
      cache_policy=NO_CACHE)
def export_rendition(rendition: Rendition, output_dir: str) -> Rendition:
    """Copy a published rendition to a local folder (`--output-dir`)."""
    return export.export_rendition(Storage(), rendition, output_dir)


@task(name="export-package", retries=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def export_package(video_id: str, output_dir: str) -> str:
    """Copy the HLS package, the poster and thumbnails, and report.json to a local folder."""
    return export.export_package(Storage(), video_id, output_dir)
