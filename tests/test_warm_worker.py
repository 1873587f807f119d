"""The warm worker (flows/warm_worker.py): runs flow runs of its pool in its own process,
and a warm worker that starts puts back in the queue the runs of a warm worker killed on
this host, which it then finishes (what was done before the kill is cached)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.checks import video_md5

REPO = Path(__file__).resolve().parent.parent
CHUNKING = {"chunk_seconds": 2.0, "gop_seconds": 1.0}


def start_worker(env: dict, pool: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "flows.warm_worker", "--pool", pool, "--limit", "2",
                                 "--poll-seconds", "0.5"], env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=120)


def wait_state(client, run_id, until, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while True:
        run = client.read_flow_run(run_id)
        if until(run) or time.monotonic() > deadline:
            return run
        time.sleep(0.3)


@pytest.mark.chaos
def test_killed_warm_worker_runs_are_taken_over(cli_env, engine, media, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment

    from flows.transcode import transcode_video

    src = media("standard", seconds=12)
    pool = "warm-" + secrets.token_hex(4)
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    transcode_video.to_deployment(name=pool, work_pool_name=pool).apply()
    params = {"source": str(src), "renditions": "240p", **CHUNKING}

    first = start_worker(cli_env, pool, tmp_path / "worker-1.log")
    second = None
    try:
        # a run on a warm worker, killed with its ffmpeg processes once two segments are stored
        run = run_deployment(f"transcode-video/{pool}", parameters=params, timeout=0)
        deadline = time.monotonic() + 300
        while sum("/segments/" in k for k in engine.keys()) < 2:
            assert time.monotonic() < deadline and first.poll() is None, (tmp_path / "worker-1.log").read_text()
            time.sleep(0.2)
        with get_client(sync_client=True) as client:
            taken = client.read_flow_run(run.id)
            assert taken.state.is_running() and taken.infrastructure_pid.endswith(f":{first.pid}:warm")
            stop(first, signal.SIGKILL)
            assert client.read_flow_run(run.id).state.is_running()  # nobody told the server

            # the next warm worker sees the dead holder, queues the run again and finishes it
            second = start_worker(cli_env, pool, tmp_path / "worker-2.log")
            done = wait_state(client, run.id, lambda r: r.state.is_final())
            assert done.state.is_completed(), (done.state, (tmp_path / "worker-2.log").read_text()[-3000:])
            assert done.infrastructure_pid.endswith(f":{second.pid}:warm")
            history = client.read_flow_run_states(run.id)
            assert any(s.is_scheduled() and "is gone; queued again" in (s.message or "") for s in history)
        [key] = [k for k in engine.keys("encoded/") if k.endswith("_240p.mp4")]
        after = video_md5(engine.download(key, tmp_path / "after.mp4"))
    finally:
        stop(first, signal.SIGKILL)
        if second is not None:
            stop(second)
    # the same bytes as a run in this process (the engine is deterministic)
    engine.s3.delete_objects(Bucket=engine.bucket, Delete={"Objects": [{"Key": k} for k in engine.keys()]})
    clean = transcode_video(**params)
    assert video_md5(engine.download(clean.renditions[0].key, tmp_path / "clean.mp4")) == after
