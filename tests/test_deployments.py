"""prefect.yaml for real: a Prefect server, the pool and its queues, `prefect deploy --all`,
process workers (one for the light stages, three on the `transcode` queue, each with its
own scratch folder like separate machines), `prefect deployment run`, outputs in storage.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.checks import child_runs, delete_project_deployments, video_md5, wait_final
from transcoder.stack import save_blocks

REPO = Path(__file__).resolve().parent.parent
PREFECT = str(Path(sys.executable).parent / "prefect")
PARAMS = {"renditions": "240p,144p", "chunk_seconds": 1.0, "gop_seconds": 1.0, "batch_chunks": 1}
STAGES = {"download-source": "download", "probe-video": "metadata", "split-video": "split",
          "transcode-batch": "transcode", "merge-video": "merge"}


class Deployed:
    def __init__(self, env: dict, bucket: str, pool: str, s3):
        self.env, self.bucket, self.pool, self.s3 = env, bucket, pool, s3

    def prefect(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([PREFECT, *args], env=self.env, cwd=REPO, capture_output=True, text=True,
                              timeout=timeout)

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture(scope="module")
def deployed(s3_server, prefect_server, tmp_path_factory):
    from prefect.settings import PREFECT_API_URL

    from transcoder.settings import Settings

    root = tmp_path_factory.mktemp("deployed")
    bucket = "dep-" + secrets.token_hex(5)
    pool = "pool-" + secrets.token_hex(4)
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "TRANSCODE_"))}
    env = {**base, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5",
           "TRANSCODE_BUCKET": bucket, "TRANSCODE_STORAGE_BLOCK": bucket, "TRANSCODE_DATA_DIR": str(root / "data"),
           "TRANSCODE_MAX_WORKERS": "2", "PYTHONPATH": str(REPO)}
    save_blocks(s3_server.endpoint, s3_server.access_key, s3_server.secret_key,
                Settings(bucket=bucket, storage_block=bucket))
    setup = subprocess.run([sys.executable, "-m", "deployments.setup", "--pool", pool, "--pool-type", "process",
                            "--deploy", "--paused"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    dep = Deployed(env, bucket, pool, s3)
    dep.setup_output = setup.stdout
    workers = []
    queues = {"light": ["orchestrate", "download", "metadata", "split", "merge"],
              "transcode-1": ["transcode"], "transcode-2": ["transcode"], "transcode-3": ["transcode"]}
    for name, names in queues.items():
        wenv = {**env, "TRANSCODE_DATA_DIR": str(root / name)}  # no local copies shared between "machines"
        log = open(root / f"{name}.log", "wb")
        args = [PREFECT, "worker", "start", "--pool", pool, "--type", "process", "--name", name,
                "--limit", "8" if name == "light" else "1"]
        for queue in names:
            args += ["--work-queue", queue]
        workers.append(subprocess.Popen(args, env=wenv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True))
    dep.root = root
    yield dep
    for proc in workers:  # a worker in the background ignores SIGTERM
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        proc.wait(timeout=30)
    delete_project_deployments()


def test_setup_made_pool_queues_and_deployments(deployed):
    from prefect.client.orchestration import get_client

    assert "queue transcode created (limit 32)" in deployed.setup_output
    assert "paused: pickup-incoming/default" in deployed.setup_output
    rules = {r["ID"]: r for r in deployed.s3.get_bucket_lifecycle_configuration(Bucket=deployed.bucket)["Rules"]}
    assert rules["expire-chunk-intermediates"]["Filter"] == {"Tag": {"Key": "transcode-intermediate", "Value": "chunk"}}
    assert rules["expire-chunk-intermediates"]["Expiration"] == {"Days": 1}
    assert {"abort-incomplete-multipart-uploads", "expire-api-uploads", "expire-stale-locks"} <= set(rules)
    with get_client(sync_client=True) as client:
        queues = {q.name: q for q in client.read_work_queues(work_pool_name=deployed.pool)}
        assert {"orchestrate", "download", "metadata", "split", "transcode", "merge"} <= set(queues)
        assert queues["transcode"].concurrency_limit == 32
        for flow_name, queue in {**STAGES, "transcode-video": "orchestrate", "pickup-incoming": "orchestrate"}.items():
            deployment = client.read_deployment_by_name(f"{flow_name}/default")
            assert deployment.work_pool_name == deployed.pool and deployment.work_queue_name == queue
            assert deployment.job_variables["env"]["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == \
                f"s3-bucket/{deployed.bucket}-results"
        pickup = client.read_deployment_by_name("pickup-incoming/default")
        assert [s.schedule.cron for s in pickup.schedules] == ["*/5 * * * *"]
        assert pickup.paused  # --paused: the test's workers must not pick up on the schedule
        parent = client.read_deployment_by_name("transcode-video/default")
        assert parent.parameters == {"mode": "deployments"}
        automations = [a for a in client.read_automations() if "transcode-video" in a.name or
                       any(getattr(action, "deployment_id", None) == parent.id for action in a.actions)]
    assert automations, "the ingest trigger of prefect.yaml was not created"
    trigger = automations[0].trigger
    assert "transcode.video.requested" in trigger.expect
    assert automations[0].actions[0].parameters["request_id"] == "{{ event.id | string }}"
    # running it again changes nothing
    again = subprocess.run([sys.executable, "-m", "deployments.setup", "--pool", deployed.pool, "--pool-type",
                            "process"], env=deployed.env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "created" not in again.stdout, again.stdout + again.stderr


def test_deployment_run_fans_out_across_workers(deployed, media, engine, tmp_path):
    from flows.transcode import transcode_video

    src = media("standard", seconds=6)
    deployed.s3.upload_file(str(src), deployed.bucket, "in/clip.mp4")
    run = deployed.prefect("deployment", "run", "transcode-video/default", "-p",
                           f"source=s3://{deployed.bucket}/in/clip.mp4",
                           *[arg for k, v in PARAMS.items() for arg in ("-p", f"{k}={json.dumps(v)}")])
    assert run.returncode == 0, run.stdout + run.stderr
    flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1)
    final = wait_final(flow_run_id)
    assert final.state.is_completed(), (final.state, (deployed.root / "light.log").read_text()[-3000:])

    children = child_runs(flow_run_id)
    by_flow: dict[str, list] = {}
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        names = {f.id: f.name for f in client.read_flows()}
    for child in children:
        by_flow.setdefault(names[child.flow_id], []).append(child)
    assert set(by_flow) == set(STAGES), by_flow.keys()
    for flow_name, queue in STAGES.items():
        assert all(r.work_queue_name == queue and r.state.is_completed() for r in by_flow[flow_name])
    batches = by_flow["transcode-batch"]
    assert len(batches) == 6  # 6 s in 1 s chunks, one chunk per batch
    workers = {r.labels.get("prefect.worker.name") for r in batches}
    assert len(workers) > 1 and workers <= {"transcode-1", "transcode-2", "transcode-3"}, workers

    keys = deployed.keys()
    video_id = next(k.split("/")[0] for k in keys if k.endswith("/report.json"))
    report = json.loads(deployed.s3.get_object(Bucket=deployed.bucket, Key=f"{video_id}/report.json")["Body"].read())
    assert [r["name"] for r in report["renditions"]] == ["240p", "144p"]
    assert report["run"]["transcoded"] == 12 and report["run"]["cached"] == 0
    assert f"{video_id}/hls/master.m3u8" in keys and f"{video_id}/player.html" in keys

    # the same video in the embedded default (one process, another bucket): same video streams
    local = transcode_video(str(src), mode="local", **PARAMS)
    assert local.video_id == video_id
    for rendition in local.renditions:
        fanned = deployed.s3.download_file(deployed.bucket, rendition.key, str(tmp_path / "fanned.mp4"))
        assert fanned is None
        mine = engine.download(rendition.key, tmp_path / "local.mp4")
        assert video_md5(tmp_path / "fanned.mp4") == video_md5(mine), rendition.name


def test_pickup_starts_each_object_once(deployed, monkeypatch, media):
    """Five objects under a prefix: the first pickup starts five runs, the second none."""
    from prefect.client.orchestration import get_client

    from flows.pickup import pickup_incoming
    from transcoder.settings import reload_settings
    from transcoder.storage import forget_buckets

    src = media("standard", seconds=2)
    for i in range(5):
        deployed.s3.upload_file(str(src), deployed.bucket, f"dropbox/batch/video-{i}.mp4")
    deployed.s3.put_object(Bucket=deployed.bucket, Key="dropbox/batch/notes.txt", Body=b"not a video")
    # runs started on a deployment no worker serves (parked), so nothing transcodes here
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("transcode-video")
        parked = client.create_deployment(flow_id=flow_id, name="parked", work_pool_name=deployed.pool,
                                          work_queue_name="parked", entrypoint="flows/transcode.py:transcode_video")
    monkeypatch.setenv("TRANSCODE_BUCKET", deployed.bucket)
    monkeypatch.setenv("TRANSCODE_STORAGE_BLOCK", deployed.bucket)
    reload_settings()
    forget_buckets()
    try:
        first = pickup_incoming(prefix="dropbox/batch/", deployment="transcode-video/parked")
        second = pickup_incoming(prefix="dropbox/batch/", deployment="transcode-video/parked")
    finally:
        monkeypatch.undo()
        reload_settings()
        forget_buckets()
    assert len(first.started) == 5 and first.already == [] and first.ignored == ["dropbox/batch/notes.txt"]
    assert second.started == [] and sorted(second.already) == sorted(first.started)
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[parked])))
    assert len(runs) == 5
    assert sorted(r.parameters["source"] for r in runs) == sorted(
        f"s3://{deployed.bucket}/dropbox/batch/video-{i}.mp4" for i in range(5))


def _engine_pid(flow_run_id: str) -> int | None:
    """The process a process worker started for this flow run (PREFECT__FLOW_RUN_ID in its environment)."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    return int(entry.name)
            except OSError:
                continue
    return None


