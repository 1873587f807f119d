"""Load: N small videos through the ingest API in one burst, on a stack of its own.

    .venv/bin/python benchmarks/load.py [--videos 1000] [--backlog 200] [--workers 2] [--limit 3]
                                        [--out DIR] [--plot PNG]

What runs, all on loopback and all started here (and stopped at the end):
PostgreSQL (a temporary cluster, benchmarks/postgres.py) under the Prefect server,
SeaweedFS with auth, the ingest API (`python -m ingest_api`, TRANSCODE_API_RUN_MODE=local,
TRANSCODE_API_MAX_BACKLOG=--backlog), `transcode-video` deployed with the trigger of
prefect.yaml on a pool that `--workers` warm workers serve (`flows/warm_worker.py`, each
`--limit` runs at once, at nice 19: on one machine they stand in for worker machines, so
the API and the servers keep their share of the cores).

The burst: every video (a 1.5 s 320x240 clip with sound, each with its own title, so
its bytes, hashes and outputs are its own) is POSTed to /uploads at once by 16 clients.
A 429 is waited out (its Retry-After) and the same video sent again: so every video is
eventually accepted, and none is sent twice after a 202. While the backlog drains a
sampler asks the API for a random video's status and for /metrics twice a second
(latency), and records the backlog, the runs completed, and memory (RSS) and CPU of each
part (process trees: ffmpeg counts with its worker).

At the end: every accepted request has exactly one run and it completed, each with its
own video; the API says so too. Writes DIR/results-load.json (figures and the curves) and,
with --plot, a PNG. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from bench_core import proc_table, tree_usage  # noqa: E402
from postgres import Postgres  # noqa: E402

from transcoder.stack import _stop, free_port, start_prefect_server, start_seaweed  # noqa: E402

TITLE = b"load-000000"
POOL = "load"
CLIENTS = 16
SAMPLE_SECONDS = 0.5
PAGE = 200


# ---- processes ---------------------------------------------------------------------------------

class Parts:
    """The processes of the stack, by part, for memory and CPU."""

    def __init__(self):
        self.roots: dict[str, list[int]] = {}
        self.cpu_base: dict[str, float] = {}

    def add(self, part: str, pid: int) -> None:
        self.roots.setdefault(part, []).append(pid)

    def usage(self) -> dict[str, tuple[int, float]]:
        table = proc_table()
        return {part: tree_usage(table, pids) for part, pids in self.roots.items()}


# ---- the stack ----------------------------------------------------------------------------------

class Stack:
    def __init__(self, root: Path, args: argparse.Namespace):
        self.root, self.args = root, args
        self.procs: list[subprocess.Popen] = []
        self.parts = Parts()
        self.pg: Postgres | None = None
        self.token = secrets.token_urlsafe(24)

    def start(self) -> None:
        logs = self.root / "logs"
        logs.mkdir(parents=True)
        taken: set[int] = set()
        self.pg = Postgres(free_port(taken))
        db_url = self.pg.start()
        for pid in self.pg.pids():
            self.parts.add("postgres", pid)
        key, secret = "load-" + secrets.token_hex(6), secrets.token_urlsafe(30)
        weed, self.s3_endpoint = start_seaweed(self.root / "seaweedfs", key, secret, logs / "seaweedfs.log",
                                               bucket="videos")
        self.procs.append(weed)
        self.parts.add("seaweedfs", weed.pid)
        server, self.prefect_url = start_prefect_server(
            self.root / "prefect", free_port(taken), logs / "prefect-server.log",
            extra_env={"PREFECT_API_DATABASE_CONNECTION_URL": db_url})
        self.procs.append(server)
        self.parts.add("prefect-server", server.pid)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "TRANSCODE_"))}
        self.env.update({"PREFECT_API_URL": self.prefect_url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                         "TRANSCODE_DATA_DIR": str(self.root / "data"), "PYTHONPATH": str(REPO)})
        os.environ.update(self.env)  # for the setup below, before prefect is first imported here
        self.deployment_id = self._deploy(key, secret)

        api_port = free_port(taken)
        api_env = {**self.env, "TRANSCODE_API_TOKEN": self.token, "TRANSCODE_API_RUN_MODE": "local",
                   "TRANSCODE_API_MAX_BACKLOG": str(self.args.backlog), "TRANSCODE_API_RETRY_AFTER":
                   str(self.args.retry_after)}
        api = self._spawn("api", [sys.executable, "-m", "ingest_api", "--host", "127.0.0.1", "--port", str(api_port),
                                  "--log-level", "warning"], api_env, logs / "api.log")
        self.api_url = f"http://127.0.0.1:{api_port}"
        for i in range(self.args.workers):
            self._spawn("workers", ["nice", "-n", "19", sys.executable, "-m", "flows.warm_worker", "--pool", POOL,
                                    "--limit", str(self.args.limit)], self.env, logs / f"worker-{i + 1}.log")
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if api.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the ingest API did not start; see {logs / 'api.log'}")
            time.sleep(0.3)

    def _spawn(self, part: str, argv: list[str], env: dict, log_path: Path) -> subprocess.Popen:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        self.parts.add(part, proc.pid)
        return proc

    def _deploy(self, key: str, secret: str):
        """Blocks, the pool, and transcode-video with prefect.yaml's trigger."""
        import yaml
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.actions import WorkPoolCreate
        from prefect.events import DeploymentEventTrigger

        from flows.transcode import transcode_video
        from transcoder.settings import get_settings
        from transcoder.stack import save_blocks

        save_blocks(self.s3_endpoint, key, secret, get_settings())
        with get_client(sync_client=True) as client:
            client.create_work_pool(WorkPoolCreate(name=POOL, type="process"))
        project = yaml.safe_load((REPO / "prefect.yaml").read_text())
        spec = next(d for d in project["deployments"] if d["entrypoint"] == "flows/transcode.py:transcode_video")
        triggers = [DeploymentEventTrigger(**t) for t in spec["triggers"]]
        return transcode_video.to_deployment(name="load", triggers=triggers, work_pool_name=POOL).apply()

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers and the API first, the servers last
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except OSError:
                    pass
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _stop(proc.pid, grace=1)
        if self.pg:
            self.pg.stop()


