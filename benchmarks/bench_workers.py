"""Fan-out: one video through the deployments with 1, 2 and 4 transcode workers, against
the single-process mode on the same machine and input; plus Prefect's overhead per task.

    .venv/bin/python benchmarks/bench_workers.py [--seconds 60] [--height 1080] [--workers 1,2,4]

On the local stack (`transcode up`): the pool `bench-process` (type process) and every
deployment of prefect.yaml (deployments/setup.py), one worker for the light queues and N on
`transcode` (each with TRANSCODE_MAX_WORKERS = cores / N, so N workers share the machine's
cores as N machines' worth of replicas would share theirs), `transcode-video/default` started
like a user does (`prefect deployment run`), timed from the command to the run's end.
Every run is cold (a content-unique copy of the input). Overheads: mapped no-op tasks with
the transcode task's persistence (a cache miss writes a result record to S3, a hit reads
it), and a `transcode-batch` run whose chunks are all cached (a flow run on a worker
that does no encoding). Writes OUT/results-workers.json. Loopback traffic only.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (LADDER, REPO, TRANSCODE, input_args, make_input, measure, out_dir,  # noqa: E402
                        stack_pids, unique_copy)

PREFECT = str(Path(sys.executable).parent / "prefect")
POOL = "bench-process"
LIGHT_QUEUES = ("orchestrate", "download", "metadata", "split", "merge")


# Every run cuts the same chunks (8 s, the length the model extrapolates), whatever its
# worker count: left to choose, the engine would cut fewer, longer chunks for fewer slots.
os.environ.setdefault("TRANSCODE_CHUNK_SECONDS", "8")


def stack_env() -> dict[str, str]:
    from transcoder.settings import get_settings

    state = json.loads((get_settings().data_dir / "stack.json").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({"PREFECT_API_URL": state["prefect_url"], "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5",
                "PYTHONPATH": str(REPO)})
    return env


def start_workers(env: dict, n: int, logs: Path) -> list[subprocess.Popen]:
    cores = os.cpu_count() or 2
    procs = []
    specs = [("light", LIGHT_QUEUES, 8, cores)] + [(f"transcode-{i + 1}", ("transcode",), 1, max(1, cores // n))
                                                   for i in range(n)]
    for name, queues, limit, threads in specs:
        args = [PREFECT, "worker", "start", "--pool", POOL, "--type", "process", "--name", name, "--limit", str(limit)]
        for queue in queues:
            args += ["--work-queue", queue]
        wenv = {**env, "TRANSCODE_MAX_WORKERS": str(threads)}
        with open(logs / f"worker-{name}.log", "ab") as log:
            procs.append(subprocess.Popen(args, env=wenv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    time.sleep(8)  # every worker polling before the clock starts
    return procs


def stop_workers(procs: list[subprocess.Popen]) -> None:
    for proc in procs:  # a worker in the background ignores SIGTERM
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait()


def deployment_run(env: dict, parameters: dict) -> tuple[float, dict, str]:
    """`prefect deployment run` and wait for its end: wall from the command to the end, the
    result, the run's id."""
    from prefect.client.orchestration import get_client

    args = [PREFECT, "deployment", "run", "transcode-video/default"]
    for key, value in parameters.items():
        args += ["-p", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    t0 = time.perf_counter()
    proc = subprocess.run(args, env=env, cwd=REPO, capture_output=True, text=True, check=True)
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", proc.stdout).group(1)
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run_id)
            if run.state and run.state.is_final():
                break
            time.sleep(0.5)
        wall = time.perf_counter() - t0
        if not run.state.is_completed():
            sys.exit(f"run {run.name} ended {run.state.name}: {run.state.message}")
        result = run.state.result()
    return wall, json.loads(result.model_dump_json()), run_id