def test_a_killed_batch_is_run_again_and_the_video_completes(deployed, media):
    """A worker's flow-run process killed mid-batch (a lost machine, a reclaimed Spot
    instance): the run ends Crashed, the parent runs that batch once more, the chunks it had
    finished come from the cache, and the video completes."""
    from prefect.client.orchestration import get_client

    deployed.s3.upload_file(str(media("standard", seconds=5)), deployed.bucket, "in/crash.mp4")
    run = deployed.prefect("deployment", "run", "transcode-video/default", "-p",
                           f"source=s3://{deployed.bucket}/in/crash.mp4", "-p", "renditions=240p,144p",
                           "-p", "chunk_seconds=1", "-p", "gop_seconds=1", "-p", "batch_chunks=2")
    assert run.returncode == 0, run.stdout + run.stderr
    parent = re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1)
    killed = None
    deadline = time.monotonic() + 600
    while killed is None and time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            names = {f.id: f.name for f in client.read_flows()}
        for child in child_runs(parent):
            if names[child.flow_id] == "transcode-batch" and child.state.is_running():
                pid = _engine_pid(str(child.id))
                if pid:
                    os.kill(pid, signal.SIGKILL)
                    killed = child.id
                    break
        time.sleep(0.5)
    assert killed, "no running batch was seen"
    final = wait_final(parent)
    assert final.state.is_completed(), final.state
    with get_client(sync_client=True) as client:
        names = {f.id: f.name for f in client.read_flows()}
    batches = [r for r in child_runs(parent) if names[r.flow_id] == "transcode-batch"]
    states = sorted(r.state.name for r in batches)
    assert states.count("Crashed") == 1 and states.count("Completed") == len(batches) - 1, states
    crashed = next(r for r in batches if r.state.name == "Crashed")
    assert crashed.id == killed
    # the batch ran again with the same chunks
    again = [r for r in batches if r.parameters["chunks"] == crashed.parameters["chunks"] and r.id != killed]
    assert len(again) == 1 and again[0].state.is_completed()
