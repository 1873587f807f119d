"""The embedded default as a user meets it: `transcode up`, `run` with nothing configured, `down`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from transcoder.stack import free_port


def cli(args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", "transcoder.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_up_run_down(tmp_path, media):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "AWS_", "TRANSCODE_"))}
    env.update({"TRANSCODE_DATA_DIR": str(tmp_path / "data"), "TRANSCODE_PREFECT_PORT": str(free_port()),
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
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
        again = cli(["up"], env)  # idempotent: the same servers
        assert again.returncode == 0 and again.stdout == up.stdout
    finally:
        down = cli(["down"], env)
    assert down.returncode == 0 and "stopped" in down.stdout
    assert cli(["status"], env).returncode == 1
