"""Static security checks of the project's own code (bandit), run with the suite.

Medium or high severity fails. Low-severity findings are all `subprocess` calls with an
argument list and no shell (ffmpeg, the servers the tests start): the design, not a bug.
Known vulnerabilities in dependencies are checked by infra/audit.sh (it needs PyPI)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ["transcoder", "tasks", "flows", "ingest_api", "deployments"]


def test_bandit_finds_nothing_of_medium_or_high_severity():
    proc = subprocess.run([sys.executable, "-m", "bandit", "-q", "-r", *PACKAGES, "-f", "json"], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    report = json.loads(proc.stdout)
    serious = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]
               if r["issue_severity"] in ("MEDIUM", "HIGH")]
    assert not serious, "\n".join(serious)
    low = {r["test_id"] for r in report["results"]}
    assert low <= {"B603", "B404", "B607", "B112"}, low  # a new kind of finding: look at it, then decide
    assert report["metrics"]["_totals"]["loc"] > 3000  # it did scan the code
