"""The stages of `transcode-video`, each a flow of its own so that it can run as a
deployment on its own work queue (the earlier Temporal system's worker kinds):

    download-source   download    ingest (file, s3:// object, URL), hash, store the original
    probe-video       metadata    ffprobe -> typed metadata; refuse what is not a video
    split-video       split       chunk boundaries from the packet index (frame numbers) + ladder
    transcode-batch   transcode   chunks x rungs (+ the audio, once), cached on content hashes
    merge-video       merge       MP4 per rung, HLS, thumbnails, report, player page

The parent flow calls their functions in its own run (mode "local": their tasks show in
the parent run) or runs them through `run_deployment` (mode "deployments"); the code below is the same either way. Stages exchange small
typed values; the media itself is in object storage, so any worker can pick up any stage.
"""

from __future__ import annotations

import time
from collections import defaultdict

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks.assemble import assemble_rendition
from tasks.audio import encode_audio
from tasks.hls import package_audio, write_master
from tasks.ingest import ingest_source, store_source_object
from tasks.plan import plan_transcode
from tasks.player import publish_player
from tasks.probe import probe_source
from tasks.report import cleanup, publish_report
from tasks.thumbnails import cut_poster, make_thumbnails
from tasks.transcode import transcode_chunk
from transcoder import keys
from transcoder.models import (BatchResult, EncoderReport, EncoderSettings, Plan, Probe, Rendition, Rung,
                               Segment, SourceObject, TranscodeResult)
from transcoder.quality import rung_quality
from transcoder.settings import get_settings
from transcoder.storage import Storage, get_bucket

PROGRESS_EVENT = "transcode_progress"  # `extra` attribute on progress log records (the CLI shows them)


def progress(logger, stage: str, done: int, total: int) -> None:
    logger.info("%s: %d/%d", stage, done, total, extra={PROGRESS_EVENT: (stage, done, total)})


@flow(name="download-source", validate_parameters=True)
def download_source(origin: str) -> SourceObject:
    """Fetch and hash the source, and keep the original at `{video_id}/source/`: every
    later stage, on any machine, reads it from there. While it is hashed, the probe and
    the packet index are read from this machine's copy and kept (transcoder/facts.py)."""
    src, stored = begin_download(origin)
    stored.result()
    return src


def begin_download(origin: str, uploads: TaskRunner | None = None) -> tuple[SourceObject, PrefectFuture]:
    """Ingest and hash the source (its facts read and kept beside the hash: one that is not
    a usable video is refused before anything is stored), and start keeping the original.
    Returns the upload's future: the caller decides how long the upload may run on (mode
    "local" encodes from this machine's copy meanwhile). `uploads`: the task runner the
    upload runs on (the flow's when None)."""
    src = ingest_source(origin)
    stored = uploads.submit(store_source_object, {"source": src}) if uploads else store_source_object.submit(src)
    return src, stored


@flow(name="probe-video", validate_parameters=True)
def probe_video(source: SourceObject) -> Probe:
    return probe_source(source)


@flow(name="split-video", validate_parameters=True)
def split_video(source: SourceObject, probe: Probe, rungs: tuple[tuple[int, str], ...] | None,
                encoder: EncoderSettings, gop_seconds: float, chunk_seconds: float) -> Plan:
    """Frame-exact chunk boundaries (frame numbers, from the packet index) and the ladder.

    No bytes are cut here: each transcode reads its frames straight from the original
    (seek + trim), which loses nothing at the joints, unlike stream-copy cuts.
    """
    plan = plan_transcode(source, probe, rungs, encoder, gop_seconds, chunk_seconds)
    get_run_logger().info(
        "plan: %d frames at %s fps, %d chunks, rungs %s%s", plan.total_frames, plan.fps, len(plan.chunks),
        ", ".join(f"{r.name} ({r.width}x{r.height})" for r in plan.rungs),
        f"; skipped (would upscale): {', '.join(plan.skipped_rungs)}" if plan.skipped_rungs else "")
    return plan


@flow(name="transcode-batch", task_runner=ThreadPoolTaskRunner(max_workers=get_settings().max_workers),
      validate_parameters=True)
def transcode_batch(plan: Plan, source: SourceObject, chunks: list[int], probe: Probe | None = None) -> BatchResult:
    """Every rung of the chunks numbered in `chunks`, and the audio when `probe` is given.

    Each chunk x rung is a task cached on chunk sha256 / rung profile / encoder version,
    so a batch that runs twice (a retry, a reclaimed Spot worker, a rerun) encodes only
    what is missing. Every task runs, then the batch fails if any did, naming them.
    """
    results = get_bucket(get_settings())  # result records (the cache) live in the bucket, under {video_id}/cache/
    encode = encode_audio.with_options(result_storage=results)
    # The audio, one encode of the whole track, on a thread of its own beside the chunks':
    # queued behind them it started last, and 10 minutes of audio then ran 25 s alone after
    # the last chunk (measured); beside them it costs the encoders a few seconds of a core.
    with ThreadPoolTaskRunner(max_workers=1) as beside:
        audio_future = (beside.submit(encode, {"plan": plan, "source": source, "probe": probe})
                        if probe is not None and plan.has_audio else None)
        by_key, cached = _encode_chunks(plan, source, chunks, results)
        audio = audio_future.result() if audio_future else None
    if audio and not Storage(results).holds(audio.key, audio.sha256):
        audio = encode.with_options(refresh_cache=True)(plan, source, probe)
    return BatchResult(segments=tuple(by_key[k] for k in sorted(by_key)),
                       cached=tuple(sorted(f"{rung}/{index}" for rung, index in cached)), audio=audio)


