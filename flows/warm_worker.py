"""A warm worker: takes flow runs from a work pool's queues and runs them in this process.

    python -m flows.warm_worker --pool transcode --queue orchestrate --limit 4

Prefect's process and Docker workers start a new Python for every flow run. Importing
Prefect and this project costs about 3.5 CPU-seconds on the 2-core machine: more than
the whole transcode of a two-second clip (about 3.3 CPU-s, ffmpeg included). A warm
worker imports once and runs each flow run on a thread of its own, at most `limit` at
once; ffmpeg does the work in child processes, so threads suffice (as in `mode="local"`).

What it gives up against a process worker: runs share one process, so one crash ends
them all. Each run it takes records `infrastructure_pid` as `host:pid:warm`; a warm
worker that starts (and every minute after) puts back in the queue the runs of its pool
whose recorded process is gone from this host, so a killed worker's runs are rerun by
the next one (their finished chunks are cached). Cancellation from the UI is not
delivered to a run in progress (it ends at its next state change).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from uuid import UUID

from transcoder.malloc import limit_arenas

logger = logging.getLogger("warm_worker")

MARK = "warm"
RECLAIM_SECONDS = 60.0


def infrastructure_pid(pid: int | None = None) -> str:
    return f"{socket.gethostname()}:{pid or os.getpid()}:{MARK}"


def orphaned(recorded: str | None, host: str | None = None) -> bool:
    """Whether a run's recorded warm-worker process is gone (on this host: others can't be seen)."""
    parts = (recorded or "").split(":")
    if len(parts) != 3 or parts[2] != MARK or parts[0] != (host or socket.gethostname()) or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


class WarmWorker:
    def __init__(self, pool: str, queues: list[str] | None, limit: int, poll_seconds: float = 1.0,
                 entrypoint: str = "flows/transcode.py:transcode_video"):
        self.pool, self.queues, self.limit, self.poll_seconds = pool, queues or None, limit, poll_seconds
        self.entrypoint = entrypoint
        self.name = f"warm-{socket.gethostname()}-{os.getpid()}"
        self.running: dict[UUID, Future] = {}
        self.stopping = threading.Event()
        self._flows: dict[UUID, object] = {}

    # ---- the flow of a run -----------------------------------------------------------------
    async def _flow_for(self, client, flow_run):
        """The flow object for a run's deployment, loaded once per deployment."""
        from prefect.flows import load_flow_from_entrypoint

        key = flow_run.deployment_id
        if key not in self._flows:
            entrypoint = self.entrypoint
            if key is not None:
                deployment = await client.read_deployment(key)
                entrypoint = deployment.entrypoint or entrypoint
            self._flows[key] = load_flow_from_entrypoint(entrypoint)
        return self._flows[key]

    # ---- one poll ----------------------------------------------------------------------------
    async def poll(self, client) -> int:
        """Take up to the free slots' worth of due runs; the number taken."""
        from prefect.client.schemas.responses import WorkerFlowRunResponse
        from prefect.states import Pending

        free = self.limit - len(self.running)
        if free <= 0 or self.stopping.is_set():
            return 0
        body = {"scheduled_before": datetime.now(timezone.utc).isoformat(), "limit": free}
        if self.queues:
            body["work_queue_names"] = self.queues
        response = await client.request("POST", "/work_pools/{name}/get_scheduled_flow_runs",
                                        path_params={"name": self.pool}, json=body)
        taken = 0
        for item in WorkerFlowRunResponse.model_validate_list(response.json()):
            flow_run = item.flow_run
            # Pending claims the run: another worker proposing it too is refused (ABORT)
            result = await client.set_flow_run_state(flow_run.id, Pending(), force=False)
            if result.status.value != "ACCEPT":
                continue
            await client.update_flow_run(flow_run.id, infrastructure_pid=infrastructure_pid())
            try:
                flow = await self._flow_for(client, flow_run)
            except Exception as exc:  # a deployment whose code this worker cannot load
                from prefect.states import Crashed

                logger.error("run %s: cannot load its flow: %s", flow_run.name, exc)
                await client.set_flow_run_state(flow_run.id, Crashed(message=f"warm worker cannot load the flow: {exc}"),
                                                force=True)
                continue
            flow_run = await client.read_flow_run(flow_run.id)
            self.running[flow_run.id] = self.pool_executor.submit(self._run, flow, flow_run)
            taken += 1
        return taken

    def _run(self, flow, flow_run) -> None:
        from prefect.flow_engine import run_flow

        started = time.monotonic()
        try:
            state = run_flow(flow, flow_run=flow_run, return_type="state")
            logger.info("run %s ended %s in %.1f s", flow_run.name, getattr(state, "name", state),
                        time.monotonic() - started)
        except BaseException:  # the engine reports the run's own failures as its state
            logger.exception("run %s: the engine failed", flow_run.name)

    async def reclaim(self, client) -> int:
        """Put back in the queue the runs of this pool whose warm worker on this host died."""
        from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
                                                    WorkPoolFilter, WorkPoolFilterName)
        from prefect.client.schemas.objects import StateType
        from prefect.states import Scheduled

        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.PENDING, StateType.RUNNING]))),
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.pool])), limit=200)
        count = 0
        for run in runs:
            if run.id not in self.running and orphaned(run.infrastructure_pid):
                await client.set_flow_run_state(run.id, Scheduled(message=(
                    f"its warm worker ({run.infrastructure_pid}) is gone; queued again")), force=True)
                logger.warning("run %s: its worker %s is gone; queued again", run.name, run.infrastructure_pid)
                count += 1
        return count

    # ---- the loop ------------------------------------------------------------------------------
    async def serve(self, stop_after: float | None = None) -> None:
        from prefect.client.orchestration import get_client

        self.pool_executor = ThreadPoolExecutor(max_workers=self.limit, thread_name_prefix="warm-run")
        deadline = time.monotonic() + stop_after if stop_after else None
        last_reclaim = last_beat = 0.0
        # the flows imported now, not on the first run: a worker on a small CPU share spent
        # seconds of that run importing the engine
        from prefect.flows import load_flow_from_entrypoint

        self._flows[None] = load_flow_from_entrypoint(self.entrypoint)
        logger.info("%s: pool %s, queues %s, %d at once; ready", self.name, self.pool, self.queues or "all",
                    self.limit)
        async with get_client() as client:
            while not self.stopping.is_set() and (deadline is None or time.monotonic() < deadline):
                for run_id in [r for r, f in self.running.items() if f.done()]:
                    del self.running[run_id]
                now = time.monotonic()
                try:
                    if now - last_beat > 15:
                        await client.send_worker_heartbeat(self.pool, self.name, heartbeat_interval_seconds=30)
                        last_beat = now
                    if now - last_reclaim > RECLAIM_SECONDS:
                        await self.reclaim(client)
                        last_reclaim = now
                    await self.poll(client)
                except Exception as exc:  # the server restarting: keep the runs going, poll again
                    logger.warning("poll failed (%s); trying again", exc)
                await asyncio.sleep(self.poll_seconds)
        logger.info("%s: stopping; waiting for %d runs", self.name, len(self.running))
        self.pool_executor.shutdown(wait=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.warm_worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", default=os.environ.get("TRANSCODE_WORK_POOL", "transcode"))
    parser.add_argument("--queue", action="append", dest="queues", help="a work queue (repeat; default: all)")
    parser.add_argument("--limit", type=int, default=max(2, os.cpu_count() or 2), help="runs at once")
    parser.add_argument("--poll-seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    limit_arenas()  # before the runs' threads start (transcoder/malloc.py)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per API call otherwise
    worker = WarmWorker(args.pool, args.queues, args.limit, args.poll_seconds)
    # SIGTERM/SIGINT: take no new runs, let the running ones finish
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stopping.set())
    asyncio.run(worker.serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
