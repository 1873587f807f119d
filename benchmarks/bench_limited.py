"""The scaling model checked against real workers: N CPU-limited transcode workers, mode "deployments".

    .venv/bin/python benchmarks/bench_limited.py [--seconds 32] [--height 1080] [--chunk-seconds 4]
                                                 [--workers 1,2,4,8] [--cpu 0.125] [--database postgres]

No many-core machine was lent to this work, so `bench_scaling.py` models 4-64 workers from
the costs it measures in mode "local". This runs the fan-out itself, on this machine's
loopback: each transcode worker is a warm worker (`flows/warm_worker.py`) in a cgroup of its
own with a CPU quota of `--cpu` of a core (a one-core machine, slower than this one's cores
by that factor, so that `--workers` of them fit on two cores beside the servers), with a
work folder of its own (it holds no copy of the source, so it reads each chunk's bytes from
storage by range, as a worker on another machine does), taking one batch (one chunk, every
rung: `batch_chunks=1`) at a time. Before each timed run, a small video of one chunk per
worker warms every worker (what a warm worker keeps from run to run: the stage flows,
storage clients, result blocks). One more warm worker, not limited, takes the other
queues (orchestrate, download, metadata, split, merge). Each run is started as a user
starts one (`prefect deployment run transcode-video/default`) on a content-unique copy of
the input (cold).

The check: the model of `bench_scaling.py` (`model`: the serial part, the chunks' batches
longest first over N workers, range reads through one S3 server) is built from the
1-worker run alone, as bench_scaling builds it from its own runs, and predicts the others;
so is the same model with the batches taken in the order the flow submits them (what the
workers' queue does). Per run, from the server's flow and task runs: before the first batch
(the download, probe and split stages), each batch from its submission to its end (the
worker's pickup, the flow run, its chunk's encodes and uploads), after the last batch (the
merge stage). Writes OUT/results-limited.json. Needs root (cgroups); loopback only.

The Prefect server runs on PostgreSQL, as in the compose stack (`--database postgres`, a
throwaway cluster, benchmarks/postgres.py; SeaweedFS is the local stack's). On the local
stack's SQLite server (`--database sqlite`) nine warm workers polling on two busy cores
locked run creation out for 2.5 minutes: the 8-worker run failed, before flows/dispatch.py
learnt to wait that out.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (LADDER, REPO, forget_made_videos, input_args, make_input, out_dir, stack_pids,  # noqa: E402
                        unique_copy)
from bench_scaling import model  # noqa: E402
from bench_workers import POOL, deployment_run, stack_env, stop_workers  # noqa: E402

PERIOD_US = 100_000
LIGHT_QUEUES = ("orchestrate", "download", "metadata", "split", "merge")


class CpuLimit:
    """A cgroup whose processes (and their children: the ffmpegs) share `cores` of a core:
    cgroup v2 `cpu.max`, or v1's `cpu.cfs_quota_us`."""

    def __init__(self, name: str, cores: float):
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        quota = max(1000, int(cores * PERIOD_US))
        if v2.exists():
            root = Path("/sys/fs/cgroup")
            if "cpu" not in (root / "cgroup.subtree_control").read_text().split():
                (root / "cgroup.subtree_control").write_text("+cpu")
            self.path = root / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            self.path = Path("/sys/fs/cgroup/cpu") / name
            self.path.mkdir(exist_ok=True)
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run inside the group from its first instruction on."""
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh", *argv]

    def throttled(self) -> dict:
        """How often the quota held the group back (cpu.stat), for the record."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        return {k: int(v) for k, v in stat.items() if k in ("nr_periods", "nr_throttled", "throttled_time",
                                                             "throttled_usec")}

    def remove(self) -> None:
        for _ in range(50):  # the group empties when its last process has been reaped
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


class PostgresServer:
    """A Prefect server of this benchmark on a throwaway PostgreSQL, with the local stack's
    storage blocks (its SeaweedFS)."""

    def __init__(self, out: Path, logs: Path):
        from postgres import Postgres

        from transcoder.stack import free_port, start_prefect_server

        taken: set[int] = set()
        self.pg = Postgres(free_port(taken))
        home = out / "limited-prefect"
        shutil.rmtree(home, ignore_errors=True)
        self.proc, self.url = start_prefect_server(home, free_port(taken), logs / "prefect-server.log",
                                                   extra_env={"PREFECT_API_DATABASE_CONNECTION_URL": self.pg.start()})

    def save_blocks(self) -> None:
        from transcoder.settings import get_settings
        from transcoder.stack import LocalStack, save_blocks

        stack = LocalStack(get_settings())
        save_blocks(stack.state().s3_endpoint, *stack.credentials(), get_settings())

    def stop(self) -> None:
        from transcoder.stack import _stop

        _stop(self.proc.pid)
        self.proc.wait()
        self.pg.stop()


