from __future__ import annotations

import shutil

from prefect import task

from transcoder import ffmpeg, keys
from transcoder.encode import audio_argv, audio_profile
from transcoder.ingest import ensure_local, sha256_file
from transcoder.models import AudioTrack, Plan, Probe, SourceObject
from transcoder.settings import get_settings
from transcoder.storage import Storage
from transcoder.workspace import scratch_dir

from .common import AudioCache, locked, retry_transient


@task(name="audio", retries=2, retry_delay_seconds=1, retry_condition_fn=retry_transient,
      cache_policy=locked(AudioCache()), persist_result=True)
def encode_audio(plan: Plan, source: SourceObject, probe: Probe) -> AudioTrack:
    """The audio, encoded once for every rendition (per-chunk AAC drifts at joints)."""
    settings = get_settings()
    storage = Storage()
    local = ensure_local(source, storage, settings)
    scratch = scratch_dir(settings, plan.video_id, "audio")
    out = scratch / "audio.m4a"
    try:
        channels = probe.audio.channels if probe.audio else 2
        timeout = max(settings.ffmpeg_min_timeout, plan.duration * 5)
        ffmpeg.run(audio_argv(local, plan, channels, out, format_start=probe.format_start), timeout, "encode audio")
        sha = sha256_file(out)
        key = keys.audio(plan.video_id, audio_profile(plan))
        storage.upload(out, key, metadata={"sha256": sha}, content_type="audio/mp4")
        return AudioTrack(key=key, sha256=sha, duration=plan.duration)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
