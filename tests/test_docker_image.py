"""The production packaging: the compose stack's configuration and the project image.

- compose: `docker compose config` (or Debian's docker-compose 1.29) accepts the stack with
  every required value set, refuses it with the variable's name when a password is missing,
  and no password, key or token is written in the compose file or in env.example;
- the image: a private dockerd under a temporary folder (deployments/docker_host.py) builds
  the Debian base (mmdebstrap) and the project image, then the image is run: the CLI, ffmpeg,
  the flows import from /opt/transcoder, it runs unprivileged, and neither this machine's CA
  bundle nor its pip configuration is in it.

Where dockerd cannot run here (not root, not installed: `bash infra/docker-setup.sh`), the
image tests are skipped with the reason, loudly; TRANSCODE_REQUIRE_DOCKER=1 makes that a
failure instead (for a CI that must run them). Building takes about 5 minutes on 2 cores;
TRANSCODE_DOCKER_DATA_ROOT=DIR keeps images and the build cache in DIR for the next run.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import yaml

from deployments import docker_host

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "infra" / "docker-compose.yml"
ENV_EXAMPLE = ROOT / "infra" / "env.example"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", re.I)


# --- compose -------------------------------------------------------------------------------


def compose_command() -> list[str]:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    _unavailable("neither `docker compose` nor `docker-compose` is installed (bash infra/docker-setup.sh)")


def _unavailable(reason: str):
    """Skip loudly (a warning in the summary and a line on stderr), or fail if required."""
    message = f"DOCKER TESTS NOT RUN: {reason}"
    if os.environ.get("TRANSCODE_REQUIRE_DOCKER", "").lower() in ("1", "true", "yes"):
        pytest.fail(message + " (TRANSCODE_REQUIRE_DOCKER is set)")
    print(f"\nWARNING: {message}", file=sys.stderr)
    warnings.warn(message, stacklevel=2)
    pytest.skip(message)


def example_names() -> list[str]:
    return [line.split("=", 1)[0] for line in ENV_EXAMPLE.read_text().splitlines()
            if re.match(r"^[A-Z_][A-Z0-9_]*=", line)]


def required_names() -> set[str]:
    return set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*):\?", COMPOSE.read_text()))


def filled_env(tmp_path: Path, **override: str) -> Path:
    """env.example with every required value filled (random), optional ones left empty."""
    values = {}
    for name in example_names():
        if name in required_names():
            values[name] = str(1000 + secrets.randbelow(50000)) if name.endswith("_GID") else secrets.token_hex(16)
        else:
            values[name] = ""
    values.update(override)
    path = tmp_path / f"env-{secrets.token_hex(3)}"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def compose_config(env_file: Path) -> subprocess.CompletedProcess:
    # a clean environment: compose reads the process's variables before the env file
    env = {k: v for k, v in os.environ.items() if k not in set(example_names()) and not k.startswith("COMPOSE_")}
    return subprocess.run([*compose_command(), "--env-file", str(env_file), "-f", str(COMPOSE), "config"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_compose_config_accepts_a_filled_env(tmp_path):
    env_file = filled_env(tmp_path)
    proc = compose_config(env_file)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = yaml.safe_load(proc.stdout)
    services = config["services"]
    queues = {"orchestrate": 1, "download": 2, "metadata": 1, "split": 1, "transcode": 4, "merge": 2}
    assert set(services) >= {"postgres", "prefect-server", "minio", "init", "api"} | {f"worker-{q}" for q in queues}
    for queue, replicas in queues.items():
        worker = services[f"worker-{queue}"]
        command = worker["command"] if isinstance(worker["command"], str) else " ".join(worker["command"])
        assert f"--work-queue {queue}" in command and "--type docker" in command and "--pool transcode" in command
        assert worker["deploy"]["replicas"] == replicas
        assert any("/var/run/docker.sock" in str(v) for v in worker["volumes"])
        assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines())
    server_env = services["prefect-server"]["environment"]
    assert server_env["PREFECT_SERVER_DATABASE_PASSWORD"] == values["POSTGRES_PASSWORD"]
    assert server_env["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == values["POSTGRES_PASSWORD"]
    assert services["minio"]["environment"]["MINIO_ROOT_PASSWORD"] == values["MINIO_ROOT_PASSWORD"]
    assert services["api"]["environment"]["TRANSCODE_API_TOKEN"] == values["TRANSCODE_API_TOKEN"]
    for name in ("postgres", "minio", "prefect-server"):
        assert services[name].get("healthcheck"), f"{name} has no healthcheck"


@pytest.mark.parametrize("name", ["POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "TRANSCODE_API_TOKEN"])
def test_compose_config_refuses_a_missing_secret(tmp_path, name):
    proc = compose_config(filled_env(tmp_path, **{name: ""}))
    assert proc.returncode != 0, f"compose accepted an empty {name}"
    assert name in proc.stdout + proc.stderr and "infra/.env" in proc.stdout + proc.stderr


def test_no_literal_secrets_and_every_variable_documented():
    compose_text = COMPOSE.read_text()
    raw = yaml.safe_load(compose_text)
    for service, spec in raw["services"].items():
        env = spec.get("environment") or {}
        for key, value in (env.items() if isinstance(env, dict) else (e.split("=", 1) for e in env)):
            if SECRET_NAME.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), \
                    f"{service}: {key} must come from the env file with `:?`, not {value!r}"
    assert not re.search(r"(?i)(password|secret|token)\s*[:=]\s*['\"]?(?!\$\{)[A-Za-z0-9/+]{6,}", compose_text)
    for line in ENV_EXAMPLE.read_text().splitlines():
        if re.match(r"^[A-Z_][A-Z0-9_]*=", line):
            assert line.endswith("="), f"env.example must hold no value: {line}"
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", compose_text))
    assert used <= set(example_names()), f"not in env.example: {sorted(used - set(example_names()))}"
    assert (ROOT / ".dockerignore").read_text().count(".env")


def test_docker_setup_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "infra" / "docker-setup.sh")]).returncode == 0


# --- the image -----------------------------------------------------------------------------


def _docker_host_or_skip(root: Path) -> docker_host.DockerHost:
    # TRANSCODE_DOCKER_DATA_ROOT: a folder kept between runs (images, build cache) makes a
    # rerun rebuild only what changed; by default everything is made afresh under tmp
    data_root = os.environ.get("TRANSCODE_DOCKER_DATA_ROOT") or None
    try:
        return docker_host.start_dockerd(root, data_root=Path(data_root) if data_root else None)
    except docker_host.DockerError as exc:
        _unavailable(f"dockerd cannot start here: {exc}")


@pytest.fixture(scope="module")
def docker_image(tmp_path_factory):
    """(DockerHost, image tag): a private dockerd with the base and the project image built.

    Timings of each step are printed (pytest -s shows them) and kept on the host object.
    """
    root = tmp_path_factory.mktemp("docker")
    started = time.monotonic()
    host = _docker_host_or_skip(root)
    timings = {"dockerd": time.monotonic() - started}
    try:
        mark = time.monotonic()
        base = docker_host.build_base_image(host, log=root / "base.log")
        timings["base image"] = time.monotonic() - mark
        probe = host.docker("run", "--rm", "--network", "host", base, "true", check=False, timeout=120)
        if probe.returncode != 0:  # the engine runs but cannot start containers on this kernel
            _unavailable(f"dockerd cannot run a container here: {(probe.stdout + probe.stderr).strip()[-800:]}")
        mark = time.monotonic()
        tag = docker_host.build_project_image(host, base=base, log=root / "build.log")
        timings["project image"] = time.monotonic() - mark
        host.timings = timings
        print("\ndocker image timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()), file=sys.stderr)
        yield host, tag
    finally:
        host.stop()


def _pem_blocks(text: str) -> list[str]:
    return re.findall(r"-----BEGIN CERTIFICATE-----\n.*?-----END CERTIFICATE-----", text, re.S)


def run_in(host, tag, *command: str, workdir: str | None = None, user: str | None = None) -> str:
    args = ["run", "--rm", "--network", "host"]
    if workdir:
        args += ["--workdir", workdir]
    if user:
        args += ["--user", user]
    proc = host.docker(*args, tag, *command, check=False, timeout=300)
    assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.mark.timeout(2400)
def test_image_runs_the_project(docker_image):
    host, tag = docker_image
    assert "usage: transcode" in run_in(host, tag, "transcode", "--help")
    assert run_in(host, tag, "ffmpeg", "-hide_banner", "-version").startswith("ffmpeg version")
    assert "ffprobe version" in run_in(host, tag, "ffprobe", "-hide_banner", "-version")
    out = run_in(host, tag, "python", "-c",
                 "import os, flows.transcode, prefect_aws, transcoder.player as p; "
                 "print(os.getcwd()); print(flows.transcode.__file__); print(p.hlsjs_path())",
                 workdir="/opt/transcoder")
    assert out.split() == ["/opt/transcoder", "/opt/transcoder/flows/transcode.py",
                           "/opt/transcoder/player/node_modules/hls.js/dist/hls.min.js"]
    # the installed package is the code in /opt/transcoder, whatever the working directory
    out = run_in(host, tag, "python", "-c", "import transcoder.settings as s; print(s.REPO_ROOT)", workdir="/tmp")
    assert out.strip() == "/opt/transcoder"
    env = run_in(host, tag, "env")
    for line in ("TRANSCODE_CODE_DIR=/opt/transcoder", "PREFECT_HOME=/tmp/prefect",
                 "PREFECT_SERVER_ANALYTICS_ENABLED=false", "TRANSCODE_DATA_DIR=/tmp/transcode"):
        assert line in env.splitlines()


@pytest.mark.timeout(2400)
def test_image_is_unprivileged_and_keeps_no_build_files(docker_image):
    host, tag = docker_image
    assert run_in(host, tag, "id", "-u").strip() != "0"
    assert host.docker("image", "inspect", "--format", "{{.Config.User}}", tag).stdout.strip() not in ("", "0", "root")
    # no build files, no pip configuration, no npm; of node_modules only hls.min.js
    found = run_in(host, tag, "sh", "-c",
                   "find / -xdev \\( -name '.docker-build*' -o -name ca.crt -o -name pip.conf -o -path /tmp/build "
                   "-o -name npm \\) -print; find /opt/transcoder/player/node_modules -type f; "
                   "env | grep -i '^pip_' || true", user="0")
    assert found.split() == ["/opt/transcoder/player/node_modules/hls.js/dist/hls.min.js"], found
    # no certificate of this machine's CA bundle other than the public ones the image ships
    # anyway (Debian's bundle, certifi's and botocore's copies of Mozilla's)
    bundle = docker_host.machine_ca_bundle()
    if bundle:
        image_bundle = run_in(host, tag, "sh", "-c", "cat /etc/ssl/certs/ca-certificates.crt; "
                              "find /opt/venv -name cacert.pem -exec cat {} +")
        extra = [cert for cert in _pem_blocks(bundle.read_text()) if cert not in image_bundle]
        lines = sorted({cert.splitlines()[len(cert.splitlines()) // 2] for cert in extra})
        if lines:
            proc = host.docker("run", "--rm", "-i", "--user", "0", tag, "sh", "-c",
                               "grep -rlF -f /dev/stdin /etc /opt /tmp /home /root /usr/local /usr/share/ca-certificates"
                               " 2>/dev/null || true", input="\n".join(lines) + "\n", timeout=300)
            assert not proc.stdout.strip(), f"this machine's CA certificates are in the image: {proc.stdout}"
    history = host.docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", tag).stdout
    assert "PIP_CERT" not in history and ".docker-build" not in history
    assert not (ROOT / docker_host.BUILD_FILES).exists(), "build files left in the context"


# --- a real docker worker ------------------------------------------------------------------


def test_docker_worker_runs_the_deployments_in_containers(docker_image, s3_server, prefect_server, media):
    """prefect.yaml on a `docker` pool: a docker worker starts one container of the project
    image per flow run (parent and every stage), which reach the test's Prefect server and
    SeaweedFS over the host network; the video comes out in storage.

    (The same server holds test_deployments.py's deployments of the same names: this test
    deploys over them, after that module's workers are gone.)
    """
    from prefect.settings import PREFECT_API_URL

    from tests.checks import child_runs, delete_project_deployments, wait_final
    from transcoder.settings import Settings
    from transcoder.stack import save_blocks

    host, tag = docker_image
    bucket, pool = "dkr-" + secrets.token_hex(5), "docker-" + secrets.token_hex(4)
    s3 = s3_server.client()
    s3.create_bucket(Bucket=bucket)
    save_blocks(s3_server.endpoint, s3_server.access_key, s3_server.secret_key,
                Settings(bucket=bucket, storage_block=bucket))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "TRANSCODE_"))}
    env = {**base, **host.env, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "TRANSCODE_STORAGE_BLOCK": bucket, "TRANSCODE_IMAGE": tag,
           "TRANSCODE_DOCKER_NETWORK": "host", "TRANSCODE_CODE_DIR": "/opt/transcoder", "PYTHONPATH": str(ROOT)}
    setup = subprocess.run([sys.executable, "-m", "deployments.setup", "--pool", pool, "--pool-type", "docker",
                            "--deploy", "--paused"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    s3.upload_file(str(media("standard", seconds=4)), bucket, "in/clip.mp4")
    prefect = str(Path(sys.executable).parent / "prefect")
    log_path = Path(host.root) / "docker-worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen([prefect, "worker", "start", "--pool", pool, "--type", "docker", "--name", "docker-1",
                                   "--limit", "4"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    try:
        run = subprocess.run([prefect, "deployment", "run", "transcode-video/default",
                              "-p", f"source=s3://{bucket}/in/clip.mp4", "-p", "renditions=144p",
                              "-p", "chunk_seconds=2", "-p", "gop_seconds=1", "-p", "batch_chunks=1"],
                             env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        flow_run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", run.stdout).group(1)
        final = wait_final(flow_run_id, timeout=900)
    finally:
        os.killpg(worker.pid, 9)  # a worker in the background ignores SIGTERM
        worker.wait(timeout=30)
        delete_project_deployments()
    assert final.state.is_completed(), (final.state, log_path.read_text()[-4000:])
    runs = [final] + child_runs(flow_run_id)
    assert len(runs) == 1 + 3 + 2 + 1  # parent, download/probe/split, two batches, merge
    for r in runs:
        assert r.labels.get("prefect.worker.type") == "docker" and r.labels.get("prefect.worker.name") == "docker-1"
        assert r.infrastructure_pid  # the container it ran in
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    video_id = next(k.split("/")[0] for k in keys if k.endswith("/report.json"))
    assert f"encoded/{video_id}_144p.mp4" in keys and f"{video_id}/hls/master.m3u8" in keys
    # containers are removed when their run ends (auto_remove; the parent's may still be exiting)
    deadline = time.monotonic() + 60
    while host.docker("ps", "-aq", "--filter", "label=io.prefect.flow-run-id").stdout.strip():
        assert time.monotonic() < deadline, host.docker("ps", "-a").stdout
        time.sleep(2)