def _encode_chunks(plan: Plan, source: SourceObject, chunks: list[int],
                   results) -> tuple[dict[tuple[str, int], Segment], set[tuple[str, int]]]:
    """Every rung of these chunks, on the flow's task runner: the segments by (rung, chunk),
    and which came from the cache."""
    logger = get_run_logger()
    settings = get_settings()
    transcode = transcode_chunk.with_options(result_storage=results, retries=settings.transcode_retries)
    # Rung-major: the first tasks to run are one per chunk, each encoding all rungs of
    # its chunk; the later rungs' tasks then find their segments already stored.
    # Heaviest chunks first (source bytes, then length), so no long encode is left
    # running alone at the end.
    wanted = set(chunks)
    order = sorted((c for c in plan.chunks if c.index in wanted), key=lambda c: (-c.weight, -c.out_frames, c.index))
    first, *others = plan.rungs
    futures = {transcode.submit(plan, source, chunk, first): (chunk, first) for chunk in order}
    futures.update({transcode.submit(plan, source, chunk, rung): (chunk, rung) for rung in others for chunk in order})

    total = len(futures)
    progress_id = create_progress_artifact(0.0, description=f"{plan.video_id}: chunk x rung tasks of this batch")
    by_key: dict[tuple[str, int], Segment] = {}
    cached: set[tuple[str, int]] = set()
    failed: list[str] = []
    failures: list[BaseException] = []
    progress(logger, "transcode", 0, total)
    for done, future in enumerate(as_completed(futures), 1):
        try:
            seg = future.result()
        except Exception as exc:  # noqa: BLE001 - collected; the batch fails below, after every chunk ran
            failures.append(exc)
            chunk, rung = futures[future]
            failed.append(f"transcode-{rung.name}-{chunk.index:05d}")  # the task run's name in the UI
        else:
            by_key[(seg.rung, seg.index)] = seg
            if future.state.name == "Cached":
                cached.add((seg.rung, seg.index))
        progress(logger, "transcode", done, total)
        update_progress_artifact(progress_id, 100.0 * done / total)
    if failures:
        logger.error("%d of %d chunk x rung tasks failed (%s); a rerun redoes only those",
                     len(failures), total, ", ".join(sorted(failed)))
        raise failures[0]

    # A cache record outlives its object if someone deleted it, and an object written over
    # (corrupted, even with its metadata) no longer has the ETag the record holds: redo those.
    storage = Storage(results)
    written = [(chunk, rung, by_key[(rung.name, chunk.index)]) for rung in plan.rungs for chunk in order]
    held = storage.holds_each([(seg.key, seg.sha256, seg.size, seg.etag) for _, _, seg in written])
    stale = [(chunk, rung) for (chunk, rung, _), ok in zip(written, held) if not ok]
    if stale:
        logger.warning("%d cached segments are gone from storage or changed; encoding them again (%s)", len(stale),
                       ", ".join(f"{rung.name}/{chunk.index:05d}" for chunk, rung in stale))
        for chunk, rung in stale:
            storage.delete(by_key[(rung.name, chunk.index)].key)  # the task must not find it "done"
        redo = transcode.with_options(refresh_cache=True)
        for future in [redo.submit(plan, source, chunk, rung) for chunk, rung in stale]:
            seg = future.result()
            by_key[(seg.rung, seg.index)] = seg
            cached.discard((seg.rung, seg.index))
    return by_key, cached


@flow(name="merge-video", task_runner=ThreadPoolTaskRunner(max_workers=get_settings().max_workers),
      validate_parameters=True)
