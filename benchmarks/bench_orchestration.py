"""Orchestration: Prefect's cost per chunk task and per subflow run, and the largest run.

    .venv/bin/python benchmarks/bench_orchestration.py [--sizes 1000,4000,16000]

On the local stack's Prefect server (SQLite), in a fresh Python like a worker's:
  - per task: mapped no-op tasks in one flow (4 threads, as the transcode map runs), plain and
    with the chunk tasks' persistence (a cache miss writes a result record to S3, a hit reads it);
  - per subflow: a no-op flow called from a flow (what a stage costs as its own flow run);
  - the largest run: one flow with N no-op tasks (a video of N/4 chunks x 4 rungs); after
    it returns, the server is asked how many of its task runs it holds as Completed (waiting
    up to 60 s for the events to land). A run "handles" N when none is missing.
Writes OUT/results-orchestration.json. Loopback only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import REPO, out_dir, stack_pids  # noqa: E402
from bench_workers import noop_task_overhead, stack_env  # noqa: E402

SCRIPT = """
import json, os, sys, time
import httpx
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

@task(cache_policy=NO_CACHE)
def noop(i):
    return i

@flow
def child():
    return 1

@flow
def parent(n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        child()
        times.append(time.perf_counter() - t0)
    return times

@flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
def many(n):
    t0 = time.perf_counter()
    [f.result() for f in noop.map(range(n))]
    return time.perf_counter() - t0, str(flow_run.id)

def completed(run_id):
    body = {"flow_runs": {"id": {"any_": [run_id]}}, "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}}
    return httpx.post(os.environ["PREFECT_API_URL"] + "/task_runs/count", json=body, timeout=30).json()

out = {"subflow_seconds": parent(5), "runs": []}
for n in [int(x) for x in sys.argv[1].split(",")]:
    t0 = time.perf_counter()
    seconds, run_id = many(n)
    flow_seconds = time.perf_counter() - t0
    waited = 0.0
    seen = completed(run_id)
    while seen < n and waited < 60:
        time.sleep(2)
        waited += 2
        seen = completed(run_id)
    out["runs"].append({"tasks": n, "map_seconds": seconds, "flow_seconds": flow_seconds, "completed_on_server": seen,
                        "waited_for_events": waited, "ms_per_task": 1000 * seconds / n})
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,4000,16000")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    out = out_dir(args)
    stack_pids()
    print("per task ...", file=sys.stderr)
    per_task = noop_task_overhead(200)
    print(f"subflows, and runs of {args.sizes} tasks ...", file=sys.stderr)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, args.sizes], env=stack_env(), cwd=REPO, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        sys.exit(f"failed: {proc.stderr[-3000:]}")
    found = json.loads(proc.stdout.splitlines()[-1])
    subflows = found["subflow_seconds"]
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "per_task": per_task,
               "subflow_seconds": subflows, "subflow_mean": sum(subflows) / len(subflows), "runs": found["runs"]}
    (out / "results-orchestration.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nper task: plain {per_task['plain_ms_per_task']:.1f} ms, with an S3 result record "
          f"{per_task['miss_ms_per_task']:.1f} ms (miss) / {per_task['hit_ms_per_task']:.1f} ms (hit); "
          f"per subflow run: {results['subflow_mean']:.2f} s")
    for r in results["runs"]:
        print(f"  {r['tasks']:>6} tasks: {r['ms_per_task']:.1f} ms per task, {r['flow_seconds']:.0f} s; "
              f"completed on the server {r['completed_on_server']} (waited {r['waited_for_events']:.0f} s)")
    print(f"results: {out / 'results-orchestration.json'}")


if __name__ == "__main__":
    main()