def cgroups_writable() -> str | None:
    """Why CPU limits cannot be set here, or None."""
    if os.geteuid() != 0:
        return "needs root (cgroups)"
    if not (Path("/sys/fs/cgroup/cgroup.controllers").exists() or Path("/sys/fs/cgroup/cpu").is_dir()):
        return "no cgroup cpu controller at /sys/fs/cgroup"
    try:  # mounted read-only in many containers
        CpuLimit(f"bench-limited-probe-{os.getpid()}", 0.5).remove()
    except OSError as exc:
        return f"cannot make a cgroup with a CPU quota: {exc}"
    return None


class Workers:
    """Warm workers on the pool of the deployments: one for the light queues, N limited ones."""

    def __init__(self, env: dict, logs: Path):
        self.env, self.logs = env, logs
        self.procs: list[tuple[subprocess.Popen, Path]] = []  # and its log
        self.limits: list[CpuLimit] = []

    def start(self, name: str, queues: tuple[str, ...], limit: int, env: dict, cpu: float | None = None) -> None:
        argv = [sys.executable, "-m", "flows.warm_worker", "--pool", POOL, "--limit", str(limit)]
        for queue in queues:
            argv += ["--queue", queue]
        if cpu is not None:
            group = CpuLimit(f"bench-limited-{os.getpid()}-{name}", cpu)
            self.limits.append(group)
            argv = group.wrap(argv)
        log = self.logs / f"{name}.log"
        log.unlink(missing_ok=True)
        with open(log, "ab") as out:
            self.procs.append((subprocess.Popen(argv, env={**self.env, **env}, cwd=REPO, stdout=out,
                                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                start_new_session=True), log))

    def wait_ready(self, timeout: float = 600) -> None:
        """Every worker has imported the engine and polls (a limited one takes its time)."""
        deadline = time.monotonic() + timeout
        for proc, log in self.procs:
            while "; ready" not in log.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"a warm worker did not start: {log}")
                time.sleep(0.5)

    def stop(self, keep: int = 0) -> dict:
        """Stop all but the first `keep` workers; the stopped groups' throttling."""
        throttled = {}
        stop_workers([proc for proc, _ in self.procs[keep:]])
        for group in self.limits:
            throttled[group.path.name] = group.throttled()
            group.remove()
        self.procs, self.limits = self.procs[:keep], []
        return throttled


# ---------------------------------------------------------------- what a run did


