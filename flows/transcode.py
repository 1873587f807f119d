"""The `transcode-video` flow: ingest → probe → plan → transcode (chunks x rungs) → audio
→ assemble + verify → report → cleanup.

In one process the chunk x rung map runs on a ThreadPoolTaskRunner bounded by the
cores (`TRANSCODE_MAX_WORKERS`); ffmpeg does the work, so threads suffice.
"""

from __future__ import annotations

import time
from collections import defaultdict

from prefect import flow, get_run_logger
from pydantic import ValidationError
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.assemble import assemble_rendition, export_package, export_rendition
from tasks.audio import encode_audio
from tasks.hls import package_audio, write_master
from tasks.ingest import ingest_source, store_source_object
from tasks.plan import plan_transcode
from tasks.player import publish_player
from tasks.probe import probe_source
from tasks.report import cleanup, publish_report
from tasks.thumbnails import make_thumbnails
from tasks.transcode import transcode_chunk
from transcoder import keys
from transcoder.errors import BadInputError
from transcoder.storage import Storage
from transcoder.ladder import check_codec, parse_rungs
from transcoder.quality import rung_quality
from transcoder.models import EncoderReport, EncoderSettings, Segment, TranscodeResult
from transcoder.settings import get_settings
from transcoder.storage import get_bucket

PROGRESS_EVENT = "transcode_progress"  # `extra` attribute on progress log records (the CLI shows them)


def _title(origin: str) -> str:
    return origin.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or origin


def _progress(logger, stage: str, done: int, total: int) -> None:
    logger.info("%s: %d/%d", stage, done, total, extra={PROGRESS_EVENT: (stage, done, total)})


