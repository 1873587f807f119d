"""Where a stage flow runs: in this process, or as a run of its deployment on its queue.

`mode="local"` calls the stage flow here (a subflow; the embedded default). With
`mode="deployments"` each call becomes `run_deployment(..., timeout=0)`: the runs wait on
their work queue until a worker with free capacity takes them (competing consumers, so N
workers on the `transcode` queue run N batches at once), and the parent waits for all of
them. Either way the caller gets the stage's return value, or the stage's own error.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Literal

from prefect import Flow, get_run_logger

Mode = Literal["local", "deployments"]
MODES = ("local", "deployments")
DEPLOYMENT = "default"  # every stage flow's deployment name in prefect.yaml
POLL_SECONDS = 1.0
WAITING_NOTE_SECONDS = 60.0  # how often a wait with no worker taking the runs is logged


class StageFailed(RuntimeError):
    """A stage run on a worker failed, crashed or was cancelled."""


class StageRunner:
    def __init__(self, mode: Mode):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode

    def run(self, stage: Flow, **parameters: Any) -> Any:
        return self.map(stage, [parameters])[0]

    def map(self, stage: Flow, calls: list[dict[str, Any]], on_done: Callable[[int, int], None] | None = None) -> list:
        """Run `stage` once per parameter set; results in the order of `calls`.

        Every call runs to its end before a failure is raised, so one bad batch does not
        leave the others unfinished (their chunks are cached for the rerun).
        """
        if self.mode == "local":
            out = []
            for i, parameters in enumerate(calls):
                out.append(stage(**parameters))
                if on_done:
                    on_done(i + 1, len(calls))
            return out
        return self._map_deployments(stage, calls, on_done)

    def _map_deployments(self, stage: Flow, calls: list[dict[str, Any]],
                         on_done: Callable[[int, int], None] | None) -> list:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.deployments import run_deployment

        logger = get_run_logger()
        name = f"{stage.name}/{DEPLOYMENT}"
        runs = [run_deployment(name, parameters=parameters, timeout=0, as_subflow=True) for parameters in calls]
        order = {run.id: i for i, run in enumerate(runs)}
        final: dict[int, Any] = {}
        noted = started = time.monotonic()
        with get_client(sync_client=True) as client:
            while len(final) < len(runs):
                time.sleep(POLL_SECONDS)
                waiting = [run.id for run in runs if order[run.id] not in final]
                for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=waiting))):
                    if run.state is not None and run.state.is_final():
                        final[order[run.id]] = run
                        if on_done:
                            on_done(len(final), len(runs))
                if time.monotonic() - noted > WAITING_NOTE_SECONDS:
                    noted = time.monotonic()
                    logger.info("%s: %d of %d runs done after %.0f s (no worker on its queue takes them?)",
                                name, len(final), len(runs), noted - started)
        results, failures = [], []
        for i in range(len(runs)):
            run = final[i]
            if run.state.is_completed():
                results.append(run.state.result())
                continue
            error = run.state.result(raise_on_failure=False)
            failures.append((run, error))
        if failures:
            run, error = failures[0]
            logger.error("%s: %d of %d runs failed: %s", name, len(failures), len(runs),
                         ", ".join(f"{r.name} ({r.state.name})" for r, _ in failures))
            if isinstance(error, BaseException):
                raise error
            raise StageFailed(f"{name} run {run.name} ended {run.state.name}: {run.state.message}")
        return results
