"""Failure injection (`make chaos`): a fault in the middle of a run, then the run (or a
plain rerun) finishes with the same video streams as a clean run, redoing only what the
fault lost. Each test runs a clean transcode first, empties the bucket, then the faulty one.

Faults here: an ffmpeg that hangs, the S3 server gone for 20 s, a full disk. Elsewhere:
a killed ffmpeg (test_cache_and_retries), a killed stage worker process
(test_deployments), a segment corrupted in storage (test_cache_and_retries).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
import warnings
from pathlib import Path

import pytest

from tests.checks import FFmpegSignaller, video_md5
from transcoder.stack import save_blocks, start_seaweed

pytestmark = pytest.mark.chaos
CHUNKING = {"chunk_seconds": 2.0, "gop_seconds": 1.0}


def clean_run(engine, src: Path, tmp_path: Path) -> str:
    """The reference: a run without faults; its video md5. The bucket is emptied after,
    so the faulty run starts from nothing."""
    from flows.transcode import transcode_video

    result = transcode_video(str(src), renditions="240p", **CHUNKING)
    md5 = video_md5(engine.download(result.renditions[0].key, tmp_path / "clean.mp4"))
    for key in engine.keys():
        engine.s3.delete_object(Bucket=engine.bucket, Key=key)
    shutil.rmtree(engine.settings.data_dir / "work", ignore_errors=True)
    return md5


def test_hung_ffmpeg_is_killed_by_its_timeout_and_the_chunk_retried(engine, media, tmp_path, monkeypatch):
    from flows.transcode import transcode_video
    from transcoder.settings import reload_settings

    src = media("standard", seconds=6)
    reference = clean_run(engine, src, tmp_path)
    monkeypatch.setenv("TRANSCODE_FFMPEG_MIN_TIMEOUT", "20")
    monkeypatch.setenv("TRANSCODE_FFMPEG_TIMEOUT_PER_MEDIA_SECOND", "1")
    reload_settings()
    hang = FFmpegSignaller("00001", times=1, sig=signal.SIGSTOP)  # alive, never finishing
    hang.start()
    state = transcode_video(str(src), renditions="240p", return_state=True, **CHUNKING)
    hang.stop.set()
    assert hang.killed == 1 and state.is_completed(), state
    result = state.result()
    assert result.transcoded == result.chunks  # each chunk once; the hung one's retry is the same task
    assert video_md5(engine.download(result.renditions[0].key, tmp_path / "after.mp4")) == reference


# --- the S3 server gone for 20 s -------------------------------------------------------


class OwnS3:
    """A SeaweedFS of this test alone, on a fixed port, that can be stopped and started."""

    def __init__(self, root: Path):
        from transcoder.stack import free_port

        self.root, self.key, self.secret = root, "chaos-" + secrets.token_hex(4), secrets.token_urlsafe(24)
        self.port = free_port(set())
        self.start()

    def start(self) -> None:
        self.proc, self.endpoint = start_seaweed(self.root / "data", self.key, self.secret, self.root / "weed.log",
                                                 s3_port=self.port)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1")


@pytest.fixture
def own_s3_engine(prefect_server, data_dir, tmp_path_factory, monkeypatch):
    from tests.conftest import Engine
    from transcoder.settings import reload_settings
    from transcoder.storage import forget_buckets

    server = OwnS3(tmp_path_factory.mktemp("own-s3"))
    bucket = "chaos-" + secrets.token_hex(5)
    server.client().create_bucket(Bucket=bucket)
    monkeypatch.setenv("TRANSCODE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TRANSCODE_BUCKET", bucket)
    monkeypatch.setenv("TRANSCODE_STORAGE_BLOCK", bucket)
    settings = reload_settings()
    forget_buckets()
    save_blocks(server.endpoint, server.key, server.secret, settings)
    yield server, Engine(s3=server.client(), bucket=bucket, settings=settings)
    reload_settings()
    forget_buckets()
    if server.proc.poll() is None:
        server.stop()


def test_s3_gone_for_20_seconds_mid_run(own_s3_engine, media, tmp_path):
    """Stopped (killed) once the first segments are stored, started again 20 s later on
    the same port and data: the run waits it out (storage calls retry with backoff)."""
    from flows.transcode import transcode_video

    server, engine = own_s3_engine
    src = media("standard", seconds=12)
    reference = clean_run(engine, src, tmp_path)
    outage: dict = {}

    def cut_the_power() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and sum("/segments/" in k for k in engine.keys()) < 2:
            time.sleep(0.2)
        server.stop()
        outage["stopped"] = time.monotonic()
        time.sleep(20)
        server.start()
        outage["back"] = time.monotonic()

    saboteur = threading.Thread(target=cut_the_power, daemon=True)
    saboteur.start()
    state = transcode_video(str(src), renditions="240p", return_state=True, **CHUNKING)
    saboteur.join(timeout=120)
    assert outage.get("back"), "the outage did not happen during the run"
    if not state.is_completed():  # the promise when a run does not ride it out: a rerun finishes
        warnings.warn(f"the run failed during the S3 outage: {state.message}; rerunning")
        state = transcode_video(str(src), renditions="240p", return_state=True, **CHUNKING)
    assert state.is_completed(), state
    result = state.result()
    assert video_md5(engine.download(result.renditions[0].key, tmp_path / "after.mp4")) == reference


# --- a full disk ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmpfs):
    return tmpfs("64m")


def test_full_disk_fails_the_task_clearly_and_a_rerun_redoes_only_the_rest(engine, media, tmp_path, monkeypatch,
                                                                            small_disk):
    from flows.transcode import transcode_video
    from transcoder.errors import DiskFullError
    from transcoder.settings import reload_settings

    src = media("standard", seconds=12)
    reference = clean_run(engine, src, tmp_path)
    monkeypatch.setenv("TRANSCODE_DATA_DIR", str(small_disk / "data"))
    monkeypatch.setenv("TRANSCODE_MAX_WORKERS", "1")  # chunks in order: some are done when the disk fills
    reload_settings()
    filler = small_disk / "filler"

    def fill_once_chunks_are_stored() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and sum("/segments/" in k for k in engine.keys()) < 2:
            time.sleep(0.05)
        with open(filler, "wb") as out:  # every byte left, then a little more
            try:
                while True:
                    out.write(b"\0" * (1 << 20))
                    out.flush()
            except OSError:
                pass

    filling = threading.Thread(target=fill_once_chunks_are_stored, daemon=True)
    filling.start()
    state = transcode_video(str(src), renditions="240p", return_state=True, **CHUNKING)
    filling.join(timeout=60)
    assert state.is_failed(), state
    with pytest.raises(DiskFullError, match="no space left on the device") as err:
        state.result()
    assert "\n" not in str(err.value)
    assert not engine.keys("encoded/"), "nothing may look finished after a failed run"
    stored_before = {k for k in engine.keys() if "/segments/" in k}
    assert stored_before, "no chunk was finished before the disk filled"

    filler.unlink()
    again = transcode_video(str(src), renditions="240p", **CHUNKING)
    assert again.cached == len(stored_before) and again.transcoded == again.chunks - len(stored_before)
    assert video_md5(engine.download(again.renditions[0].key, tmp_path / "after.mp4")) == reference


# --- the same video twice at the same moment --------------------------------------------


class EncodeCounter(threading.Thread):
    """The chunk-encoding ffmpeg processes of this machine, seen by polling /proc."""

    def __init__(self):
        super().__init__(daemon=True)
        self.seen: dict[int, str] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                if int(pid) in self.seen:
                    continue
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if cmd.startswith(b"ffmpeg\0") and b"-filter_complex" in cmd and b"/chunk_" in cmd:
                    self.seen[int(pid)] = cmd.split(b"/chunk_")[1][:5].decode()
            time.sleep(0.005)


def test_two_runs_of_one_video_at_once_encode_each_chunk_once(engine, media, tmp_path, cli_env):
    """Two processes (as two workers would be) start the same video together: every
    chunk x rung is encoded by one of them (the cache key is locked in the bucket,
    transcoder/locks.py), the other waits and takes the record; one set of outputs."""
    import json
    import sys

    src = media("standard", seconds=12)
    argv = [sys.executable, "-m", "transcoder.cli", "run", str(src), "--renditions", "240p,144p", "--json",
            "--chunk-seconds", "2", "--gop-seconds", "1"]
    encodes = EncodeCounter()
    encodes.start()
    procs = [subprocess.Popen(argv, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    encodes.stop.set()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    first, second = (json.loads(out) for out, _ in outs)
    assert first["video_id"] == second["video_id"]
    work = first["chunks"] * 2
    assert first["transcoded"] + second["transcoded"] == work, (first["transcoded"], second["transcoded"])
    assert first["cached"] + second["cached"] == work
    assert [r["sha256"] for r in first["renditions"]] == [r["sha256"] for r in second["renditions"]]
    assert not engine.keys("locks/"), "every lock was released"
    # the processes themselves: one chunk ffmpeg (both rungs) per chunk, in either run
    assert len(encodes.seen) == first["chunks"], sorted(encodes.seen.values())


# --- the Prefect server restarted -------------------------------------------------------


def test_prefect_server_restarted_mid_run(s3_server, media, tmp_path, cli_env):
    """A server of this test alone (its own database), stopped once the first segments
    are stored and started again on the same port: the run's API calls retry until it
    is back, and the run completes."""
    import json
    import sys

    from transcoder.stack import free_port, start_prefect_server

    home, port = tmp_path / "prefect-home", free_port(set())
    server, url = start_prefect_server(home, port, tmp_path / "prefect.log")
    bucket = "restart-" + secrets.token_hex(5)
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    env = {k: v for k, v in cli_env.items() if not k.startswith("TRANSCODE_")}
    env.update({"PREFECT_API_URL": url, "TRANSCODE_BUCKET": bucket, "TRANSCODE_STORAGE_BLOCK": bucket,
                "TRANSCODE_DATA_DIR": str(tmp_path / "data"), "PREFECT_CLIENT_MAX_RETRIES": "10"})
    subprocess.run([sys.executable, "-c", "import sys; from transcoder.stack import save_blocks; "
                    "from transcoder.settings import get_settings; save_blocks(*sys.argv[1:], get_settings())",
                    s3_server.endpoint, s3_server.access_key, s3_server.secret_key], env=env, check=True, timeout=120)
    src = media("standard", seconds=12)
    argv = [sys.executable, "-m", "transcoder.cli", "run", str(src), "--renditions", "240p", "--json",
            "--chunk-seconds", "2", "--gop-seconds", "1"]
    run = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    restarted = {}
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and run.poll() is None:
            found = s3.list_objects_v2(Bucket=bucket, Prefix="").get("Contents", [])
            if sum("/segments/" in o["Key"] for o in found) >= 2:
                break
            time.sleep(0.2)
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        restarted["down"] = time.monotonic()
        server, _ = start_prefect_server(home, port, tmp_path / "prefect.log")
        restarted["up"] = time.monotonic()
        out, err = run.communicate(timeout=900)
    finally:
        if run.poll() is None:
            run.kill()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    assert run.returncode == 0, err[-3000:]
    result = json.loads(out)
    assert result["transcoded"] == result["chunks"]  # nothing twice
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="encoded/").get("Contents", [])]
    assert keys == [f"encoded/{result['video_id']}_240p.mp4"]
    down = restarted["up"] - restarted["down"]
    print(f"server down for {down:.1f} s")


def test_stage_submission_waits_out_a_locked_server_database(prefect_server):
    """The Prefect server answers 503 while its SQLite database is locked (nine warm workers
    polling one on two busy cores locked run creation out for 2.5 minutes, and the video
    failed on the first batch it could not submit). A stage call waits that out, and a
    retried submission returns the run already made, not a second one."""
    import sqlite3

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, get_current_settings, temporary_settings

    from flows.dispatch import StageRunner
    from flows.transcode import transcode_video

    url = get_current_settings().server.database.connection_url.get_secret_value()
    assert url.startswith("sqlite+aiosqlite:///"), url  # the harness's own database
    name = "locked-" + secrets.token_hex(4)
    transcode_video.to_deployment(name=name).apply()
    held, released = threading.Event(), {}

    def lock(seconds: float = 14.0) -> None:
        db = sqlite3.connect(url.removeprefix("sqlite+aiosqlite:///"), isolation_level=None, timeout=60)
        db.execute("BEGIN IMMEDIATE")  # the one writer: the server's writes wait, then give up
        held.set()
        time.sleep(seconds)
        db.execute("ROLLBACK")
        released["at"] = time.monotonic()
        db.close()

    @flow
    def parent() -> tuple[str, str, float]:
        locker = threading.Thread(target=lock)
        locker.start()
        held.wait(30)
        started = time.monotonic()
        with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}):  # only the stage call's own patience
            first = StageRunner._submit(f"transcode-video/{name}", {"source": "/nonexistent.mp4"}, (0, 0))
            again = StageRunner._submit(f"transcode-video/{name}", {"source": "/nonexistent.mp4"}, (0, 0))
        locker.join()
        return str(first.id), str(again.id), time.monotonic() - started

    first, again, waited = parent()
    assert first == again  # the same call, the same run
    assert waited >= 12 and released["at"]  # it was created only once the lock was gone
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(first)
        assert run.state.is_scheduled() and run.parameters["source"] == "/nonexistent.mp4"
        client.delete_flow_run(first)
