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
from .settings import Settings
from .storage import Storage

RECORD_FORMAT = 1
# the settings that decide an output's bytes or which outputs there are
_OUTPUT_SETTINGS = {"gop_seconds", "segment_seconds", "chunk_seconds", "codec", "preset", "crf", "x264_threads",
                    "audio_bitrate_kbps", "quality_metrics", "streaming_outputs"}


def fingerprint(settings: Settings, renditions: str | list[str] | None, codec: str | None, preset: str | None,
                crf: int | None, chunk_seconds: float | None, gop_seconds: float | None) -> str:
    """Everything of a request that decides its outputs, as a hash (ffmpeg build included)."""
    codec = check_codec(codec or settings.codec)
    request = {"rungs": parse_rungs(renditions, codec), "codec": codec, "preset": preset or settings.preset,
               "crf": settings.crf if crf is None else crf, "chunk_seconds": chunk_seconds or settings.chunk_seconds,
               "gop_seconds": gop_seconds or settings.gop_seconds}
    return stable_hash({"format": RECORD_FORMAT, "request": request, "encoder": encoder_version(),
                        "settings": settings.model_dump(include=_OUTPUT_SETTINGS, mode="json")})[:32]


def record_finished(storage: Storage, fingerprint_: str, result: TranscodeResult, title: str) -> None:
    """Keep a finished run's result for reruns, with the report's ETag: any later run of the
    video rewrites the report, which tells a rerun that the outputs may be another run's."""
    report = storage.head(result.report_key)
    if report is None:  # cannot happen after a finished run; without it nothing can be checked
        return
    storage.put_json(keys.finished(result.video_id, fingerprint_),
                     {"format": RECORD_FORMAT, "title": title, "report_etag": report["etag"],
                      "result": result.model_dump(mode="json")})


def reuse_finished(storage: Storage, settings: Settings, source: Path, fingerprint_: str,
                   output_dir: str | None) -> TranscodeResult | None:
    """The finished result for this file and settings, checked and exported; None when the
    flow has to run (never finished, or its outputs are not all there as published)."""
    started = time.monotonic()
    video_id = sha256_local(source, settings)[:16]
    record = storage.get_json(keys.finished(video_id, fingerprint_))
    if not record or record.get("format") != RECORD_FORMAT:
        return None
    result = TranscodeResult.model_validate(record["result"])
    report = storage.head(result.report_key)
    if report is None or report["etag"] != record["report_etag"]:
        return None  # another run since: the package and report may be for other settings
    if not all(storage.holds(r.key, r.sha256, r.size) for r in result.renditions):
        return None
    if result.hls_master_key and storage.head(result.hls_master_key) is None:
        return None
    update: dict = {"reused": True, "transcoded": 0, "cached": result.chunks * len(result.renditions)}
    if result.player_url:  # the stored page's links expire: a rerun writes a fresh one
        update["player_url"] = player.publish(storage, video_id, record["title"], result.thumbnails,
                                              settings.player_link_seconds)
    if output_dir:
        update["renditions"] = tuple(export.export_rendition(storage, r, output_dir) for r in result.renditions)
        export.export_package(storage, video_id, output_dir)
        if result.player_url:
            player.export(video_id, record["title"], result.thumbnails, output_dir)
    update["wall_seconds"] = round(time.monotonic() - started, 3)
    return result.model_copy(update=update)
