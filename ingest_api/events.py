"""The `transcode.video.requested` event: what it carries, its id, and posting it.

The event's id is the request id. The deployment trigger in prefect.yaml passes it to
the flow as `request_id` (`"{{ event.id | string }}"`: prefect 3.9.1 renders a lone
`{{ event.id }}` through `tojson`, which fails on a UUID), and the run is named after it.

An object announced by a bucket notification gets a deterministic id, uuid5 over
bucket, key and ETag: the same notification delivered twice is the same event twice.
The Prefect server's trigger service skips an event id it has processed in the last 30
minutes (an in-memory cache per server process); `already_requested` is the durable
guard before that: the event store keeps events (7 days by default) and is asked first.
"""

from __future__ import annotations

import uuid
from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.events import Event
from prefect.events.filters import EventFilter, EventIDFilter, EventNameFilter, EventRelatedFilter

EVENT = "transcode.video.requested"
RESOURCE_PREFIX = "transcode.request."
ACTION_EXECUTED = "prefect.automation.action.executed"
# namespace of request ids derived from objects (any fixed uuid; changing it re-announces every object)
OBJECT_NAMESPACE = UUID("6f1d7c8e-3b0a-5c59-9a43-2d1e2f0b7a11")


def object_request_id(bucket: str, key: str, etag: str) -> UUID:
    """The request id of one version of one object: the same on every delivery."""
    return uuid.uuid5(OBJECT_NAMESPACE, f"s3://{bucket}/{key}@{etag.strip(chr(34))}")


def requested_event(request_id: UUID, source: str, renditions: str | None = None, codec: str | None = None,
                    mode: str = "deployments") -> Event:
    # every key present, null when not asked for: a trigger parameter "{{ event.payload.codec }}"
    # renders as `... | tojson` in prefect 3.9, which fails on a missing key (the action fails,
    # no run) but gives None for null (the flow's default)
    # `mode`: "deployments" (stages on their queues) or "local" (the whole video on the worker
    # that takes the run: cheaper for short videos, e.g. with a warm worker)
    payload = {"source": source, "renditions": renditions, "codec": codec, "mode": mode}
    return Event(event=EVENT, resource={"prefect.resource.id": f"{RESOURCE_PREFIX}{request_id}"},
                 payload=payload, id=request_id)


async def emit(client: PrefectClient, *events: Event) -> None:
    """POST the events to the server's `/events` route (what `prefect.events` does over a
    websocket; one HTTP call here, awaited, so a failure is seen and answered)."""
    await client.request("POST", "/events", json=[e.model_dump(mode="json") for e in events])


async def already_requested(client: PrefectClient, request_id: UUID) -> bool:
    """Whether the server's event store holds this request's event."""
    page = await client.read_events(EventFilter(id=EventIDFilter(id=[request_id]), event=EventNameFilter(name=[EVENT])),
                                    limit=1)
    return bool(page.events)


async def run_started_for(client: PrefectClient, request_id: UUID) -> UUID | None:
    """The flow run the deployment trigger started for this request's event, from the
    automation's `action.executed` event (before the run starts it has a random name)."""
    page = await client.read_events(
        EventFilter(event=EventNameFilter(name=[ACTION_EXECUTED]),
                    related=EventRelatedFilter(id=[f"prefect.event.{request_id}"])), limit=5)
    for event in page.events:
        for related in event.related:
            rid: Any = related.id
            if rid.startswith("prefect.flow-run."):
                return UUID(rid.removeprefix("prefect.flow-run."))
    return None
