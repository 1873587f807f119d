from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any, Optional

from prefect import task
from prefect.cache_policies import CachePolicy

from transcoder import ffmpeg, keys, thumbnails
from transcoder.models import Plan, Rendition, Thumbnails, stable_hash
from transcoder.settings import get_settings
from transcoder.storage import Storage
from transcoder.workspace import scratch_dir

from .common import retry_transient


@dataclass
class ThumbnailsCache(CachePolicy):
    """Pictures are a pure function of the rendition they are cut from."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> Optional[str]:
        parts = {"rendition": inputs["small"].sha256, "version": 2}
        return f"{inputs['plan'].video_id}/cache/thumbnails/{stable_hash(parts)[:24]}"


@dataclass
class PosterCache(CachePolicy):
    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> Optional[str]:
        parts = {"rendition": inputs["top"].sha256, "time": inputs["pictures"].poster_time, "version": 1}
        return f"{inputs['plan'].video_id}/cache/poster/{stable_hash(parts)[:24]}"


@task(name="thumbnails", retries=2, retry_condition_fn=retry_transient, cache_policy=ThumbnailsCache(),
      persist_result=True)
def make_thumbnails(plan: Plan, small: Rendition) -> Thumbnails:
    """Thumbnail sprites + WebVTT from the smallest rung, and the poster's moment: the top
    rung's picture there is cut by `cut_poster`, so this needs only the smallest rung and
    runs beside the other rungs' assembly."""
    settings = get_settings()
    storage = Storage()
    fps = float(plan.fps)
    timeout = max(settings.ffmpeg_min_timeout, plan.duration * 2)
    scratch = scratch_dir(settings, plan.video_id, "thumbnails")
    try:
        small_url = storage.presigned_url(small.key)
        stats_file = scratch / "scan.txt"
        ffmpeg.run(thumbnails.scan_argv(small_url, stats_file), timeout, "scan for thumbnails")
        with stats_file.open() as lines:
            frames = thumbnails.parse_scan(lines)
        picks = thumbnails.pick_thumbnails(frames, fps, plan.duration)
        poster = thumbnails.pick_poster(frames, fps, plan.duration)
        size = thumbnails.thumb_size(small.width, small.height)
        ffmpeg.run(thumbnails.sprite_argv(small_url, [f.n for _, _, f in picks], size, scratch / "sprite_%03d.jpg"),
                   timeout, "thumbnail sprites")
        sprites = sorted(scratch.glob("sprite_*.jpg"))
        sprite_keys = []
        for i, path in enumerate(sprites):
            # image2 numbers from 1; the VTT names sprites from 0
            key = keys.thumbnails(plan.video_id, f"sprite_{i:03d}.jpg")
            storage.upload(path, key, content_type="image/jpeg")
            sprite_keys.append(key)
        vtt = scratch / "thumbnails.vtt"
        vtt.write_text(thumbnails.vtt(picks, size, lambda i: f"sprite_{i:03d}.jpg"))
        vtt_key = keys.thumbnails(plan.video_id, "thumbnails.vtt")
        storage.upload(vtt, vtt_key, content_type="text/vtt")
        return Thumbnails(poster_key=keys.thumbnails(plan.video_id, "poster.jpg"), poster_time=round(poster.time, 3),
                          vtt_key=vtt_key, sprite_keys=tuple(sprite_keys), count=len(picks),
                          interval=thumbnails.interval_for(plan.duration), width=size[0], height=size[1])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@task(name="poster", retries=2, retry_condition_fn=retry_transient, cache_policy=PosterCache(), persist_result=True)
def cut_poster(plan: Plan, top: Rendition, pictures: Thumbnails) -> str:
    """The poster: the top rung's picture at the moment `make_thumbnails` chose."""
    settings = get_settings()
    storage = Storage()
    scratch = scratch_dir(settings, plan.video_id, "poster")
    try:
        out = scratch / "poster.jpg"
        ffmpeg.run(thumbnails.poster_argv(storage.presigned_url(top.key), pictures.poster_time, float(plan.fps), out),
                   max(settings.ffmpeg_min_timeout, plan.duration * 2), "poster")
        storage.upload(out, pictures.poster_key, content_type="image/jpeg")
        return pictures.poster_key
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
