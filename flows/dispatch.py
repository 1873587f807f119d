"""Where a stage flow runs: in this process, or as a run of its deployment on its queue.

`mode="local"` calls the stage's function here, in the parent flow run (the embedded default). With
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
# How long a stage call waits out a Prefect server that cannot answer (503 while its SQLite
# database is locked, a restart), beyond the client's own retries (about a minute). Measured:
# nine warm workers polling an SQLite-backed server on two busy cores locked run creation
# out for 2.5 minutes, and the whole video failed on the first batch it could not submit.
PATIENCE_SECONDS = 600.0
TRANSIENT_STATUS = frozenset({408, 429, 502, 503, 504})


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
                # the stage's body, not a subflow run: its tasks run on the parent's task
                # runner and show in the parent run. A subflow per stage cost 1.2 s of wall
                # time (the engine joins its heartbeat thread, which sleeps in 1 s steps) and
                # ~0.35 CPU-s of the server each: half the cost of a 2 s clip (load test).
                out.append(stage.fn(**parameters))
                if on_done:
                    on_done(i + 1, len(calls))
            return out
        return self._map_deployments(stage, calls, on_done)

    def _map_deployments(self, stage: Flow, calls: list[dict[str, Any]],
                         on_done: Callable[[int, int], None] | None) -> list:
        logger = get_run_logger()
        name = f"{stage.name}/{DEPLOYMENT}"
        final = self._wait(name, {i: self._submit(name, p, (i, 0)) for i, p in enumerate(calls)}, len(calls), on_done)
        # A crashed run lost its worker (a killed container, a reclaimed Spot instance), not
        # a fight with its input: run it once more. What it finished is cached, so the
        # second run does only the rest.
        crashed = {i: run for i, run in final.items() if run.state.is_crashed()}
        if crashed:
            logger.warning("%s: %d runs crashed (%s); running them again", name, len(crashed),
                           ", ".join(f"{r.name}: {r.state.message}" for r in crashed.values()))
            final.update(self._wait(name, {i: self._submit(name, calls[i], (i, 1)) for i in crashed}, len(calls),
                                    None))
        results, failures = [], []
        for i in range(len(calls)):
            run = final[i]
            if run.state.is_completed():
                results.append(run.state.result())
                continue
            failures.append((run, run.state.result(raise_on_failure=False)))
        if failures:
            run, error = failures[0]
            logger.error("%s: %d of %d runs failed: %s", name, len(failures), len(calls),
                         ", ".join(f"{r.name} ({r.state.name})" for r, _ in failures))
            if isinstance(error, BaseException):
                raise error
            raise StageFailed(f"{name} run {run.name} ended {run.state.name}: {run.state.message}")
        return results

    @staticmethod
    def _submit(name: str, parameters: dict[str, Any], call: tuple[int, int]):
        """Create the stage's run. `call` (index, round) names it to the server: a retry after
        an answer that was lost returns the run already made instead of a second one."""
        from prefect.deployments import run_deployment
        from prefect.runtime import flow_run

        # the parent's own retry (run_count) submits anew: its earlier runs may have failed
        key = f"{flow_run.id}:{flow_run.run_count}:{name}:{call[0]}:{call[1]}"
        return patiently(f"{name}: submitting run {call[0] + 1}",
                         lambda: run_deployment(name, parameters=parameters, timeout=0, as_subflow=True,
                                                idempotency_key=key))

    @staticmethod
    def _wait(name: str, runs: dict[int, Any], total: int, on_done: Callable[[int, int], None] | None) -> dict:
        """Poll until every run is final; returns them by call index."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        logger = get_run_logger()
        index = {run.id: i for i, run in runs.items()}
        final: dict[int, Any] = {}
        noted = started = time.monotonic()
        with get_client(sync_client=True) as client:
            while len(final) < len(runs):
                time.sleep(POLL_SECONDS)
                waiting = [run_id for run_id, i in index.items() if i not in final]
                read = patiently(f"{name}: reading the runs' states", lambda: client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=waiting))))
                for run in read:
                    if run.state is not None and run.state.is_final():
                        final[index[run.id]] = run
                        if on_done:
                            on_done(len(final), total)
                if time.monotonic() - noted > WAITING_NOTE_SECONDS:
                    noted = time.monotonic()
                    logger.info("%s: %d of %d runs done after %.0f s (no worker on its queue takes them?)",
                                name, len(final), len(runs), noted - started)
        return final


def transient(exc: BaseException) -> bool:
    """A Prefect server that could not answer now, but may in a moment."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(exc, PrefectHTTPStatusError):
        return exc.response.status_code in TRANSIENT_STATUS
    return isinstance(exc, httpx.TransportError)


def patiently(what: str, call: Callable[[], Any]) -> Any:
    """`call()`, tried again while the server answers with a transient error, for up to
    PATIENCE_SECONDS; each wait is logged, the last error raised."""
    deadline = time.monotonic() + PATIENCE_SECONDS
    delay = 2.0
    while True:
        try:
            return call()
        except Exception as exc:
            if not transient(exc) or time.monotonic() + delay > deadline:
                raise
            get_run_logger().warning("%s: the Prefect server could not answer (%s); trying again in %.0f s", what,
                                     str(exc).split(" - ")[0], delay)
            time.sleep(delay)
            delay = min(2 * delay, 30.0)