def run_stages(run_id: str) -> dict:
    """From the server: the root run, its stage runs, each batch's times and its chunk's encode."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentTaskRunId

    with get_client(sync_client=True) as client:
        root = client.read_flow_run(run_id)
        parents = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[root.id])))
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_task_run_id=FlowRunFilterParentTaskRunId(any_=[t.id for t in parents])), limit=200)
        names = {f: client.read_flow(f).name for f in {c.flow_id for c in children}}
        batches = [c for c in children if names[c.flow_id] == "transcode-batch"]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[b.id for b in batches])))
    t0 = root.start_time
    rows = []
    for b in sorted(batches, key=lambda b: b.created):
        own = [t for t in tasks if t.flow_run_id == b.id and t.start_time and t.end_time]
        # a chunk's encode: its longest rung task (the one that ran the chunk's one ffmpeg;
        # the others found their rung encoded)
        by_chunk: dict[str, float] = {}
        for t in own:
            if t.name.startswith("transcode-"):
                chunk = t.name.rsplit("-", 1)[-1]
                by_chunk[chunk] = max(by_chunk.get(chunk, 0.0), (t.end_time - t.start_time).total_seconds())
        rows.append({
            "name": b.name,
            "submitted": (b.created - t0).total_seconds(),
            "started": (b.start_time - t0).total_seconds(),
            "ended": (b.end_time - t0).total_seconds(),
            "pickup": (b.start_time - b.created).total_seconds(),
            "encode": sum(by_chunk.values()),
            "audio": sum((t.end_time - t.start_time).total_seconds() for t in own if t.name.startswith("audio")),
            "worker": (b.labels or {}).get("prefect.worker.name") or b.infrastructure_pid,
        })
    stages = {names[c.flow_id]: round((c.end_time - c.start_time).total_seconds(), 2)
              for c in children if c.start_time and c.end_time and names[c.flow_id] != "transcode-batch"}
    wall = (root.end_time - t0).total_seconds()
    first, last = min(r["submitted"] for r in rows), max(r["ended"] for r in rows)
    return {"flow_wall": wall, "pre": first, "batches_span": last - first, "post": wall - last,
            "stages": stages, "batches": rows}


# ---------------------------------------------------------------- the model, from one run


def in_order(durations: list[float], workers: int) -> float:
    """Batches taken in submission order by whichever worker is free first."""
    loads = [0.0] * workers
    for d in durations:
        i = loads.index(min(loads))
        loads[i] += d
    return max(loads)


def predict(base: dict, counts: list[int], source_mb: float, s3_mb_s: float) -> list[dict]:
    """bench_scaling's model fed by the 1-worker run: its serial part (`pre`, `post`) and
    each batch from submission to end as that worker ran it (the pickup, the flow run and
    its chunk: on one worker the batches run back to back, in the order it took them, so each
    batch's time is its end less the previous one's, the first's from the first submission)."""
    rows = sorted(base["batches"], key=lambda r: r["ended"])
    durations, free = [], base["pre"]
    for r in rows:
        durations.append(r["ended"] - free)
        free = r["ended"]
    # the serial part is measured in every run (it does not depend on N); the model takes
    # the 1-worker run's; per-task orchestration is inside the batch durations
    lpt = model(base["pre"], base["post"], durations, 0.0, 1, source_mb, s3_mb_s, counts)
    out = []
    for row in lpt:
        n = row["workers"]
        out.append({"workers": n, "model_longest_first": row["wall"],
                    "model_in_order": base["pre"] + row["storage"] + in_order(durations, n) + base["post"],
                    "batch_durations": durations if n == 1 else None})
    return out


def s3_read_mb_s(out: Path) -> float:
    from bench_scaling import s3_throughput

    return s3_throughput(out, size_mb=128, rounds=1)["download_mb_s"]


# ---------------------------------------------------------------- main


def main() -> None:
    parser = input_args(__doc__.splitlines()[0])
    parser.set_defaults(seconds=32)
    parser.add_argument("--chunk-seconds", type=float, default=4.0)
    parser.add_argument("--workers", default="1,2,4,8")
    parser.add_argument("--database", choices=["postgres", "sqlite"], default="postgres",
                        help="the Prefect server's: a throwaway PostgreSQL (as in production), or the local "
                             "stack's own server (SQLite)")
    parser.add_argument("--cpu", type=float, default=0.125,
                        help="each transcode worker's share of a core (default: 8 of them take one of the two "
                             "cores; the other is left to the servers and the light stages)")
    args = parser.parse_args()
    why = cgroups_writable()
    if why:
        sys.exit(f"bench_limited: {why}")
    counts = [int(x) for x in args.workers.split(",")]
    if counts[0] != 1:
        sys.exit("bench_limited: --workers must start with 1 (the model is built from that run)")
    out = out_dir(args)
    logs = out / "limited-logs"
    logs.mkdir(exist_ok=True)
    base = make_input(out, args.seconds, args.height)
    warmup = make_input(out, max(counts), 360)
    stack_pids()
    env = stack_env()
    server = PostgresServer(out, logs) if args.database == "postgres" else None
    if server:
        env["PREFECT_API_URL"] = server.url
    os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"]
    from transcoder.settings import get_settings

    block = get_settings().storage_block
    if server:
        server.save_blocks()
    # what prefect.yaml's job environment gives a stage's process: results through storage
    env.update({"PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
                "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": f"s3-bucket/{block}-results",
                "TRANSCODE_STORAGE_BLOCK": block})
    setup = subprocess.run([sys.executable, "-m", "deployments.setup", "--pool", POOL, "--pool-type", "process",
                            "--deploy", "--paused"], env=env, cwd=REPO, capture_output=True, text=True)
    if setup.returncode:
        sys.exit(setup.stdout + setup.stderr)
    s3_mb_s = s3_read_mb_s(out)
    source_mb = base.stat().st_size / 1e6

    workers = Workers(env, logs)
    workers.start("light", LIGHT_QUEUES, 8, {})
    runs, failures = [], []
    try:
        for n in counts:
            print(f"{n} transcode workers at {args.cpu:g} of a core each ...", file=sys.stderr)
            for i in range(n):
                # a work folder of its own: no copy of the source, as on another machine
                workers.start(f"transcode-{i + 1}", ("transcode",), 1,
                              {"TRANSCODE_MAX_WORKERS": "1", "TRANSCODE_DATA_DIR": str(out / "limited-work" / f"w{i}")},
                              cpu=args.cpu)
            workers.wait_ready()
            # a first run pays once per worker for what a warm worker keeps (storage clients,
            # the stage flows, result blocks): a small video of one chunk per worker first
            deployment_run(env, {"source": str(unique_copy(warmup, out)), "renditions": LADDER, "batch_chunks": 1,
                                 "chunk_seconds": 1.0})
            source = unique_copy(base, out)
            try:
                wall, result, run_id = deployment_run(env, {"source": str(source), "renditions": LADDER,
                                                            "batch_chunks": 1, "chunk_seconds": args.chunk_seconds})
            except SystemExit as failed:  # the runs before it still count; this one is recorded
                failures.append({"workers": n, "error": str(failed)})
                print(f"  failed: {failed}", file=sys.stderr)
                break
            finally:
                throttled = workers.stop(keep=1)
            stages = run_stages(run_id)
            runs.append({"workers": n, "wall_from_command": wall, "chunks": result["chunks"],
                         "frames_ok": all(r["frames"] == result["renditions"][0]["frames"]
                                          for r in result["renditions"]),
                         "throttled": throttled, **stages})
            print(f"  {stages['flow_wall']:.1f} s (flow), before the batches {stages['pre']:.1f} s, "
                  f"batches {stages['batches_span']:.1f} s, after {stages['post']:.1f} s", file=sys.stderr)
    finally:
        workers.stop()
        if server:
            forget_made_videos()  # through this server's storage block, before it goes
            server.stop()
    if not runs:
        sys.exit(f"bench_limited: the 1-worker run failed: {failures[0]['error']}")
    predicted = predict(runs[0], counts, source_mb, s3_mb_s)
    for run, p in zip(runs, predicted):
        run["model_longest_first"], run["model_in_order"] = p["model_longest_first"], p["model_in_order"]
        # the parallel part alone: the model's batches with this run's own serial part
        run["model_in_order_own_serial"] = p["model_in_order"] - runs[0]["pre"] - runs[0]["post"] + run["pre"] + run["post"]
    base_wall = runs[0]["flow_wall"]
    for run in runs:
        run["speedup"] = base_wall / run["flow_wall"]
        run["efficiency"] = run["speedup"] / run["workers"]
    results = {"input": {"seconds": args.seconds, "height": args.height, "ladder": LADDER,
                         "chunk_seconds": args.chunk_seconds, "source_mb": source_mb},
               "database": args.database, "cpu_per_worker": args.cpu, "cores": os.cpu_count(), "s3_read_mb_s": s3_mb_s,
               "batch_durations_1_worker": predicted[0]["batch_durations"], "runs": runs, "failed": failures,
               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    path = out / "results-limited.json"
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    report(results, path)
    if failures:
        sys.exit(1)


def report(results: dict, path: Path) -> None:
    print(f"{len(results['runs'][0]['batches'])} batches of one chunk, each transcode worker "
          f"{results['cpu_per_worker']:g} of a core; model built from the 1-worker run")
    print(f"{'workers':>7}  {'flow s':>7}  {'speedup':>7}  {'effic.':>6}  {'model LPT':>13}  {'model order':>13}  "
          f"{'own serial':>13}  {'before':>6}  {'after':>6}")
    for r in results["runs"]:
        print(f"{r['workers']:>7}  {r['flow_wall']:>7.1f}  {r['speedup']:>7.2f}  {r['efficiency']:>6.0%}  "
              f"{r['model_longest_first']:>7.1f} ({(r['model_longest_first'] / r['flow_wall'] - 1):+.0%})"
              f"  {r['model_in_order']:>7.1f} ({(r['model_in_order'] / r['flow_wall'] - 1):+.0%})"
              f"  {r['model_in_order_own_serial']:>7.1f} ({(r['model_in_order_own_serial'] / r['flow_wall'] - 1):+.0%})"
              f"  {r['pre']:>6.1f}  {r['post']:>6.1f}")
    print(f"results: {path}")


if __name__ == "__main__":
    main()
