"""`pickup-incoming`: on a schedule, one `transcode-video` run per new object under a prefix.

Each run's idempotency key is the object's bucket, key and ETag: the Prefect server hands
back the existing run for a key it has seen, so an object never starts two runs however
often the schedule fires (or two pickups overlap); an object written again with other
bytes has a new ETag and is transcoded again.
"""

from __future__ import annotations

from datetime import datetime, timezone

from prefect import flow, get_run_logger
from pydantic import BaseModel

from transcoder.ingest import MEDIA_SUFFIXES
from transcoder.storage import Storage

DEFAULT_PREFIX = "incoming/"


class PickupResult(BaseModel):
    started: list[str] = []  # keys that started a run now
    already: list[str] = []  # keys whose run exists (an earlier pickup)
    ignored: list[str] = []  # not media by name (folders, sidecar files)


def idempotency_key(bucket: str, key: str, etag: str) -> str:
    return f"pickup:{bucket}/{key}@{etag.strip(chr(34))}"


@flow(name="pickup-incoming", validate_parameters=True)
def pickup_incoming(prefix: str = DEFAULT_PREFIX, renditions: str | None = None, codec: str | None = None,
                    deployment: str = "transcode-video/default", limit: int = 500) -> PickupResult:
    """Start `deployment` for each media object under `prefix` (at most `limit` per pickup)."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    storage = Storage()
    out = PickupResult()
    for obj in storage.list_objects(prefix):
        key = obj["Key"]
        if not key.lower().endswith(MEDIA_SUFFIXES):
            out.ignored.append(key)
            continue
        if len(out.started) + len(out.already) >= limit:
            logger.info("limit of %d objects reached; the next pickup goes on", limit)
            break
        parameters = {"source": f"s3://{storage.name}/{key}"}
        parameters.update({k: v for k, v in (("renditions", renditions), ("codec", codec)) if v})
        asked = datetime.now(timezone.utc)
        run = run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False,
                             idempotency_key=idempotency_key(storage.name, key, obj["ETag"]))
        # a key the server has seen answers with the run it started then
        (out.started if run.created and run.created >= asked.replace(microsecond=0) else out.already).append(key)
    logger.info("pickup of %s: %d runs started, %d already started, %d ignored", prefix, len(out.started),
                len(out.already), len(out.ignored))
    return out
