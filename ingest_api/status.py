"""A request's state: its flow run in the Prefect API, its video in object storage.

A run is found, in order, through the pointer the flow writes (`requests/{id}.json`:
video id and flow run id, written once the source is stored), by its name
(`transcode-{request_id}`, set when the run starts), or through the automation's
`action.executed` event (a run the trigger created but no worker has started yet still
has a random name). Storage calls are blocking boto3 calls: they run in worker threads.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from anyio import to_thread
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectNotFound

from transcoder.keys import encoded, player, report, request
from transcoder.storage import Storage

from . import events

ENDED_BADLY = {StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


def run_name(request_id: UUID) -> str:
    return f"transcode-{request_id}"


async def find_run(client: PrefectClient, request_id: UUID, pointer: dict | None) -> FlowRun | None:
    if pointer and pointer.get("flow_run_id"):
        try:
            return await client.read_flow_run(UUID(str(pointer["flow_run_id"])))
        except (ObjectNotFound, ValueError):
            pass
    runs = await client.read_flow_runs(
        flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name(request_id)])),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
    if runs:
        return runs[0]
    started = await events.run_started_for(client, request_id)
    if started:
        try:
            return await client.read_flow_run(started)
        except ObjectNotFound:
            return None
    return None


def read_pointer(storage: Storage, request_id: UUID) -> dict | None:
    return storage.get_json(request(str(request_id)))


def outputs(storage: Storage, request_id: UUID, video_id: str, link_seconds: int) -> dict | None:
    """The renditions (presigned links), HLS master and player page of a finished video."""
    rep = storage.get_json(report(video_id))
    if rep is None:
        return None

    def link(key: str) -> str:
        return storage.presigned_url(key, expires=link_seconds, public=True)

    renditions = [{"name": r["name"], "width": r["width"], "height": r["height"], "bitrate": r["bitrate"],
                   "size": r.get("size"), "key": r["key"], "url": link(r["key"]),
                   "download": f"/videos/{request_id}/download/{r['name']}"} for r in rep.get("renditions", [])]
    out: dict[str, Any] = {"renditions": renditions, "hls_master": rep.get("hls_master"), "player_url": None}
    if storage.head(player(video_id)) is not None:
        out["player_url"] = link(player(video_id))
    return out


def rendition_link(storage: Storage, video_id: str, rendition: str, link_seconds: int) -> str | None:
    rep = storage.get_json(report(video_id))
    for r in (rep or {}).get("renditions", []):
        if r["name"] == rendition:
            return storage.presigned_url(r.get("key") or encoded(video_id, rendition), expires=link_seconds,
                                         public=True)
    return None


async def request_status(client: PrefectClient, storage: Storage, request_id: UUID, known: bool,
                         link_seconds: int) -> dict | None:
    """The status document, or None when nothing is known of this request id.

    `known`: this API process queued the request (its event may not be stored yet)."""
    pointer = await to_thread.run_sync(read_pointer, storage, request_id)
    run = await find_run(client, request_id, pointer)
    video_id = (pointer or {}).get("video_id")
    status: dict[str, Any] = {"request_id": str(request_id), "state": "queued", "flow_run_id": None,
                              "video_id": video_id, "source": (pointer or {}).get("source")}
    if run is None:
        if pointer or known or await events.already_requested(client, request_id):
            return status
        return None
    state = run.state
    status.update(state=state.name if state else "Unknown", flow_run_id=str(run.id))
    if state is None:
        return status
    if state.type in ENDED_BADLY:
        status["message"] = state.message or f"the run ended {state.name}"
    elif state.type == StateType.COMPLETED and video_id:
        status["outputs"] = await to_thread.run_sync(outputs, storage, request_id, video_id, link_seconds)
    return status
