from __future__ import annotations

import base64
import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from prefect import get_run_logger, task
from prefect.cache_policies import CachePolicy

from transcoder import ffmpeg, keys, thumbnails
from transcoder.models import Chunk, Plan, Rendition, Thumbnails, stable_hash
from transcoder.settings import get_settings
from transcoder.storage import Storage, in_parallel
from transcoder.transcode import scan_key, thumb_size
from transcoder.workspace import scratch_dir

from .common import retry_transient


@dataclass
class ThumbnailsCache(CachePolicy):
    """Pictures are a pure function of the rendition they are cut from."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> Optional[str]:
        parts = {"rendition": inputs["small"].sha256, "version": 3}
        return f"{inputs['plan'].video_id}/cache/thumbnails/{stable_hash(parts)[:24]}"


@dataclass
class PosterCache(CachePolicy):
    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> Optional[str]:
        parts = {"rendition": inputs["top"].sha256, "time": inputs["pictures"].poster_time, "version": 2}
        return f"{inputs['plan'].video_id}/cache/poster/{stable_hash(parts)[:24]}"


@task(name="thumbnails", retries=2, retry_condition_fn=retry_transient, cache_policy=ThumbnailsCache(),
      persist_result=True)
def make_thumbnails(plan: Plan, small: Rendition) -> Thumbnails:
    """Thumbnail sprites + WebVTT, and the poster's moment: the top rung's picture there is
    cut by `cut_poster`, so this needs only the smallest rung and runs beside the other
    rungs' assembly. From the chunks' scans (made by their encodes) when every chunk has
    one, else from a pass over the smallest rendition."""
    settings = get_settings()
    storage = Storage()
    timeout = max(settings.ffmpeg_min_timeout, plan.duration * 2)
    scratch = scratch_dir(settings, plan.video_id, "thumbnails")
    size = thumb_size(plan)  # the size the chunks' scans cut their pictures at
    try:
        chosen = _from_chunk_scans(plan, storage, scratch, timeout)
        if chosen is None:
            chosen = _from_rendition(plan, small, storage, scratch, timeout, size)
        picks, poster = chosen
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
                          interval=thumbnails.interval_for(plan.duration), width=size[0], height=size[1],
                          stored=storage.stamp(keys.thumbnails(plan.video_id), [vtt_key, *sprite_keys]))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


Chosen = tuple[list[tuple[float, float, thumbnails.FrameStats]], thumbnails.FrameStats]


def _from_chunk_scans(plan: Plan, storage: Storage, scratch: Path, timeout: float) -> Chosen | None:
    """Picks from the chunks' scores, sprites tiled from the pictures their scans kept; None
    when a chunk has no scan (encoded by an older version, or its scan failed to store)."""
    logger = get_run_logger()
    fps = float(plan.fps)
    count = sum(c.out_frames for c in plan.chunks)

    def digest(chunk: Chunk) -> thumbnails.ScanDigest | None:
        scan = storage.get_json(scan_key(plan, chunk))
        if not scan or scan.get("version") != thumbnails.SCAN_VERSION or not scan.get("frames"):
            return None
        return thumbnails.digest_scan(scan, fps, plan.duration, count // 2)

    scans = in_parallel(digest, plan.chunks)
    missing = [c.name for c, scan in zip(plan.chunks, scans) if scan is None]
    if missing:
        logger.info("thumbnails: %d of %d chunks have no scan (%s...); scanning the smallest rendition",
                    len(missing), len(plan.chunks), ", ".join(missing[:3]))
        return None
    joints: list[float | None] = [None]  # a chunk's first frame scored against the previous chunk's last
    if len(scans) > 1:
        folder = scratch / "joints"
        folder.mkdir()
        thumbnails.joint_pictures(scans, folder)
        ffmpeg.run(thumbnails.joints_argv(folder, scratch / "joints.txt"), timeout, "thumbnail joints")
        joints += thumbnails.joint_scores(scratch / "joints.txt")
    if len(joints) != len(scans):
        raise RuntimeError(f"thumbnails: {len(joints) - 1} joint scores for {len(scans) - 1} joints")
    frames = []
    for scan, score in zip(scans, joints):
        first, *rest = scan.frames
        frames += [first if score is None else dataclasses.replace(first, scene=score), *rest]
    bounds = [c.out_start for c in plan.chunks]
    picks = thumbnails.pick_thumbnails(frames, fps, plan.duration, bounds, count)
    kept = {int(n): picture for scan in scans for n, picture in scan.pictures.items()}
    lacking = [f.n for _, _, f in picks if f.n not in kept]
    if lacking:  # a bug: the chunks keep every frame a pick can choose (chunk_candidates)
        logger.warning("thumbnails: frames %s were not kept by their chunks; scanning the smallest rendition",
                       lacking[:5])
        return None
    for i, (_, _, frame) in enumerate(picks):
        (scratch / f"p_{i:05d}.jpg").write_bytes(base64.b64decode(kept[frame.n]))
    ffmpeg.run(thumbnails.tile_argv(scratch, scratch / "sprite_%03d.jpg"), timeout, "thumbnail sprites")
    return picks, thumbnails.pick_poster(frames, fps, plan.duration, bounds, count)


def _from_rendition(plan: Plan, small: Rendition, storage: Storage, scratch: Path, timeout: float,
                    size: tuple[int, int]) -> Chosen:
    """One pass over the smallest rendition scores every frame, a second cuts the sprites."""
    fps = float(plan.fps)
    small_url = storage.presigned_url(small.key)
    stats_file = scratch / "scan.txt"
    ffmpeg.run(thumbnails.scan_argv(small_url, stats_file), timeout, "scan for thumbnails")
    with stats_file.open() as lines:
        frames = thumbnails.parse_scan(lines)
    bounds = [c.out_start for c in plan.chunks]
    picks = thumbnails.pick_thumbnails(frames, fps, plan.duration, bounds)
    ffmpeg.run(thumbnails.sprite_argv(small_url, [f.n for _, _, f in picks], size, scratch / "sprite_%03d.jpg"),
               timeout, "thumbnail sprites")
    return picks, thumbnails.pick_poster(frames, fps, plan.duration, bounds)


@task(name="poster", retries=2, retry_condition_fn=retry_transient, cache_policy=PosterCache(), persist_result=True)
def cut_poster(plan: Plan, top: Rendition, pictures: Thumbnails) -> str:
    """The poster: the top rung's picture at the moment `make_thumbnails` chose. Returns the
    stamp of the stored poster (Storage.stamp)."""
    settings = get_settings()
    storage = Storage()
    scratch = scratch_dir(settings, plan.video_id, "poster")
    try:
        out = scratch / "poster.jpg"
        ffmpeg.run(thumbnails.poster_argv(storage.presigned_url(top.key), pictures.poster_time, float(plan.fps), out),
                   max(settings.ffmpeg_min_timeout, plan.duration * 2), "poster")
        storage.upload(out, pictures.poster_key, content_type="image/jpeg")
        return storage.stamp(keys.thumbnails(plan.video_id), [pictures.poster_key])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
