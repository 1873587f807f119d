"""The backlog: videos asked for and not finished, and the limit past which the API answers 429.

    backlog = transcode-video runs not in a final state (Scheduled, Pending, Running,
              Paused, Cancelling), counted by the Prefect server
            + requests this process queued whose run the server does not show yet

The second term covers the moments between the event and the run the trigger makes from
it (a second or so; longer in a burst): without it a burst of 1,000 requests would all be
let in before the first run existed. A run is matched to its request by the run's
`request_id` parameter; a request whose run never appears (its trigger failed) stops
counting after `unseen_seconds`.

Both numbers are refreshed in the background every `refresh_seconds`, so a request pays
no Prefect call for the check. With several API replicas each knows only its own unseen
requests: between refreshes they can overshoot the limit by what they accept in that time.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from datetime import datetime, timedelta, timezone
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterExpectedStartTime,
                                            FlowRunFilterState, FlowRunFilterStateType)
from prefect.client.schemas.objects import StateType

logger = logging.getLogger("ingest_api")

FLOW = "transcode-video"
NOT_FINAL = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
PAGE = 200
PAGES = 10  # runs matched per refresh at most: PAGE x PAGES (the rest the next time)


class Backlog:
    def __init__(self, limit: int, retry_after: int, refresh_seconds: float = 1.0, unseen_seconds: float = 300.0):
        self.limit, self.retry_after = limit, retry_after
        self.refresh_seconds, self.unseen_seconds = refresh_seconds, unseen_seconds
        self.server_count = 0
        self._unseen: dict[UUID, float] = {}  # request id -> time.time() it was queued
        self._read_until = 0.0  # runs made before this (time.time()) have been matched

    @property
    def depth(self) -> int:
        return self.server_count + len(self._unseen)

    def full(self) -> bool:
        return self.limit > 0 and self.depth >= self.limit

    def add(self, request_id: UUID) -> None:
        self._unseen[request_id] = time.time()

    def discard(self, request_id: UUID) -> None:
        self._unseen.pop(request_id, None)

    def refusal(self) -> tuple[str, dict[str, str]]:
        """The 429's message and headers."""
        return (f"too many videos waiting: {self.depth} queued or running, the limit is {self.limit} "
                f"(TRANSCODE_API_MAX_BACKLOG); nothing was kept, send it again in {self.retry_after} s",
                {"Retry-After": str(self.retry_after)})

    async def refresh(self, client: PrefectClient) -> None:
        flow = FlowFilter(name=FlowFilterName(any_=[FLOW]))
        now = time.time()
        read_from = now
        for rid in [r for r, at in self._unseen.items() if now - at > self.unseen_seconds]:
            del self._unseen[rid]
        if self._unseen:
            # every run made since the oldest unseen request, whatever its state (a short video
            # can finish between two refreshes); those made before the last full read were read then
            since = max(min(self._unseen.values()), self._read_until - 10)
            since_dt = datetime.fromtimestamp(since, timezone.utc) - timedelta(seconds=5)
            runs_filter = FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since_dt))
            total = await client.count_flow_runs(flow_filter=flow, flow_run_filter=runs_filter)
            for page in range(min(PAGES, math.ceil(total / PAGE))):
                runs = await client.read_flow_runs(flow_filter=flow, flow_run_filter=runs_filter, limit=PAGE,
                                                   offset=page * PAGE)
                for run in runs:
                    rid = run.parameters.get("request_id")
                    try:
                        self._unseen.pop(UUID(str(rid)), None)
                    except ValueError:
                        continue
            if total > PAGE * PAGES:
                read_from = self._read_until  # not all read: the same window again next time
        self._read_until = read_from
        # counted after the matching: a run made in between counts twice for a moment, never zero times
        self.server_count = await client.count_flow_runs(flow_filter=flow, flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=NOT_FINAL))))

    async def keep_fresh(self, client: PrefectClient) -> None:
        """Refresh until cancelled; a failed refresh keeps the last figures (and says so)."""
        failing = False
        while True:
            try:
                await self.refresh(client)
                if failing:
                    logger.info("backlog: the Prefect API answers again")
                failing = False
            except Exception as exc:  # the server restarting: keep counting on the last figures
                if not failing:
                    logger.warning("backlog: cannot read the run counts (%s); using the last ones", exc)
                failing = True
            await asyncio.sleep(self.refresh_seconds)
