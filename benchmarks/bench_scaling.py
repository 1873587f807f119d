"""Scaling: where a run's time goes, and a model of 1-64 transcode workers built from it.

    .venv/bin/python benchmarks/bench_scaling.py [--seconds 60] [--height 1080] [--other 180] [--model-seconds 600]

Without a many-core machine, the speedup beyond the cores here is modelled, not claimed.
Measured on this machine, on the local stack, every run cold (a content-unique copy):
  - the run at 1 worker (one core: `taskset -c 0`, TRANSCODE_MAX_WORKERS=1) and at as many
    workers as cores; an `--other` length at as many workers as cores, to split each serial stage
    into a fixed part and a part per second of video (a longer one: the 10-minute model
    extrapolates from these two points, and a 20 s point put the merge's slope 36% low);
  - the check: as many workers as `--check-workers` on the same cores (each gets cores/N of a
    core, as CPU-limited workers would), against what the model says for that;
  - per stage, from the run's task runs on the Prefect server: before the first chunk
    (ingest, hash, probe, plan), each chunk's encode (the first rung's task encodes every
    rung of its chunk), after the last chunk (assemble, HLS, thumbnails, report, player);
    the orchestration gap per task; S3 throughput of the local SeaweedFS.
Model, for N workers of one core each and a video of L seconds:
  T(N) = pre(L) + upload(L) + storage(N) + makespan(chunk encodes over N, longest first) + gaps + post(L)
  upload(L) = the original into storage at the speed one upload reaches alone (mode
  "deployments": every transcode worker reads it from there; the measured runs, mode "local",
  encode from the ingesting machine's copy while it uploads, so their `pre` has none);
  storage(N) = what the workers' range reads cost beyond the encodes (or, with whole downloads,
  the source downloaded once by each of min(N, chunks) workers) through one S3 server; segment
  uploads and the assembly's transfers are measured inside the chunk encodes and `post`.
  Speedup S(N) = T(1) / T(N), efficiency S(N) / N.
Writes OUT/results-scaling.json. Loopback only.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (LADDER, TRANSCODE, input_args, make_input, measure_call, out_dir, stack_pids,  # noqa: E402
                        unique_copy)

from transcoder.plan import DEPLOYMENT_SLOTS, auto_chunk_seconds  # noqa: E402
from transcoder.settings import get_settings  # noqa: E402

COUNTS = (1, 2, 4, 8, 16, 32, 64)


# Every run cuts the same chunks (8 s, the length the model extrapolates), whatever its
# worker count: left to choose, the engine would cut fewer, longer chunks for fewer slots.
os.environ.setdefault("TRANSCODE_CHUNK_SECONDS", "8")


# ---------------------------------------------------------------- one measured run


def engine_env(workers: int) -> dict[str, str]:
    return {**os.environ, "TRANSCODE_MAX_WORKERS": str(workers)}


def timed_run(source: Path, pids: list[int], workers: int, cpus: str | None = None) -> dict:
    argv = [TRANSCODE, "run", str(source), "--json", "--renditions", LADDER, "--no-reuse"]
    if cpus:
        argv = ["taskset", "-c", cpus] + argv
    env = engine_env(workers)

    def run() -> str:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"engine failed: {proc.stderr[-2000:]}")
        return proc.stdout

    m = measure_call(run, pids)
    result = json.loads(m.stdout)
    return {"workers": workers, "cpus": cpus, "wall": m.wall, "cpu": m.cpu, "server_cpu": m.server_cpu,
            "chunks": result["chunks"], "stages": stages_of_last_run(), "video_id": result["video_id"]}


def stages_of_last_run() -> dict:
    """Per-stage times of the newest completed `transcode-video` run, from its task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, \
        FlowRunFilterStateName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_runs(flow_run_filter=FlowRunFilter(state=FlowRunFilterState(
            name=FlowRunFilterStateName(any_=["Completed"]))), sort=FlowRunSort.END_TIME_DESC, limit=1)[0]
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
    tasks = [t for t in tasks if t.start_time and t.end_time]
    t0, t1 = run.start_time, run.end_time
    first_rung = LADDER.split(",")[0]
    encodes = [t for t in tasks if t.name.startswith(f"transcode-{first_rung}-")]
    chunk_tasks = [t for t in tasks if t.name.startswith("transcode-")]
    first = min(t.start_time for t in chunk_tasks)
    last = max(t.end_time for t in chunk_tasks)
    busy = sorted((t.start_time, t.end_time) for t in chunk_tasks)
    return {
        "flow_wall": (t1 - t0).total_seconds(),
        "pre": (first - t0).total_seconds(),  # ingest, hash, probe, plan
        "transcode": (last - first).total_seconds(),
        "post": (t1 - last).total_seconds(),  # assemble, HLS, thumbnails, report, player, cleanup
        "chunk_encodes": sorted((t.end_time - t.start_time).total_seconds() for t in encodes),
        "other_rung_tasks_mean": _mean([(t.end_time - t.start_time).total_seconds() for t in chunk_tasks
                                        if t not in encodes]),
        "tasks": len(chunk_tasks),
        "task_gap_mean": _mean([max(0.0, (b[0] - a[1]).total_seconds()) for a, b in zip(busy, busy[1:])]),
        "by_task": {name: round(sum((t.end_time - t.start_time).total_seconds() for t in tasks
                                    if t.name.split("-")[0] == name), 3)
                    for name in sorted({t.name.split("-")[0] for t in tasks})},
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# ---------------------------------------------------------------- storage


def s3_throughput(out: Path, size_mb: int = 256, rounds: int = 3) -> dict:
    """MB/s of one upload and one download of a `size_mb` file through the stack's S3 (boto3),
    the median of `rounds` (one round alone varied from 115 to 171 MB/s up on one day); and
    of hashing it (sha256, as the ingest does)."""
    from transcoder.ingest import sha256_file
    from transcoder.stack import LocalStack
    from transcoder.storage import DirectBucket, Storage

    settings = get_settings()
    stack = LocalStack(settings)
    key, secret = stack.credentials()
    storage = Storage(DirectBucket(stack.state().s3_endpoint, key, secret, settings.bucket, settings.s3_region))
    path = out / "s3-probe.bin"
    with open(path, "wb") as f:
        f.write(os.urandom(size_mb << 20))
    ups, downs = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        storage.upload(path, "bench/s3-probe.bin")
        ups.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        storage.download("bench/s3-probe.bin", out / "s3-probe.back")
        downs.append(time.perf_counter() - t0)
        storage.delete("bench/s3-probe.bin")
        (out / "s3-probe.back").unlink()
    t0 = time.perf_counter()
    sha256_file(path)
    hashed = time.perf_counter() - t0
    path.unlink()
    up, down = sorted(ups)[rounds // 2], sorted(downs)[rounds // 2]
    return {"upload_mb_s": size_mb / up, "download_mb_s": size_mb / down,
            "upload_rounds_mb_s": [round(size_mb / t, 1) for t in ups], "hash_mb_s": size_mb / hashed}


# ---------------------------------------------------------------- model


def makespan(durations: list[float], workers: int) -> float:
    """Longest first onto the least loaded worker (what the flow's submit order does)."""
    loads = [0.0] * workers
    for d in sorted(durations, reverse=True):
        heapq.heappush(loads, heapq.heappop(loads) + d)
    return max(loads)


# What all chunks' range reads fetch in all, over the source's size: each chunk reads its own
# bytes plus what the connections had buffered when ffmpeg stopped (measured on the 60 s
# 1080p input, 8 s chunks starting on source keyframes: 506 MB for 473 MB; docs/performance.md).
RANGE_READ_FACTOR = 1.07


def model(pre: float, post: float, encodes: list[float], per_task: float, tasks_per_chunk: int, source_mb: float,
          s3_mb_s: float, counts=COUNTS, fetch: str = "ranges", upload: float = 0.0) -> list[dict]:
    """Segment uploads are in the chunk encodes' times and the assembly's transfers in `post`
    (both measured against the S3 server); what the single-machine run does not show is the
    source's upload and the workers fetching it. `upload`: the original's upload, which
    workers on other machines wait for (mode "local" encodes from its own copy meanwhile, so
    the measured runs have none; mode "deployments" uploads first, on the download worker).
    `fetch="ranges"` (the engine now): each chunk's ffmpeg reads its own byte ranges while it
    decodes, so the source crosses the S3 server about once in all (`RANGE_READ_FACTOR`),
    overlapped with encoding: it costs time only where the server cannot keep up. `fetch="whole"` (`TRANSCODE_RANGE_READS=download`, and what "auto" does
    for sources with sparse keyframes): each worker downloads the whole source before its first chunk."""
    rows = []
    for n in counts:
        transcode = makespan(encodes, n)
        # the tasks that find their rung already encoded, and the scheduling gap of every task
        orchestration = per_task * math.ceil(len(encodes) * tasks_per_chunk / n)
        if n == 1:  # one worker, on the machine that ingested the source: its local copy
            storage = 0.0
        elif fetch == "whole":  # each worker downloads it once; one S3 server serves all
            storage = min(n, len(encodes)) * source_mb / s3_mb_s
        else:
            storage = max(0.0, RANGE_READ_FACTOR * source_mb / s3_mb_s - transcode)
        total = pre + upload + storage + transcode + orchestration + post
        rows.append({"workers": n, "wall": total, "pre": pre + upload, "storage": storage, "transcode": transcode,
                     "orchestration": orchestration, "post": post})
    base = rows[0]["wall"]
    for row in rows:
        row["speedup"] = base / row["wall"]
        row["efficiency"] = row["speedup"] / row["workers"]
    return rows


def regroup(encodes: list[float], measured_seconds: float, total_seconds: float, chunk_seconds: float) -> list[float]:
    """Encode times of `chunk_seconds` chunks over a `total_seconds` video, from encodes measured
    on `measured_seconds` chunks (repeated along the video, as `at` does), each spread evenly
    over its seconds. Every measured encode carries one chunk's fixed costs (an ffmpeg and four
    x264 start-ups, four uploads), so chunks longer than measured come out a little slow."""
    count = max(1, round(total_seconds / chunk_seconds))
    times = []
    for k in range(count):
        start, end = total_seconds * k / count, total_seconds * (k + 1) / count
        piece, spent = int(start // measured_seconds), 0.0
        while piece * measured_seconds < end:  # each measured piece, by the share of it in this chunk
            overlap = min(end, (piece + 1) * measured_seconds) - max(start, piece * measured_seconds)
            spent += encodes[piece % len(encodes)] * overlap / measured_seconds
            piece += 1
        times.append(spent)
    return times


def linear(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """(fixed, per second) through two (seconds, value) points; never negative."""
    (s1, v1), (s2, v2) = a, b
    per = max(0.0, (v2 - v1) / (s2 - s1))
    return max(0.0, v1 - per * s1), per


def analyse(runs: dict, s3: dict, inp: dict, cores: int, check_workers: int, model_seconds: float) -> dict:
    """The fit and the model from the measured runs (`python bench_scaling.py --analyse FILE` redoes it)."""
    s3_mb_s = s3["download_mb_s"]  # workers read the source; one S3 server serves them all
    one, full, check = runs["one-core"], runs["all-cores"], runs["check"]
    other = runs.get("other") or runs["short"]  # results files before 2026-11-29's second session
    other_seconds = inp.get("other_seconds", inp.get("short_seconds"))
    # A worker is a machine's core of its own: a chunk's encode as the one-core run measured it
    # (alone on CPU 0). The runs on all cores are the checks: `cores` workers side by side on
    # one machine share its memory bandwidth and caches, which separate machines do not.
    encodes = one["stages"]["chunk_encodes"]
    tasks_per_chunk = len(LADDER.split(","))
    # per task: the gap between tasks plus, averaged over all tasks, the sibling tasks' own time
    gap = full["stages"]["task_gap_mean"] + full["stages"]["other_rung_tasks_mean"] * (tasks_per_chunk - 1) / tasks_per_chunk
    source_mb = inp["source_mb"]
    pre = linear((other_seconds, other["stages"]["pre"]), (inp["seconds"], full["stages"]["pre"]))
    post = linear((other_seconds, other["stages"]["post"]), (inp["seconds"], full["stages"]["post"]))

    # `transcode run` hashes a new file beside importing Prefect, so the measured runs' `pre`
    # has no hash in it; the download worker of mode "deployments" hashes before its upload
    hash_mb_s = s3.get("hash_mb_s", float("inf"))

    def at(seconds: float, counts=COUNTS, fetch: str = "ranges", local: bool = False,
           chunk_seconds: float | None = None) -> list[dict]:
        """`local`: as the measured runs (mode "local": no wait for the upload); else the
        workers of mode "deployments", all waiting for the original in storage: hashed, then
        uploaded at the speed one upload reaches alone against this S3 server. `chunk_seconds`:
        chunks of another length than the measured runs' (`regroup`)."""
        scale = seconds / inp["seconds"]  # chunks of the same length, in proportion to the video
        if chunk_seconds:
            modelled = regroup(encodes, inp["seconds"] / len(encodes), seconds, chunk_seconds)
        else:
            modelled = [encodes[i % len(encodes)] for i in range(max(1, round(len(encodes) * scale)))]
        return model(pre[0] + pre[1] * seconds, post[0] + post[1] * seconds, modelled, gap, tasks_per_chunk,
                     source_mb * scale, s3_mb_s, counts, fetch,
                     upload=0.0 if local else source_mb * scale * (1 / s3["upload_mb_s"] + 1 / hash_mb_s))

    measured_model = at(inp["seconds"], (1, cores, check_workers), local=True)
    default_chunks = auto_chunk_seconds(model_seconds, DEPLOYMENT_SLOTS)
    # the check: N workers sharing `cores` cores get through the work as fast as the cores do,
    # and no faster than the longest chunk alone
    check_wall = (pre[0] + pre[1] * inp["seconds"] + max(sum(encodes) / cores, max(encodes))
                  + gap * math.ceil(len(encodes) * tasks_per_chunk / check_workers) + post[0] + post[1] * inp["seconds"])
    check_model = {"wall": check_wall}
    return {
        "input": inp,
        "cores": cores,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "runs": runs,
        "s3": s3,
        "fit": {"pre_fixed": pre[0], "pre_per_second": pre[1], "post_fixed": post[0], "post_per_second": post[1],
                "per_task": gap, "chunk_encode_mean": _mean(encodes)},
        "check": {
            "one_core": {"measured_flow": one["stages"]["flow_wall"], "model": measured_model[0]["wall"]},
            "all_cores": {"measured_flow": full["stages"]["flow_wall"], "model": measured_model[1]["wall"]},
            f"{check_workers}_workers_on_{cores}_cores": {"measured_flow": check["stages"]["flow_wall"],
                                                               "model": check_model["wall"]},
        },
        # as the engine runs by default: workers read their chunks' bytes (TRANSCODE_RANGE_READS=auto)
        "model": {f"{inp['seconds']:g}s": at(inp["seconds"]), f"{model_seconds:g}s": at(model_seconds)},
        # the chunk length mode "deployments" chooses for this length (plan.auto_chunk_seconds
        # for its 16 slots when TRANSCODE_PARALLEL_CHUNKS is unset); the runs above cut 8 s chunks
        "model_default_chunks": {f"{model_seconds:g}s, {default_chunks:.2f} s chunks": at(
            model_seconds, chunk_seconds=default_chunks)},
        # each worker downloading the whole source (RANGE_READS=download, or sparse keyframes)
        "model_whole_downloads": {f"{model_seconds:g}s": at(model_seconds, fetch="whole")},
    }


# ---------------------------------------------------------------- main


def main() -> None:
    parser = input_args(__doc__.splitlines()[0])
    parser.add_argument("--other", type=float, default=180,
                        help="a second length, for fixed vs per-second costs (longer extrapolates better)")
    parser.add_argument("--check-workers", type=int, default=8)
    parser.add_argument("--model-seconds", type=float, default=600, help="the video length to model")
    parser.add_argument("--analyse", type=Path, help="run nothing: redo the fit and model of a results file")
    args = parser.parse_args()
    if args.analyse:
        saved = json.loads(args.analyse.read_text())
        results = {**saved, **analyse(saved["runs"], saved["s3"], saved["input"], saved["cores"], args.check_workers,
                                      args.model_seconds),
                   "date": saved["date"], "analysed": time.strftime("%Y-%m-%d %H:%M:%S")}  # measured, modelled
        args.analyse.write_text(json.dumps(results, indent=2, default=str) + "\n")
        report(results, args.analyse)
        return
    out = out_dir(args) / "scaling"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    cores = os.cpu_count() or 1
    pids = stack_pids()
    base = make_input(out.parent, args.seconds, args.height)
    other = make_input(out.parent, args.other, args.height)

    runs = {}
    for label, src, workers, cpus in (("one-core", base, 1, "0"), ("all-cores", base, cores, None),
                                      ("check", base, args.check_workers, None), ("other", other, cores, None)):
        print(f"{label}: {workers} workers{' on CPU ' + cpus if cpus else ''} ...", file=sys.stderr)
        runs[label] = timed_run(unique_copy(src, out), pids, workers, cpus)
    s3 = s3_throughput(out)
    results = analyse(runs, s3, {"seconds": args.seconds, "height": args.height, "other_seconds": args.other,
                                 "ladder": LADDER, "source_mb": base.stat().st_size / 2**20},
                      cores, args.check_workers, args.model_seconds)
    results["benchmark_seconds"] = time.perf_counter() - started
    (out.parent / "results-scaling.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    report(results, out.parent / "results-scaling.json")


def report(results: dict, path: Path) -> None:
    inp, s3 = results["input"], results["s3"]
    print(f"\nmeasured ({results['cores']} cores, {inp['seconds']:g} s {inp['height']}p): flow wall, model")
    for name, row in results["check"].items():
        print(f"  {name:<22} {row['measured_flow']:>8.1f} s  model {row['model']:>8.1f} s "
              f"({100 * (row['model'] / row['measured_flow'] - 1):+.1f}%)")
    f = results["fit"]
    print(f"  pre {f['pre_fixed']:.2f} s + {f['pre_per_second']:.3f} s per video second; post {f['post_fixed']:.2f} s"
          f" + {f['post_per_second']:.3f}; chunk encode {f['chunk_encode_mean']:.1f} s; orchestration per task "
          f"{1000 * f['per_task']:.0f} ms; S3 {s3['upload_mb_s']:.0f} MB/s up, {s3['download_mb_s']:.0f} down")
    for length, rows in [*results["model"].items(), *results.get("model_default_chunks", {}).items(),
                         *((f"{k}, each worker downloading the whole source", v)
                           for k, v in results.get("model_whole_downloads", {}).items())]:
        print(f"\nmodel, {length} input: workers, wall s, speedup, efficiency | pre, storage, transcode, "
              f"orchestration, post (s)")
        for r in rows:
            print(f"  {r['workers']:>3} {r['wall']:>9.1f} {r['speedup']:>6.2f} {100 * r['efficiency']:>5.0f}% | "
                  f"{r['pre']:.1f} {r['storage']:.1f} {r['transcode']:.1f} {r['orchestration']:.1f} {r['post']:.1f}")
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