def noop_task_overhead(count: int = 200) -> dict:
    """ms per mapped task in one flow: plain, and with an S3 result record (miss, then hit)."""
    code = f"""
import json, time
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner
from transcoder.storage import get_bucket

@task(cache_policy=NO_CACHE)
def plain(i):
    return i

@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def run(n, stored, key):
    t = plain if not stored else task(name="noop-stored", persist_result=True, result_storage=get_bucket(),
                                      cache_key_fn=lambda ctx, p: f"bench-noop/{{key}}/{{p['i']}}")(lambda i: i)
    t0 = time.perf_counter()
    futures = t.map(range(n))
    [f.result() for f in futures]
    return time.perf_counter() - t0

key = str(time.time())
out = {{"plain": run({count}, False, key), "miss": run({count}, True, key), "hit": run({count}, True, key)}}
print(json.dumps({{k: 1000 * v / {count} for k, v in out.items()}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], env=stack_env(), cwd=REPO, capture_output=True, text=True,
                          check=True)
    return {"tasks": count, **{f"{k}_ms_per_task": round(v, 2) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}}


def main() -> None:
    parser = input_args(__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4")
    args = parser.parse_args()
    out = out_dir(args)
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    base = make_input(out, args.seconds, args.height)
    pids = stack_pids()
    env = stack_env()
    os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"]  # this process reads the runs (prefect not imported yet)
    setup = subprocess.run([sys.executable, "-m", "deployments.setup", "--pool", POOL, "--pool-type", "process",
                            "--deploy", "--paused"], env=env, cwd=REPO, capture_output=True, text=True)
    if setup.returncode:
        sys.exit(setup.stdout + setup.stderr)

    print("single process (transcode run) ...", file=sys.stderr)
    single = measure([TRANSCODE, "run", str(unique_copy(base, out)), "--json", "--renditions", LADDER], pids)
    chunks = json.loads(single.stdout)["chunks"]
    runs = []
    for n in [int(x) for x in args.workers.split(",")]:
        batch = math.ceil(chunks / n)
        print(f"{n} transcode workers, batches of {batch} chunks ...", file=sys.stderr)
        procs = start_workers(env, n, logs)
        try:
            source = unique_copy(base, out)
            wall, result, _ = deployment_run(env, {"source": str(source), "renditions": LADDER, "batch_chunks": batch})
            # the same video again: every chunk cached, so the runs are orchestration only
            cached_wall, cached, _ = deployment_run(env, {"source": str(source), "renditions": LADDER,
                                                          "batch_chunks": batch})
        finally:
            stop_workers(procs)
        runs.append({"workers": n, "batch_chunks": batch, "batches": math.ceil(chunks / batch), "wall": wall,
                     "ratio_to_single": wall / single.wall, "cached_rerun_wall": cached_wall,
                     "cached_rerun_transcoded": cached["transcoded"]})
    print("no-op task overhead ...", file=sys.stderr)
    noop = noop_task_overhead()
    results = {"input": {"seconds": args.seconds, "height": args.height, "ladder": LADDER, "chunks": chunks},
               "cores": os.cpu_count(), "single_process": {"wall": single.wall, "cpu": single.cpu,
                                                           "server_cpu": single.server_cpu},
               "deployments": runs, "noop_tasks": noop, "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "results-workers.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"single process: {single.wall:.1f} s wall, {chunks} chunks, {os.cpu_count()} cores")
    print(f"{'workers':>7}  {'batches':>7}  {'wall s':>7}  {'vs single':>9}  {'all-cached rerun s':>18}")
    for r in runs:
        print(f"{r['workers']:>7}  {r['batches']:>7}  {r['wall']:>7.1f}  {r['ratio_to_single']:>8.2f}x  "
              f"{r['cached_rerun_wall']:>18.1f}")
    print(f"no-op tasks ({noop['tasks']} mapped): plain {noop['plain_ms_per_task']} ms, with S3 result record "
          f"{noop['miss_ms_per_task']} ms (miss), {noop['hit_ms_per_task']} ms (hit) per task")
    print(f"results: {out / 'results-workers.json'}")


if __name__ == "__main__":
    main()
