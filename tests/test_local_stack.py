"""The embedded default as a user meets it: `transcode up`, `run` with nothing configured, `down`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from transcoder.stack import free_port


def cli(args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "transcoder.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def own_stack_env(tmp_path: Path) -> dict:
    """Nothing configured but a data folder and a Prefect port of the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "TRANSCODE_"))}
    env.update({"TRANSCODE_DATA_DIR": str(tmp_path / "data"), "TRANSCODE_PREFECT_PORT": str(free_port()),
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    return env


def run_benchmark(tmp_path: Path, script: str, *options: str):
    """A benchmark script on a 4 s 360p input, on a local stack of its own (stopped after):
    (the finished process, its output folder, the environment, the benchmarks folder)."""
    env = own_stack_env(tmp_path)
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    out = tmp_path / "out"
    try:
        proc = subprocess.run([sys.executable, str(bench / script), "--seconds", "4", "--height", "360", *options,
                               "--out", str(out)], capture_output=True, text=True, env=env, timeout=1200)
        assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        cli(["down"], env)
    return proc, out, env, bench


def test_up_run_down(tmp_path, media):
    env = own_stack_env(tmp_path)
    try:
        up = cli(["up"], env)
        assert up.returncode == 0, up.stderr
        assert "Prefect UI:" in up.stdout and "S3 endpoint:" in up.stdout
        creds = tmp_path / "data" / "credentials.env"
        assert creds.stat().st_mode & 0o777 == 0o600
        assert cli(["status"], env).returncode == 0
        # nothing configured: `run` uses the running stack (and would start it if needed)
        run = cli(["run", str(media("standard", seconds=6)), "--renditions", "144p", "--json",
                   "--output-dir", str(tmp_path / "out")], env)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        assert result["renditions"][0]["name"] == "144p" and Path(result["renditions"][0]["path"]).exists()
        assert not result["reused"]
        # the same command again: answered from storage through the stack's own credentials
        rerun = cli(["run", str(media("standard", seconds=6)), "--renditions", "144p", "--json"], env)
        assert rerun.returncode == 0, rerun.stderr
        assert json.loads(rerun.stdout)["reused"] and json.loads(rerun.stdout)["renditions"][0]["sha256"] \
            == result["renditions"][0]["sha256"]
        again = cli(["up"], env)  # idempotent: the same servers
        assert again.returncode == 0 and again.stdout == up.stdout
    finally:
        down = cli(["down"], env)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert cli(["status"], env).returncode == 1


def test_benchmarks_run_on_a_tiny_input(tmp_path):
    """`make bench`'s ladder part and the collection of results and plots, end to end on a
    4 s 360p input (the figures mean nothing at that size; the code paths are the real ones)."""
    proc, out, env, bench = run_benchmark(tmp_path, "bench_ladder.py", "--crfs", "23,30")
    assert "BD-rate of the engine" in proc.stdout
    # the engine's copies of the input do not stay in the stack's bucket (they filled a disk once)
    assert re.search(r"removed the benchmark's \d+ videos from the bucket \([1-9]\d* objects", proc.stderr)
    ladder = json.loads((out / "results-ladder.json").read_text())
    assert set(ladder["contenders"]) == {"single", "single-1t", "sequential", "naive", "engine", "engine-rerun"}
    assert ladder["contenders"]["engine-rerun"]["reused"] and ladder["contenders"]["engine-rerun"]["same_sha256"]
    frames = ladder["input"]["frames"]
    for name in ("single", "single-1t", "sequential", "engine"):
        for output in ladder["contenders"][name]["outputs"]:
            assert output["frames"] == frames and output["psnr"] > 30, (name, output)
    assert all(c["peak_rss"] > 0 and c["cpu"] > 0 for c in ladder["contenders"].values())
    engine, split = ladder["contenders"]["engine"], ladder["contenders"]["engine"]["cpu_split"]
    assert split["command"] > 0 and split["started"] > 0 and split["command"] + split["started"] == pytest.approx(
        engine["cpu"])  # the command's own CPU and what it started (ffmpeg) make up the engine's processes
    assert split["prefect_server"] + split["s3_server"] == pytest.approx(engine["server_cpu"])
    bd = ladder["bd_rate"]["rungs"][0]
    assert abs(bd["bd_rate_psnr_pct"]) < 25 and abs(bd["bd_rate_ssim_pct"]) < 25

    collect = subprocess.run([sys.executable, str(bench / "bench.py"), "--collect", "--out", str(out), "--results",
                              str(tmp_path / "results.json"), "--img", str(tmp_path / "img")],
                             capture_output=True, text=True, env=env, timeout=300)
    assert collect.returncode == 0, collect.stderr
    combined = json.loads((tmp_path / "results.json").read_text())
    assert combined["parts"]["ladder"]["input"]["seconds"] == 4
    for name in ("bench-ladder.png", "bench-bdrate.png"):
        assert (tmp_path / "img" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_limited_workers_check_runs_on_a_tiny_input(tmp_path):
    """`bench_limited.py` end to end on a 4 s 360p input, 1 and 2 CPU-limited warm workers in
    mode "deployments" (the figures mean nothing at that size; the code paths are the real ones)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_limited import cgroups_writable

    why = cgroups_writable()
    if why:
        pytest.skip(f"CPU limits cannot be set here: {why}")
    proc, out, _, _ = run_benchmark(tmp_path, "bench_limited.py", "--chunk-seconds", "1", "--workers", "1,2",
                                    "--cpu", "0.5")
    assert "model built from the 1-worker run" in proc.stdout
    assert re.search(r"removed the benchmark's \d+ videos from the bucket \([1-9]\d* objects", proc.stderr)
    results = json.loads((out / "results-limited.json").read_text())
    one, two = results["runs"]
    for run in (one, two):
        assert run["frames_ok"] and len(run["batches"]) == run["chunks"] >= 3
        assert all(b["encode"] > 0 and b["ended"] > b["started"] >= b["submitted"] for b in run["batches"])
        # the quota held the workers back: the limit is real
        assert any(t.get("nr_throttled", 0) > 0 for t in run["throttled"].values())
    assert len({b["worker"] for b in one["batches"]}) == 1 and len({b["worker"] for b in two["batches"]}) == 2
    assert one["model_longest_first"] == pytest.approx(one["flow_wall"])  # the model is that run's
    assert 0 < two["model_longest_first"] < one["flow_wall"]
