"""A rerun of a finished video, answered from storage without a flow run.

Every chunk x rung is cached on its content hash, but a rerun through the flow still
pays for the flow: importing Prefect, starting a run, a task per chunk x rung, the
assembly checks (12.8 s for a 60 s 1080p ladder whose cold run took 129 s). When a
run of the same bytes with the same settings has finished, its result is kept at
`{video_id}/results/{fingerprint}.json`; `transcode run` looks there first, checks that
what the result names is still what that run published, and answers from it in about
a second. Anything missing or changed since (a rung deleted, another run with other
settings over the same video) sends the command down the flow as before, which
redoes only what is missing.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import export, keys, player
from .ffmpeg import encoder_version
from .ingest import sha256_local
from .ladder import check_codec, parse_rungs
from .models import TranscodeResult, stable_hash
from .plan import encode_slots
from .settings import INPUT_LIMITS, Settings
from .storage import Storage

# Bump when a change to the code changes what a finished run publishes (its outputs, HLS
# package, thumbnails, report) for the same settings: older records are then not reused.
RECORD_FORMAT = 2  # 2: audio of MPEG-TS/PS sources whose audio starts late, in sync
# the settings that decide an output's bytes or which outputs there are, and the input
# limits (a source a run would now refuse must not be answered from an older run)
_OUTPUT_SETTINGS = {"segment_seconds", "x264_threads", "audio_bitrate_kbps", "quality_metrics", "streaming_outputs",
                    *INPUT_LIMITS}


def fingerprint(settings: Settings, renditions: str | list[str] | None, codec: str | None, preset: str | None,
                crf: int | None, chunk_seconds: float | None, gop_seconds: float | None, mode: str = "local") -> str:
    """Everything of a request that decides its outputs, as a hash (ffmpeg build included).
    Chunks of a length chosen per video are recorded as the slots they were chosen for (the
    same file gives the same length again)."""
    codec = check_codec(codec or settings.codec)  # the request's values, resolved against the settings
    chunks = chunk_seconds or settings.chunk_seconds or f"auto/{encode_slots(settings, mode)}"
    request = {"rungs": parse_rungs(renditions, codec), "codec": codec, "preset": preset or settings.preset,
               "crf": settings.crf if crf is None else crf, "chunk_seconds": chunks,
               "gop_seconds": gop_seconds or settings.gop_seconds}
    return stable_hash({"format": RECORD_FORMAT, "request": request, "encoder": encoder_version(),
                        "settings": settings.model_dump(include=_OUTPUT_SETTINGS, mode="json")})[:32]


def published(storage: Storage, result: TranscodeResult) -> dict[str, str]:
    """ETag of every object a rerun would hand out besides the MP4s (whose sha256 is checked):
    the report, the HLS package, the poster and thumbnails. Any run that rewrote one changed it."""
    video_id = result.video_id
    found = {**storage.etags(keys.hls(video_id)), **storage.etags(keys.thumbnails(video_id))}
    report = storage.head(result.report_key)
    if report is not None:
        found[result.report_key] = report["etag"]
    return found


def record_finished(storage: Storage, fingerprint_: str, result: TranscodeResult) -> bool:
    """Keep a finished run's result for reruns, with the ETags of what it published. Not kept
    when the stored report is not this run's (another run of the video finished meanwhile)."""
    report = storage.get_json(result.report_key) or {}
    if [r.get("sha256") for r in report.get("renditions", [])] != [r.sha256 for r in result.renditions] \
            or report.get("hls_master") != result.hls_master_key:
        return False
    storage.put_json(keys.finished(result.video_id, fingerprint_),
                     {"format": RECORD_FORMAT, "published": published(storage, result),
                      "result": result.model_dump(mode="json")})
    return True


def reuse_finished(storage: Storage, settings: Settings, source: Path, fingerprint_: str,
                   output_dir: str | None, title: str) -> TranscodeResult | None:
    """The finished result for this file and settings, checked and exported; None when the
    flow has to run (never finished, or its outputs are not all there as published)."""
    started = time.monotonic()
    video_id = sha256_local(source, settings)[:16]
    record = storage.get_json(keys.finished(video_id, fingerprint_))
    if not record or record.get("format") != RECORD_FORMAT:
        return None
    result = TranscodeResult.model_validate(record["result"])
    if published(storage, result) != record["published"]:
        return None  # rewritten or gone since (another run, other settings): the flow decides
    if not all(storage.holds(r.key, r.sha256, r.size, r.etag) for r in result.renditions):
        return None
    update: dict = {"reused": True, "transcoded": 0, "cached": result.chunks * len(result.renditions)}
    if result.player_url:  # the stored page's links expire: a rerun writes a fresh one
        update["player_url"] = player.publish(storage, video_id, title, result.thumbnails,
                                              settings.player_link_seconds)
    if output_dir:
        update["renditions"] = tuple(export.export_rendition(storage, r, output_dir) for r in result.renditions)
        export.export_package(storage, video_id, output_dir)
        if result.player_url:
            player.export(video_id, title, result.thumbnails, output_dir)
    update["wall_seconds"] = round(time.monotonic() - started, 3)
    return result.model_copy(update=update)