@flow(
    name="transcode-video",
    task_runner=ThreadPoolTaskRunner(max_workers=get_settings().max_workers),
    validate_parameters=True,
)
def transcode_video(
    source: str,
    renditions: str | list[str] | None = None,
    output_dir: str | None = None,
    preset: str | None = None,
    crf: int | None = None,
    chunk_seconds: float | None = None,
    gop_seconds: float | None = None,
    codec: str | None = None,
) -> TranscodeResult:
    """Transcode SOURCE (a path, s3://bucket/key or http(s) URL) into a ladder with AAC audio.

    `codec` (h264, hevc, av1) applies to the rungs that name none: `1080p:av1,720p`
    mixes codecs in one ladder.
    """
    started = time.monotonic()
    settings = get_settings()
    logger = get_run_logger()
    results = get_bucket(settings)  # result records (cache) live in the same bucket, under {video_id}/cache/
    try:
        encoder = EncoderSettings(
            codec=check_codec(codec or settings.codec),
            preset=preset or settings.preset,
            crf=settings.crf if crf is None else crf,
            threads=settings.x264_threads,
            audio_bitrate_kbps=settings.audio_bitrate_kbps,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        raise BadInputError(f"bad encoder setting {problem['loc'][0]}: {problem['msg']}") from None
    for name, value in (("chunk seconds", chunk_seconds), ("GOP seconds", gop_seconds)):
        if value is not None and not 0.1 <= value <= 600:
            raise BadInputError(f"{name} must be between 0.1 and 600, not {value}")
    rungs = parse_rungs(renditions, encoder.codec)

    src = ingest_source(source)
    probe = probe_source(src)
    plan = plan_transcode(src, probe, rungs, encoder, gop_seconds or settings.gop_seconds,
                          chunk_seconds or settings.chunk_seconds)
    logger.info("plan: %d frames at %s fps, %d chunks, rungs %s%s", plan.total_frames, plan.fps, len(plan.chunks),
                ", ".join(f"{r.name} ({r.width}x{r.height})" for r in plan.rungs),
                f"; skipped (would upscale): {', '.join(plan.skipped_rungs)}" if plan.skipped_rungs else "")

    total = len(plan.chunks) * len(plan.rungs)
    progress_id = create_progress_artifact(0.0, description=f"transcode of {src.video_id}: chunk x rung tasks done")
    transcode = transcode_chunk.with_options(result_storage=results, retries=settings.transcode_retries)
    # Rung-major: the first tasks to run are one per chunk, each encoding all rungs of
    # its chunk; the later rungs' tasks then find their segments already stored.
    # Longest chunks first, so no long chunk is left running alone at the end; the
    # short jobs (audio, the upload of the original) fill the tail.
    order = sorted(plan.chunks, key=lambda c: (-c.out_frames, c.index))
    first, *others = plan.rungs
    futures = [transcode.submit(plan, src, chunk, first) for chunk in order]
    audio_future = (encode_audio.with_options(result_storage=results).submit(plan, src, probe)
                    if plan.has_audio else None)
    stored = store_source_object.submit(src)
    futures += [transcode.submit(plan, src, chunk, rung) for rung in others for chunk in order]

    by_index: dict[str, dict[int, Segment]] = defaultdict(dict)
    cached_by_rung: dict[str, int] = defaultdict(int)
    failures: list[BaseException] = []
    transcoded = cached = done = 0
    _progress(logger, "transcode", 0, total)
    for future in as_completed(futures):
        done += 1
        try:
            seg = future.result()
        except Exception as exc:  # noqa: BLE001 - collected; the run fails below, after every chunk ran
            failures.append(exc)
        else:
            by_index[seg.rung][seg.index] = seg
            if future.state.name == "Cached":
                cached += 1
                cached_by_rung[seg.rung] += 1
            else:
                transcoded += 1
        _progress(logger, "transcode", done, total)
        update_progress_artifact(progress_id, 100.0 * done / total)
    if failures:
        logger.error("%d of %d chunk x rung tasks failed; a rerun redoes only those", len(failures), total)
        raise failures[0]
    # A cache record outlives its object if someone deleted it: redo those tasks.
    storage = Storage(results)
    stale = [(chunk, rung) for rung in plan.rungs for chunk in order
             if not storage.holds((seg := by_index[rung.name][chunk.index]).key, seg.sha256)]
    if stale:
        logger.warning("%d cached segments are gone from storage; encoding them again", len(stale))
        redo = transcode.with_options(refresh_cache=True)
        for future in [redo.submit(plan, src, chunk, rung) for chunk, rung in stale]:
            seg = future.result()
            by_index[seg.rung][seg.index] = seg
            cached_by_rung[seg.rung] -= 1
        transcoded, cached = transcoded + len(stale), cached - len(stale)
    segments = {rung: [by_index[rung][c.index] for c in plan.chunks] for rung in by_index}

    # The upload of the original overlaps with the transcode, which reads the local copy.
    # (A worker on another machine would read it from storage: a fan-out waits for it first.)
    stored.result()
    audio = audio_future.result() if audio_future else None
    if audio and not storage.holds(audio.key, audio.sha256):
        audio = encode_audio.with_options(result_storage=results, refresh_cache=True)(plan, src, probe)
    streaming = settings.streaming_outputs
    audio_hls = (package_audio.with_options(result_storage=results).submit(plan, audio)
                 if audio and streaming else None)
    assemble = assemble_rendition.with_options(result_storage=results)

    done: dict[str, object] = {}

    def assembled(rung):
        if rung.name not in done:
            rendition = futures_by_rung[rung.name].result()
            if not storage.holds(rendition.key, rendition.sha256):  # replaced since (other settings)
                rendition = assemble.with_options(refresh_cache=True)(plan, rung, segments[rung.name], audio)
            done[rung.name] = rendition.model_copy(update={"ready_seconds": round(time.monotonic() - started, 3)})
        return done[rung.name]

    # Smallest and largest rung first: the thumbnails need them, and then run beside
    # the other rungs' assembly (light work: stream copies and transfers).
    by_area = sorted(plan.rungs, key=lambda r: r.width * r.height)
    first_two = [by_area[0]] + ([by_area[-1]] if len(by_area) > 1 else [])
    futures_by_rung = {r.name: assemble.submit(plan, r, segments[r.name], audio) for r in first_two}
    pictures = None
    if streaming:
        small, top = assembled(by_area[0]), assembled(by_area[-1])
        pictures = make_thumbnails.with_options(result_storage=results).submit(plan, small, top)
    futures_by_rung.update({r.name: assemble.submit(plan, r, segments[r.name], audio)
                            for r in by_area[1:-1]})
    renditions_out = []
    for i, rung in enumerate(plan.rungs):
        rendition = assembled(rung).model_copy(update={"quality": rung_quality(segments[rung.name]),
                                                       "cached_chunks": cached_by_rung[rung.name]})
        if output_dir:
            rendition = export_rendition(rendition, output_dir)
        renditions_out.append(rendition)
        _progress(logger, "assemble", i + 1, len(plan.rungs))
    master = write_master(plan, renditions_out, audio_hls.result() if audio_hls else None) if streaming else None

    result = TranscodeResult(
        video_id=src.video_id,
        source_key=src.key,
        chunks=len(plan.chunks),
        transcoded=transcoded,
        cached=cached,
        renditions=tuple(renditions_out),
        encoder=EncoderReport(codec=encoder.codec, preset=encoder.preset, crf=encoder.crf,
                              gop_frames=plan.gop_frames, profile=encoder.profile, pix_fmt=encoder.pix_fmt,
                              audio_bitrate_kbps=encoder.audio_bitrate_kbps),
        fps=f"{plan.fps_num}/{plan.fps_den}",
        duration=plan.duration,
        skipped_rungs=plan.skipped_rungs,
        report_key=keys.report(src.video_id),
        manifest_key=keys.manifest(src.video_id),
        hls_master_key=master,
        thumbnails=pictures.result() if pictures else None,
        wall_seconds=round(time.monotonic() - started, 3),
    )
    publish_report(result, src, probe, plan)
    if output_dir:
        export_package(src.video_id, output_dir)
    # last: the page links to everything above
    if streaming:
        result = result.model_copy(update={"player_url": publish_player(src.video_id, _title(src.origin),
                                                                        result.thumbnails, output_dir)})
    cleanup(src.video_id)
    return result