# ---- inputs ---------------------------------------------------------------------------------------

def base_clip(path: Path) -> bytes:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1.5",
                    "-f", "lavfi", "-i", "sine=frequency=440:duration=1.5", "-c:v", "libx264", "-preset", "veryfast",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", "-metadata", f"title={TITLE.decode()}",
                    "-movflags", "+faststart", str(path)], check=True, timeout=120)
    data = path.read_bytes()
    if data.count(TITLE) != 1:
        raise RuntimeError(f"the title appears {data.count(TITLE)} times in the clip, not once")
    return data


def clip(base: bytes, i: int) -> bytes:
    """The base clip with its own title: other bytes, so another video to the engine."""
    return base.replace(TITLE, f"load-{i:06d}".encode())


# ---- the run ----------------------------------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []   # accepted: {"video", "request_id", "t"}
        self.calls: list[tuple[float, str, float, int]] = []  # (t, route, ms, status)
        self.refused = 0
        self.stale = 0  # status answers from the API's last known state (the Prefect server was slow)
        self.tries: dict[int, int] = {}
        self.errors: list[str] = []

    def call(self, t: float, route: str, ms: float, status: int) -> None:
        with self.lock:
            self.calls.append((t, route, ms, status))


def submit_all(http, base: bytes, n: int, rec: Recorder, t0: float) -> None:
    def submit(i: int) -> None:
        body = clip(base, i)
        for attempt in range(1, 1000):
            started = time.monotonic()
            try:
                resp = http.post("/uploads", params={"filename": f"load-{i:06d}.mp4"}, content=body,
                                 headers={"Content-Type": "video/mp4"})
            except Exception as exc:  # a dropped connection: the video was not accepted, send it again
                rec.call(started - t0, "upload", (time.monotonic() - started) * 1000, 0)
                with rec.lock:
                    rec.errors.append(f"video {i}: {type(exc).__name__}: {exc}")
                time.sleep(1)
                continue
            rec.call(started - t0, "upload", (time.monotonic() - started) * 1000, resp.status_code)
            if resp.status_code == 202:
                with rec.lock:
                    rec.requests.append({"video": i, "request_id": resp.json()["request_id"],
                                         "t": time.monotonic() - t0})
                    rec.tries[i] = attempt
                return
            if resp.status_code == 429:
                with rec.lock:
                    rec.refused += 1
                time.sleep(float(resp.headers.get("retry-after", "5")))
                continue
            with rec.lock:
                rec.errors.append(f"video {i}: HTTP {resp.status_code}: {resp.text[:200]}")
            return

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(submit, range(n)))


