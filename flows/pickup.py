"""`pickup-incoming`: on a schedule, one `transcode-video` run per new object under a prefix.

Each run's idempotency key is the object's bucket, key and ETag: the Prefect server hands
back the existing run for a key it has seen, so an object never starts two runs however
often the schedule fires (or two pickups overlap); an object written again with other
bytes has a new ETag and is transcoded again.
"""

from __future__ import annotations

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


def _runs_with_keys(deployment: str, keys: list[str]) -> set[str]:
    """Which of these idempotency keys already have a run of `deployment`. Asked before the
    runs are created: comparing a run's creation time with the time of asking misread a run
    created by the previous pickup in the same second as new."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (DeploymentFilter, DeploymentFilterId, FlowRunFilter,
                                                FlowRunFilterIdempotencyKey)

    found: set[str] = set()
    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        for i in range(0, len(keys), 200):  # the server's page size
            batch = keys[i:i + 200]
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=batch)),
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])), limit=len(batch))
            found.update(r.idempotency_key for r in runs if r.idempotency_key)
    return found


@flow(name="pickup-incoming", validate_parameters=True)
def pickup_incoming(prefix: str = DEFAULT_PREFIX, renditions: str | None = None, codec: str | None = None,
                    deployment: str = "transcode-video/default", limit: int = 500) -> PickupResult:
    """Start `deployment` for each media object under `prefix` (at most `limit` per pickup)."""
    from prefect.deployments import run_deployment

    logger = get_run_logger()
    storage = Storage()
    out = PickupResult()
    wanted: list[tuple[str, str]] = []  # (object key, idempotency key)
    for obj in storage.list_objects(prefix):
        key = obj["Key"]
        if not key.lower().endswith(MEDIA_SUFFIXES):
            out.ignored.append(key)
        elif len(wanted) >= limit:
            logger.info("limit of %d objects reached; the next pickup goes on", limit)
            break
        else:
            wanted.append((key, idempotency_key(storage.name, key, obj["ETag"])))
    seen = _runs_with_keys(deployment, [k for _, k in wanted])
    for key, idempotency in wanted:
        parameters = {"source": f"s3://{storage.name}/{key}"}
        parameters.update({k: v for k, v in (("renditions", renditions), ("codec", codec)) if v})
        # a key the server has seen answers with the run it started then
        run_deployment(deployment, parameters=parameters, timeout=0, as_subflow=False, idempotency_key=idempotency)
        (out.already if idempotency in seen else out.started).append(key)
    logger.info("pickup of %s: %d runs started, %d already started, %d ignored", prefix, len(out.started),
                len(out.already), len(out.ignored))
    return out
