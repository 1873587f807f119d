"""A request's state: its flow run in the Prefect API, its video in object storage.

A run is found, in order, through the pointer the flow writes (`requests/{id}.json`:
video id and flow run id, written once the source is stored), by its name
(`transcode-{request_id}`, set when the run starts), or through the automation's
`action.executed` event (a run the trigger created but no worker has started yet still
has a random name). Storage calls are blocking boto3 calls: they run in worker threads.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable
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


class Answers:
    """Status answers within `budget` seconds, however slow the Prefect server is.

    A busy Prefect server (a backlog draining: every worker's task states, events and
    logs go through it) can take a second or more to answer. A poll waits `budget` for
    the full answer; past it, it gets the last full answer for that request (marked
    `"stale": true`) or what storage alone shows (the pointer: the run has started),
    while the full answer is still fetched and kept for the next poll.

    A completed request's answer (it has outputs) is given as it is for `done_seconds`
    (at most half the links' lifetime, so a link handed out stays valid at least that
    long): polling a finished video costs the Prefect server and the storage nothing.
    A failed one is fetched again: it may be retried.
    """

    def __init__(self, budget: float = 0.1, done_seconds: float = 600, size: int = 10_000):
        self.budget, self.done_seconds, self.size = budget, done_seconds, size
        self.last: OrderedDict[UUID, dict] = OrderedDict()
        self._done_at: dict[UUID, float] = {}
        self.pending: dict[UUID, asyncio.Task] = {}

    def _keep(self, request_id: UUID, task: asyncio.Task) -> None:
        self.pending.pop(request_id, None)
        if task.cancelled() or task.exception() is not None or task.result() is None:
            return
        doc = task.result()
        self.last[request_id] = doc
        self.last.move_to_end(request_id)
        if doc.get("outputs"):
            self._done_at[request_id] = time.monotonic()
        while len(self.last) > self.size:
            self._done_at.pop(self.last.popitem(last=False)[0], None)

    async def get(self, request_id: UUID, full: Callable[[], Awaitable[dict | None]],
                  quick: Callable[[], Awaitable[dict | None]]) -> dict | None:
        done_at = self._done_at.get(request_id)
        if done_at is not None and time.monotonic() - done_at < self.done_seconds:
            return self.last[request_id]
        task = self.pending.get(request_id)
        if task is None:
            task = asyncio.ensure_future(full())
            self.pending[request_id] = task
            task.add_done_callback(lambda t: self._keep(request_id, t))
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.budget)
        except asyncio.TimeoutError:
            pass
        if request_id in self.last:
            return {**self.last[request_id], "stale": True}
        doc = await quick()
        return doc if doc is not None else await asyncio.shield(task)


async def storage_view(storage: Storage, request_id: UUID, known: bool) -> dict | None:
    """What storage alone says of a request: started (the flow wrote its pointer), or queued
    (this process queued it); None when it knows nothing."""
    pointer = await to_thread.run_sync(read_pointer, storage, request_id)
    if pointer is None and not known:
        return None
    return {"request_id": str(request_id), "state": "Running" if pointer else "queued",
            "flow_run_id": (pointer or {}).get("flow_run_id"), "video_id": (pointer or {}).get("video_id"),
            "source": (pointer or {}).get("source"), "stale": True}


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