def count_runs(http_prefect, deployment_id, states: list[str]) -> int:
    body = {"deployments": {"id": {"any_": [str(deployment_id)]}},
            "flow_runs": {"state": {"type": {"any_": states}}}}
    return http_prefect.post("/flow_runs/count", json=body).json()


def all_runs(http_prefect, deployment_id) -> list[dict]:
    runs, offset = [], 0
    while True:
        page = http_prefect.post("/flow_runs/filter", json={
            "deployments": {"id": {"any_": [str(deployment_id)]}}, "limit": PAGE, "offset": offset}).json()
        runs += page
        if len(page) < PAGE:
            return runs
        offset += PAGE


def backlog_metric(text: str) -> int | None:
    for line in text.splitlines():
        if line.startswith("transcode_backlog "):
            return int(line.split()[1])
    return None


def sample(http, http_prefect, stack: Stack, rec: Recorder, t0: float, n: int, done: threading.Event,
           samples: list[dict]) -> None:
    final = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
    while not done.is_set():
        t = time.monotonic() - t0
        with rec.lock:
            accepted = [r["request_id"] for r in rec.requests]
        point: dict = {"t": round(t, 2), "accepted": len(accepted)}
        for route, path in (("status", f"/videos/{random.choice(accepted)}" if accepted else None),
                            ("metrics", "/metrics")):
            if path is None:
                continue
            started = time.monotonic()
            try:
                resp = http.get(path)
                status, text = resp.status_code, resp.text
            except Exception as exc:
                status, text = 0, ""
                rec.errors.append(f"sampler {route}: {exc}")
            rec.call(started - t0, route, (time.monotonic() - started) * 1000, status)
            if route == "metrics":
                point["backlog"] = backlog_metric(text)
            elif status == 200 and '"stale":true' in text.replace(" ", ""):
                rec.stale += 1
        try:
            point["completed"] = count_runs(http_prefect, stack.deployment_id, ["COMPLETED"])
            point["final"] = count_runs(http_prefect, stack.deployment_id, final)
        except Exception as exc:
            rec.errors.append(f"sampler prefect: {exc}")
        for part, (rss, cpu) in stack.parts.usage().items():
            point[f"rss_mb.{part}"] = round(rss / 2**20, 1)
            point[f"cpu_s.{part}"] = round(cpu, 1)
        samples.append(point)
        if point.get("final") == n and len(accepted) == n:
            done.set()
            return
        time.sleep(SAMPLE_SECONDS)


def final_status(http, request_id: str, timeout: float = 60) -> dict:
    """The API's full answer (not a quick `stale` one) for a request."""
    deadline = time.monotonic() + timeout
    while True:
        doc = http.get(f"/videos/{request_id}").json()
        if not doc.get("stale") or time.monotonic() > deadline:
            return doc
        time.sleep(0.2)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q / 100 * len(values)))], 1)


def latency(calls: list, routes: tuple[str, ...], since: float, until: float) -> dict:
    ms = [c[2] for c in calls if c[1] in routes and since <= c[0] <= until]
    return {"count": len(ms), "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95),
            "p99_ms": percentile(ms, 99), "max_ms": round(max(ms), 1) if ms else None}


