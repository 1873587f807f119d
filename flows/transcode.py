"""The `transcode-video` flow: download -> probe -> split -> transcode (chunks x rungs, in
batches) -> merge, each stage a flow of its own (flows/stages.py).

`mode="local"` (the default) runs every stage in this process and this flow run: the chunk x rung map runs
on a ThreadPoolTaskRunner bounded by the cores (`TRANSCODE_MAX_WORKERS`); ffmpeg does
the work, so threads suffice. `mode="deployments"` sends each stage to its deployment's
work queue and the chunks out in batches across every `transcode` worker. The pipeline's
logic is the same code in both modes.
"""

from __future__ import annotations

import time

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ValidationError

from flows.dispatch import MODES, Mode, StageRunner
from flows.stages import (PROGRESS_EVENT, begin_download, download_source, merge_video, probe_video, progress,
                          split_video, transcode_batch)
from tasks.assemble import export_package, export_rendition
from tasks.player import export_player
from transcoder import keys
from transcoder.errors import BadInputError
from transcoder.ladder import check_codec, parse_rungs
from transcoder.models import EncoderSettings, Plan, TranscodeResult
from transcoder.plan import chunk_length
from transcoder.reuse import fingerprint, record_finished
from transcoder.settings import get_settings
from transcoder.storage import Storage

__all__ = ["PROGRESS_EVENT", "transcode_video"]


def _title(origin: str) -> str:
    return origin.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0] or origin


def _run_name() -> str:
    """`transcode-{request_id}` for runs the ingest API asked for (it finds them by name)."""
    request_id = flow_run.parameters.get("request_id")
    return f"transcode-{request_id}" if request_id else f"transcode-{flow_run.id[:8] if flow_run.id else 'run'}"


def batches(plan: Plan, mode: Mode, batch_chunks: int) -> list[list[int]]:
    """Chunk numbers per transcode batch: all in one batch in this process; groups of
    `batch_chunks` (every rung of each) for the workers. Each batch is a flow run, a
    process or container start: a few seconds, so a batch should be many chunks long."""
    indexes = [c.index for c in plan.chunks]
    size = len(indexes) if mode == "local" else max(1, batch_chunks)
    return [indexes[i:i + size] for i in range(0, len(indexes), size)]


# the task runner bounds the ffmpeg processes of mode "local" (stages run in this run)
@flow(name="transcode-video", flow_run_name=_run_name, validate_parameters=True,
      task_runner=ThreadPoolTaskRunner(max_workers=get_settings().max_workers))
def transcode_video(
    source: str,
    renditions: str | list[str] | None = None,
    output_dir: str | None = None,
    preset: str | None = None,
    crf: int | None = None,
    chunk_seconds: float | None = None,
    gop_seconds: float | None = None,
    codec: str | None = None,
    mode: str = "local",
    batch_chunks: int | None = None,
    request_id: str | None = None,
) -> TranscodeResult:
    """Transcode SOURCE (a path, s3://bucket/key or http(s) URL) into a ladder with AAC audio.

    `codec` (h264, hevc, av1) applies to the rungs that name none: `1080p:av1,720p`
    mixes codecs in one ladder. `mode`: "local" (every stage in this process) or
    "deployments" (each stage on its work queue; chunks in batches of `batch_chunks`).
    `request_id`: set by the ingest API, which finds the run and its video by it.
    """
    started_at = time.time()
    settings = get_settings()
    logger = get_run_logger()
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
    if mode not in MODES:
        raise BadInputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if batch_chunks is not None and batch_chunks < 1:
        raise BadInputError(f"batch_chunks must be at least 1, not {batch_chunks}")
    rungs = parse_rungs(renditions, encoder.codec)
    stages = StageRunner(mode)  # type: ignore[arg-type]

    with ThreadPoolTaskRunner(max_workers=1) as uploads:
        if mode == "local":
            # This process holds the source: its chunks are encoded from that copy while the
            # original uploads, on a thread of its own (not an encoder's); nothing is
            # published before the upload is done.
            src, stored = begin_download(source, uploads)
        else:
            src, stored = stages.run(download_source, origin=source), None
        if request_id:
            Storage().put_json(keys.request(request_id), {"request_id": request_id, "video_id": src.video_id,
                                                           "source": source, "flow_run_id": str(flow_run.id)})
        probe = stages.run(probe_video, source=src)
        plan = stages.run(split_video, source=src, probe=probe, rungs=rungs, encoder=encoder,
                          gop_seconds=gop_seconds or settings.gop_seconds,
                          chunk_seconds=chunk_length(chunk_seconds, settings, mode, probe.duration))

        groups = batches(plan, mode, batch_chunks or settings.batch_chunks)
        if mode == "local":
            on_done = None  # the one batch reports every task itself
        else:
            logger.info("transcode: %d chunks x %d rungs in %d batches", len(plan.chunks), len(plan.rungs),
                        len(groups))
            progress_id = create_progress_artifact(0.0, description=f"transcode of {src.video_id}: batches done")

            def on_done(done: int, total: int) -> None:
                progress(logger, "transcode batches", done, total)
                update_progress_artifact(progress_id, 100.0 * done / total)
        # the audio goes with the first batch: encoded once, beside the video
        done = stages.map(transcode_batch, [{"plan": plan, "source": src, "chunks": group,
                                             "probe": probe if i == 0 else None}
                                            for i, group in enumerate(groups)], on_done)

        if stored is not None:
            stored.result()
    title = _title(src.origin)
    result = stages.run(merge_video, plan=plan, source=src, probe=probe, batches=done, started_at=started_at,
                        title=title)
    # a rerun with the same settings is answered from these outputs, without a flow run;
    # bookkeeping only: the video is finished whether or not it can be written
    try:
        record_finished(Storage(), fingerprint(settings, renditions, codec, preset, crf, chunk_seconds, gop_seconds,
                                               mode),
                        result)
    except Exception as exc:  # noqa: BLE001
        logger.warning("could not keep the finished result for reruns: %s", exc)
    if output_dir:
        result = result.model_copy(update={"renditions": tuple(export_rendition(r, output_dir)
                                                               for r in result.renditions)})
        export_package(src.video_id, output_dir)
        if result.player_url:
            export_player(src.video_id, title, result.thumbnails, output_dir)
    return result
