from __future__ import annotations

import shutil

from prefect import task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from transcoder import hls, keys
from transcoder.models import AudioTrack, HlsMedia, Plan, Rendition
from transcoder.settings import get_settings
from transcoder.storage import Storage
from transcoder.workspace import scratch_dir

from .assemble import upload_tree
from .common import retry_transient


@task(name="package-audio", retries=2, retry_condition_fn=retry_transient, cache_policy=INPUTS + TASK_SOURCE,
      persist_result=True)
def package_audio(plan: Plan, audio: AudioTrack, segment_seconds: float) -> HlsMedia:
    """The audio, packaged once as its own HLS rendition group (`{video_id}/hls/audio/`).
    `segment_seconds` (the setting) is an input so that its cache key follows it."""
    settings = get_settings()
    storage = Storage()
    scratch = scratch_dir(settings, plan.video_id, "hls_audio")
    try:
        local = storage.download(audio.key, scratch / "audio.m4a")
        hls_time, target = hls.segment_time(plan.fps, plan.gop_frames, segment_seconds)
        playlist = hls.package(local, scratch / "audio", "a", hls_time, timeout=max(60.0, plan.duration))
        stored = upload_tree(storage, hls.files_of(playlist), plan.video_id, "audio")
        return hls.media_playlist(playlist, "audio/index.m3u8", hls.AAC_LC, target).model_copy(update={"stored": stored})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@task(name="hls-master", retries=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def write_master(plan: Plan, renditions: list[Rendition], audio: HlsMedia | None) -> str:
    """The master playlist, written last: an HLS package is complete once it exists."""
    variants = [(r.hls, r.width, r.height, plan.fps) for r in renditions if r.hls is not None]
    key = keys.hls(plan.video_id, "master.m3u8")
    Storage().put_text(key, hls.master_playlist(variants, audio), hls.CONTENT_TYPES[".m3u8"])
    return key