def run(args: argparse.Namespace) -> dict:
    import httpx

    root = Path(tempfile.mkdtemp(prefix="transcode-load-"))
    stack = Stack(root, args)
    try:
        started = time.monotonic()
        stack.start()
        setup_s = time.monotonic() - started
        base = base_clip(root / "base.mp4")
        rec, samples, done = Recorder(), [], threading.Event()
        limits = httpx.Limits(max_connections=CLIENTS + 4)
        with httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.token}"}, timeout=120,
                          limits=limits) as http, \
                httpx.Client(base_url=stack.prefect_url, timeout=60) as http_prefect, \
                httpx.Client(base_url=stack.api_url, headers={"Authorization": f"Bearer {stack.token}"},
                             timeout=60) as http_sampler:
            t0 = time.monotonic()
            cpu0 = {part: cpu for part, (_, cpu) in stack.parts.usage().items()}
            sampler = threading.Thread(target=sample, args=(http_sampler, http_prefect, stack, rec, t0, args.videos,
                                                            done, samples), daemon=True)
            sampler.start()
            submit_all(http, base, args.videos, rec, t0)
            submitted_s = time.monotonic() - t0
            print(f"load: {len(rec.requests)} accepted in {submitted_s:.0f} s ({rec.refused} answers 429); "
                  "draining", flush=True)
            sampler.join(timeout=args.timeout)
            done.set()
            drained_s = time.monotonic() - t0
            usage = stack.parts.usage()
            runs = all_runs(http_prefect, stack.deployment_id)
            statuses = {req["request_id"]: final_status(http, req["request_id"]) for req in rec.requests}
        return report(args, rec, samples, runs, statuses, usage, cpu0, setup_s, submitted_s, drained_s)
    finally:
        stack.stop()
        if args.keep:
            print(f"load: logs kept in {root / 'logs'}")
        else:
            subprocess.run(["rm", "-rf", str(root)], check=False)


