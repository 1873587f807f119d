"""Queue depth per work queue, in Prometheus' text format (for KEDA or autoscaling groups).

`transcode_backlog`: videos queued or running as the API counts them for its 429 limit
(backlog.py), `transcode_backlog_limit` that limit (0: none).
The text is made in the background every `Snapshot.seconds` (2 s), so a scrape costs the
Prefect server nothing and answers at once however busy the server is.
`transcode_queue_depth`: flow runs waiting for a worker: Scheduled-type states (Scheduled,
Late, AwaitingRetry) whose start time has come, and Pending ones. Runs scheduled for later
(a cron deployment keeps some ahead) are not waiting. `transcode_running_runs`: Running.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterNextScheduledStartTime, FlowRunFilterState,
                                            FlowRunFilterStateType, WorkPoolFilter, WorkPoolFilterName, WorkQueueFilter,
                                            WorkQueueFilterName)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import ObjectNotFound

from .backlog import Backlog

logger = logging.getLogger("ingest_api")

METRICS = (
    ("transcode_queue_depth", "Flow runs waiting for a worker (due Scheduled/Late, Pending) per work queue."),
    ("transcode_running_runs", "Flow runs running per work queue."),
)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


async def _count(client: PrefectClient, pool: str, queue: str, *filters: FlowRunFilter) -> int:
    # by the queue's row (a run's own work_queue_name column is empty for deployment runs)
    counts = await asyncio.gather(*(client.count_flow_runs(
        flow_run_filter=f, work_queue_filter=WorkQueueFilter(name=WorkQueueFilterName(any_=[queue])),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool]))) for f in filters))
    return sum(counts)


async def queue_metrics(client: PrefectClient, pool: str, backlog: Backlog | None = None) -> str:
    try:
        queues = sorted(q.name for q in await client.read_work_queues(work_pool_name=pool))
    except ObjectNotFound:
        queues = []
    now = datetime.now(timezone.utc)
    due = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])),
                        next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=now))
    pending = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PENDING])))
    running = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING])))
    depths = await asyncio.gather(*(_count(client, pool, q, due, pending) for q in queues))
    runnings = await asyncio.gather(*(_count(client, pool, q, running) for q in queues))
    lines = []
    for (name, help_text), values in zip(METRICS, (depths, runnings)):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f'{name}{{pool="{_label(pool)}",queue="{_label(q)}"}} {v}' for q, v in zip(queues, values)]
    if backlog is not None:
        lines += ["# HELP transcode_backlog Videos queued or running (the API's 429 limit counts these).",
                  "# TYPE transcode_backlog gauge", f"transcode_backlog {backlog.depth}",
                  "# HELP transcode_backlog_limit Backlog past which requests get 429 (0: no limit).",
                  "# TYPE transcode_backlog_limit gauge", f"transcode_backlog_limit {backlog.limit}"]
    if not queues:
        lines.append(f"# no work queues in pool {pool!r} (TRANSCODE_WORK_POOL)")
    return "\n".join(lines) + "\n"


class Snapshot:
    """The last metrics text, made every `seconds` in the background."""

    def __init__(self, seconds: float = 2.0):
        self.seconds = seconds
        self.text: str | None = None

    async def keep_fresh(self, client: PrefectClient, pool: str, backlog: Backlog | None) -> None:
        while True:
            try:
                self.text = await queue_metrics(client, pool, backlog)
            except Exception as exc:  # the server restarting: the route computes (and reports) it
                logger.warning("metrics: cannot read the counts (%s)", exc)
                self.text = None
            await asyncio.sleep(self.seconds)