def merge_video(plan: Plan, source: SourceObject, probe: Probe, batches: list[BatchResult],
                started_at: float, title: str) -> TranscodeResult:
    """One MP4 per rung (verified before it is published), the HLS package, poster and
    thumbnails, report.json + UI artifacts, the player page; then the cleanup.

    `started_at` (epoch seconds, from the parent) dates the readiness of each rung.
    """
    logger = get_run_logger()
    settings = get_settings()
    storage = Storage()
    results = get_bucket(settings)

    segments: dict[str, list[Segment]] = defaultdict(list)
    cached_by_rung: dict[str, int] = defaultdict(int)
    for batch in batches:
        for seg in batch.segments:
            segments[seg.rung].append(seg)
        for item in batch.cached:
            cached_by_rung[item.split("/", 1)[0]] += 1
    for rung in plan.rungs:
        segments[rung.name].sort(key=lambda s: s.index)
        if [s.index for s in segments[rung.name]] != [c.index for c in plan.chunks]:
            raise RuntimeError(f"{rung.name}: the batches did not return every chunk")  # a bug, not bad input
    audio = next((b.audio for b in batches if b.audio is not None), None)
    cached = sum(cached_by_rung.values())

    streaming = settings.streaming_outputs
    assemble = assemble_rendition.with_options(result_storage=results)
    ready: dict[str, Rendition] = {}
    vid = plan.video_id

    def kept(stamp: str | None, prefix: str, only: list[str] | None = None) -> bool:
        """A cached result's files are still the ones it wrote: not deleted, not written over
        by a run with other settings (same keys). Results from before stamps: trusted."""
        return stamp is None or storage.stamp(prefix, only) == stamp

    def assembled(rung: Rung) -> Rendition:
        if rung.name not in ready:
            rendition = futures_by_rung[rung.name].result()
            if not storage.holds(rendition.key, rendition.sha256, rendition.size, rendition.etag) or (  # replaced
                    rendition.hls and not kept(rendition.hls.stored, keys.hls(vid, f"{rung.name}/"))):
                rendition = assemble.with_options(refresh_cache=True)(plan, rung, segments[rung.name], audio)
            ready[rung.name] = rendition.model_copy(update={"ready_seconds": round(time.time() - started_at, 3)})
        return ready[rung.name]

    # Every rung's assembly at once, smallest first, beside the pictures and the audio's
    # package, on a runner of the merge's own: the assemblies mostly wait on storage and
    # on ffmpeg stream copies, and since the thumbnails no longer decode anything (the
    # chunks' encodes scored the frames), nothing here needs a core to itself. The
    # thumbnails start when the smallest rung is published, the poster when the largest is.
    by_area = sorted(plan.rungs, key=lambda r: r.width * r.height)
    with ThreadPoolTaskRunner(max_workers=len(plan.rungs) + 3) as merging:
        futures_by_rung = {r.name: merging.submit(assemble, {"plan": plan, "rung": r, "segments": segments[r.name],
                                                             "audio": audio}) for r in by_area}
        package = package_audio.with_options(result_storage=results)
        audio_args = {"plan": plan, "audio": audio, "segment_seconds": settings.segment_seconds}
        audio_hls = merging.submit(package, audio_args) if audio and streaming else None
        pictures = poster = None
        if streaming:
            pictures = merging.submit(make_thumbnails.with_options(result_storage=results),
                                      {"plan": plan, "small": assembled(by_area[0])})
            poster = merging.submit(cut_poster.with_options(result_storage=results),
                                    {"plan": plan, "top": assembled(by_area[-1]), "pictures": pictures})
        renditions = []
        for i, rung in enumerate(plan.rungs):
            renditions.append(assembled(rung).model_copy(update={"quality": rung_quality(segments[rung.name]),
                                                                 "cached_chunks": cached_by_rung[rung.name]}))
            progress(logger, "assemble", i + 1, len(plan.rungs))
        audio_media = audio_hls.result() if audio_hls else None
        if audio_media and not kept(audio_media.stored, keys.hls(vid, "audio/")):
            audio_media = package.with_options(refresh_cache=True)(**audio_args)
        master = write_master(plan, renditions, audio_media) if streaming else None
        thumbs = pictures.result() if pictures else None
        if thumbs and not kept(thumbs.stored, keys.thumbnails(vid), [thumbs.vtt_key, *thumbs.sprite_keys]):
            thumbs = make_thumbnails.with_options(result_storage=results, refresh_cache=True)(plan, assembled(by_area[0]))
        if poster is not None and thumbs is not None:  # in place before the report names it
            if not kept(poster.result(), keys.thumbnails(vid), [thumbs.poster_key]):
                cut_poster.with_options(result_storage=results, refresh_cache=True)(plan, assembled(by_area[-1]), thumbs)

    encoder = plan.encoder
    total = len(plan.chunks) * len(plan.rungs)
    result = TranscodeResult(
        video_id=source.video_id,
        source_key=source.key,
        chunks=len(plan.chunks),
        transcoded=total - cached,
        cached=cached,
        renditions=tuple(renditions),
        encoder=EncoderReport(codec=encoder.codec, preset=encoder.preset, crf=encoder.crf,
                              gop_frames=plan.gop_frames, profile=encoder.profile, pix_fmt=encoder.pix_fmt,
                              audio_bitrate_kbps=encoder.audio_bitrate_kbps),
        fps=f"{plan.fps_num}/{plan.fps_den}",
        duration=plan.duration,
        skipped_rungs=plan.skipped_rungs,
        report_key=keys.report(source.video_id),
        manifest_key=keys.manifest(source.video_id),
        hls_master_key=master,
        thumbnails=thumbs,
        wall_seconds=round(time.time() - started_at, 3),
    )
    publish_report(result, source, probe, plan)
    if streaming:  # last: the page links to everything above
        result = result.model_copy(update={"player_url": publish_player(source.video_id, title, result.thumbnails)})
    cleanup(source.video_id, source.origin)
    return result