def report(args, rec: Recorder, samples, runs, statuses, usage, cpu0, setup_s, submitted_s, drained_s) -> dict:
    by_request: dict[str, list[dict]] = {}
    for r in runs:
        by_request.setdefault(str(r["parameters"].get("request_id")), []).append(r)
    accepted = {req["request_id"] for req in rec.requests}
    completed = [rid for rid in accepted if len(by_request.get(rid, [])) == 1
                 and by_request[rid][0]["state"]["type"] == "COMPLETED"]
    video_ids = {s.get("video_id") for s in statuses.values()}
    api_completed = sum(1 for s in statuses.values() if s.get("state") == "Completed" and s.get("outputs"))
    last_accept = max((req["t"] for req in rec.requests), default=0.0)
    checks = {
        "every video accepted": len(accepted) == args.videos,
        "no request failed but with 429": not [e for e in rec.errors if "HTTP" in e],
        "every accepted request completed": len(completed) == len(accepted),
        "one run per request": all(len(v) == 1 for v in by_request.values()) and set(by_request) == accepted,
        "each its own video": len(video_ids) == len(accepted) and None not in video_ids,
        "the API says completed, with outputs": api_completed == len(accepted),
    }
    cpu = {part: round(c - cpu0.get(part, 0.0), 1) for part, (_, c) in usage.items()}
    peaks = {}
    for point in samples:
        for k, v in point.items():
            if k.startswith("rss_mb."):
                peaks[k[7:]] = max(peaks.get(k[7:], 0), v)
    # the backlog drains from the burst on: every call from then to the last completion
    drain = latency(rec.calls, ("status", "metrics"), 0, drained_s)
    result = {
        "videos": args.videos, "backlog_limit": args.backlog, "retry_after_s": args.retry_after,
        "workers": args.workers, "runs_per_worker": args.limit, "cores": os.cpu_count(),
        "accepted": len(accepted), "answers_429": rec.refused, "max_tries": max(rec.tries.values(), default=0),
        "completed": len(completed), "runs": len(runs), "errors": rec.errors[:20],
        "setup_s": round(setup_s, 1), "submitted_s": round(submitted_s, 1), "drained_s": round(drained_s, 1),
        "videos_per_min": round(len(completed) / drained_s * 60, 1),
        "backlog_max": max((p.get("backlog") or 0 for p in samples), default=0),
        "latency_while_draining": drain,
        "latency_status_while_draining": latency(rec.calls, ("status",), 0, drained_s),
        "latency_metrics_while_draining": latency(rec.calls, ("metrics",), 0, drained_s),
        "latency_uploads": latency(rec.calls, ("upload",), 0, drained_s),
        "latency_uploads_accepted": latency([c for c in rec.calls if c[3] == 202], ("upload",), 0, drained_s),
        "status_answers_stale": rec.stale,
        "latency_after_last_accept": latency(rec.calls, ("status", "metrics"), last_accept, drained_s),
        "latency_all_api_calls_in_run": latency(rec.calls, ("status", "metrics", "upload"), 0, drained_s),
        "cpu_s": cpu, "cpu_s_per_video": {k: round(v / max(1, len(completed)), 2) for k, v in cpu.items()},
        "rss_peak_mb": peaks, "checks": checks, "ok": all(checks.values()),
        "samples": samples,
        "calls": [(round(t, 3), route, round(ms, 1), status) for t, route, ms, status in sorted(rec.calls)],
    }
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    t = [p["t"] / 60 for p in samples]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(9, 10), sharex=True)
    ax1.plot(t, [p.get("backlog") for p in samples], label="backlog (API, queued + running)")
    ax1.plot(t, [p["accepted"] for p in samples], label="accepted (202)")
    ax1.plot(t, [p.get("completed") for p in samples], label="completed")
    ax1.axhline(result["backlog_limit"], color="grey", linestyle=":", label="backlog limit (429 past it)")
    ax1.set_ylabel("videos")
    ax1.legend(loc="upper left", fontsize=8)
    ax1.set_title(f"{result['videos']} videos in one burst: {result['videos_per_min']} videos/min, "
                  f"{result['workers']} warm workers x {result['runs_per_worker']}, {result['cores']} cores")
    calls = result["calls"]
    for route, marker, label in (("status", ".", "GET status"), ("metrics", "x", "GET metrics"),
                                 ("upload", "+", "POST uploads (202)")):
        pts = [(c[0] / 60, c[2]) for c in calls if c[1] == route and (route != "upload" or c[3] == 202)]
        ax2.scatter([p[0] for p in pts], [p[1] for p in pts], s=6, marker=marker, label=label)
    ax2.axhline(200, color="red", linestyle=":", label="200 ms")
    ax2.set_yscale("log")
    ax2.set_ylabel("API latency (ms)")
    lat = result["latency_while_draining"]
    up = result["latency_uploads_accepted"]
    ax2.set_title(f"GET status + metrics while draining: p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms; "
                  f"accepted uploads p50 {up['p50_ms']} ms, p99 {up['p99_ms']} ms", fontsize=9)
    ax2.legend(loc="upper left", fontsize=8)
    parts = sorted({k[7:] for p in samples for k in p if k.startswith("rss_mb.")})
    for part in parts:
        ax3.plot(t, [p.get(f"rss_mb.{part}") for p in samples], label=part)
    ax3.set_ylabel("RSS (MiB, summed per part)")
    ax3.set_xlabel("minutes since the burst")
    ax3.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def trimmed(result: dict, points: int = 400) -> dict:
    """The figures with the curves thinned to about `points` samples (the plot has them all)."""
    samples = result["samples"]
    step = max(1, len(samples) // points)
    return {**{k: v for k, v in result.items() if k != "calls"}, "samples": samples[::step] + samples[-1:]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--backlog", type=int, default=None, help="TRANSCODE_API_MAX_BACKLOG (default videos/5)")
    parser.add_argument("--retry-after", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--limit", type=int, default=3, help="runs at once per worker")
    parser.add_argument("--timeout", type=float, default=3 * 3600, help="seconds to wait for the drain")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the logs")
    args = parser.parse_args(argv)
    args.backlog = args.backlog if args.backlog is not None else max(10, args.videos // 5)
    result = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plot:
        plot(result, args.plot)
    (args.out / "results-load.json").write_text(json.dumps(trimmed(result), indent=1))
    lat = result["latency_while_draining"]
    print(f"load: {result['completed']}/{result['videos']} completed in {result['drained_s']:.0f} s "
          f"({result['videos_per_min']} videos/min); {result['answers_429']} answers 429; API while draining "
          f"p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms (target < 200: "
          f"{'met' if lat['p99_ms'] is not None and lat['p99_ms'] < 200 else 'NOT met'}); "
          f"CPU-s per video {result['cpu_s_per_video']}; RSS peaks MiB {result['rss_peak_mb']}")
    for name, ok in result["checks"].items():
        print(f"  {'ok  ' if ok else 'FAIL'} {name}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
