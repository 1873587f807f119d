"""A throwaway PostgreSQL for the Prefect server of the load test: Debian's `postgresql`
binaries (infra/setup.sh --test installs them), a cluster in a temporary folder, loopback
only, a password made up at start (scram-sha-256), removed at the end.

PostgreSQL refuses to run as root: as root the cluster belongs to the `postgres` user
(the package creates it) and its commands run through `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path



def bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql; `make test` does it)")


class Postgres:
    def __init__(self, port: int, database: str = "prefect"):
        self.port, self.database = port, database
        self.bin = bin_dir()
        self.root = Path(tempfile.mkdtemp(prefix="transcode-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.password = secrets.token_urlsafe(24)
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            self.as_user = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def _run(self, *argv: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([*self.as_user, *argv], check=True, capture_output=True, text=True, timeout=120,
                              **kwargs)

    def start(self) -> str:
        pwfile = self.root / "pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.password + "\n")
        if self.as_user:
            pw = pwd.getpwnam("postgres")
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        try:
            self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                      f"--pwfile={pwfile}", "-E", "UTF8", "--no-instructions")
        finally:
            pwfile.unlink()
        # loopback only; the socket in the cluster's own folder (not /run/postgresql)
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        env = {**os.environ, "PGPASSWORD": self.password}
        self._run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  self.database, env=env)
        return self.url

    def pids(self) -> list[int]:
        """The postmaster's pid (its backends are its children)."""
        try:
            return [int((self.data / "postmaster.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
            except subprocess.SubprocessError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
