"""Real parts: a SeaweedFS S3 server with auth on, a Prefect test server, real ffmpeg.

Session fixtures start the servers once; each test that transcodes gets its own bucket
(and its own S3Bucket block), so caches never leak between tests.
"""

from __future__ import annotations

import os
import secrets
import warnings
import signal
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

# Loopback only: the Prefect test server (and every server and worker the tests start, which
# inherit this) must not try to send telemetry out. Set before prefect is first imported.
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"

from transcoder.samples import make_sample
from transcoder.stack import save_blocks, start_seaweed

EXT = {"audio_only": "m4a", "odd_size": "mkv", "mpegts": "ts"}


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> S3Server:
    root = tmp_path_factory.mktemp("seaweedfs")
    key, secret = "test-" + secrets.token_hex(4), secrets.token_urlsafe(24)
    proc, endpoint = start_seaweed(root / "data", key, secret, root / "weed.log")
    yield S3Server(endpoint, key, secret)
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=30)


@pytest.fixture(scope="session")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("transcode-data")


@pytest.fixture
def engine(s3_server, prefect_server, data_dir, monkeypatch):
    """A fresh bucket and block, settings pointing at them; yields the S3 client and bucket."""
    yield from _engine(s3_server, data_dir, monkeypatch)


@pytest.fixture(scope="module")
def module_engine(s3_server, prefect_server, data_dir):
    """`engine` shared by the tests of one module (one run, many checks)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield from _engine(s3_server, data_dir, monkeypatch)


def _engine(s3_server, data_dir, monkeypatch):
    from transcoder.settings import reload_settings
    from transcoder.storage import forget_buckets

    name = "t-" + secrets.token_hex(6)
    s3_server.client().create_bucket(Bucket=name)
    monkeypatch.setenv("TRANSCODE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("TRANSCODE_BUCKET", name)
    monkeypatch.setenv("TRANSCODE_STORAGE_BLOCK", name)
    monkeypatch.delenv("TRANSCODE_S3_ENDPOINT", raising=False)
    settings = reload_settings()
    forget_buckets()
    save_blocks(s3_server.endpoint, s3_server.access_key, s3_server.secret_key, settings)
    yield Engine(s3=s3_server.client(), bucket=name, settings=settings)
    # the environment back first, so that a module's engine is what the settings read again
    monkeypatch.undo()
    reload_settings()
    forget_buckets()
    drop_bucket(s3_server.client(), name)


def drop_bucket(s3, name: str) -> None:
    """Delete a test's bucket: SeaweedFS gives each bucket volumes of its own, and a session
    that keeps ~180 buckets ran out of them ("No writable volumes and no free volumes left")."""
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=name, Delete={"Objects": keys})
        for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=name)
    except Exception as exc:  # best effort: a test that broke the server says so itself
        warnings.warn(f"could not delete test bucket {name}: {exc}")


@dataclass
class Engine:
    s3: object
    bucket: str
    settings: object

    def keys(self, prefix: str = "") -> list[str]:
        out = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def download(self, key: str, path: Path) -> Path:
        self.s3.download_file(self.bucket, key, str(path))
        return path


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs("64m")`: a folder on a tmpfs of that size, a disk that fills up (needs root, as
    the README's commands have); the test is skipped loudly without."""
    import subprocess

    mounts: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / f"disk-{len(mounts)}"
        folder.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            warnings.warn(f"cannot mount a tmpfs ({proc.stderr.strip()}): the full-disk test is skipped")
            pytest.skip("no tmpfs: " + proc.stderr.strip())
        mounts.append(folder)
        return folder

    yield mount
    for folder in mounts:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    """`media(kind, **options)` → a generated sample file (made once per session)."""
    root = tmp_path_factory.mktemp("media")

    def make(kind: str, **kwargs) -> Path:
        suffix = "_".join(f"{k}{v}" for k, v in sorted(kwargs.items()))
        return make_sample(kind, root / f"{kind}{'_' + suffix if suffix else ''}.{EXT.get(kind, 'mp4')}", **kwargs)

    return make


@pytest.fixture
def cli_env(engine):
    """Environment for running the CLI as a subprocess against the test servers."""
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_"))}
    env.update({
        "PREFECT_API_URL": PREFECT_API_URL.value(),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "TRANSCODE_DATA_DIR": str(engine.settings.data_dir),
        "TRANSCODE_BUCKET": engine.bucket,
        "TRANSCODE_STORAGE_BLOCK": engine.bucket,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    })
    return env
