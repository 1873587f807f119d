"""A private Docker engine and the project's images, built without an image registry.

    python -m deployments.docker_host start        --root DIR   # prints `export DOCKER_HOST=...`
    python -m deployments.docker_host build-base   --root DIR [--tag local/bookworm-py:latest]
    python -m deployments.docker_host build-image  --root DIR [--base TAG] [--tag transcoder:local]
    python -m deployments.docker_host stop         --root DIR

Without `--root`, `build-base` and `build-image` use the engine that DOCKER_HOST (or the
default socket) names, for machines that have Docker already.

- `start_dockerd(root)` runs `dockerd` (root needed) with everything under `root`: data,
  exec state, pid file and socket, no bridge and no iptables rules (containers use
  `--network host`), so the machine's own Docker, network and firewall are left alone.
- `build_base_image()` makes a Debian image with python3, venv, CA certificates and ffmpeg
  from the machine's own apt sources (`mmdebstrap | docker import`): no registry needed.
- `build_project_image()` builds the Dockerfile with the legacy builder on the host network;
  pip inside the build trusts this machine's CA bundle and uses its http(s) package indexes,
  both copied into the build context for the build only (a builder stage the image does
  not keep).

Needs `infra/docker-setup.sh` (docker.io, apparmor, mmdebstrap).
"""

from __future__ import annotations

import argparse
import configparser
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_TAG = "local/bookworm-py:latest"
IMAGE_TAG = "transcoder:local"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "ffmpeg")
HLSJS = Path("player/node_modules/hls.js/dist/hls.min.js")
# build-time files (CA bundle, pip.conf) for the Dockerfile's builder stage (`COPY .docker-build*`);
# a fixed name: the build cache keys on it, so a random one would redo the pip step every time
BUILD_FILES = ".docker-build"
STATE_FILE = "dockerd.json"
# a unix socket path holds at most 107 bytes; containerd's lives 35 bytes under the exec root
MAX_SHORT_ROOT = 60


class DockerError(RuntimeError):
    pass


@dataclass
class DockerHost:
    """A Docker engine to talk to: `env` names it (DOCKER_HOST); `stop()` ends ours."""

    host: str                          # unix:///.../docker.sock
    root: Path | None = None           # our dockerd's folder; None for someone else's engine
    exec_root: Path | None = None
    data_root: Path | None = None
    pid: int | None = None
    log: Path | None = None
    short_dir: Path | None = None      # a folder we made in /tmp for the socket (long roots)
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def env(self) -> dict[str, str]:
        return {"DOCKER_HOST": self.host}

    def environ(self, **extra: str) -> dict[str, str]:
        return {**os.environ, **self.env, **extra}

    def docker(self, *args: str, check: bool = True, timeout: float | None = 600, input: str | None = None,
               capture: bool = True, **env: str) -> subprocess.CompletedProcess:
        """`docker ARGS` against this engine; raises DockerError with its output on failure."""
        proc = subprocess.run([docker_client(), *args], env=self.environ(**env), text=True, input=input,
                              capture_output=capture, timeout=timeout, stdin=None if input else subprocess.DEVNULL)
        if check and proc.returncode != 0:
            out = ((proc.stdout or "") + (proc.stderr or "")).strip()
            raise DockerError(f"docker {' '.join(args[:3])} failed (exit {proc.returncode}): {out[-3000:]}")
        return proc

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", "--format", "{{.Id}}", tag, check=False).returncode == 0

    def answers(self) -> bool:
        try:
            return self.docker("version", "--format", "{{.Server.Version}}", check=False, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def stop(self, timeout: float = 30) -> None:
        """Stop our dockerd, its containerd and shims; unmount what they left under our folders.

        Removes nothing but the socket folder this module made in /tmp (long roots only).
        Does nothing to an engine we did not start.
        """
        if self.root is None:
            return
        pids = [p for p in (self.pid, _read_pid(self.exec_root / "containerd" / "containerd.pid")) if p]
        if self.pid and _alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)  # dockerd stops its containers and its containerd
            _wait_gone(self.pid, timeout)
        # whatever is left that runs from our exec root (containerd, shims of running containers)
        pids += _pids_using(str(self.exec_root))
        for pid in dict.fromkeys(pids):
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                _wait_gone(pid, 10)
        if self._proc is not None:
            self._proc.wait(timeout=10)
        for folder in (self.exec_root, self.data_root):
            unmount_under(folder)
        if self.short_dir and self.short_dir.exists():
            shutil.rmtree(self.short_dir, ignore_errors=True)
        state = self.root / STATE_FILE
        if state.exists():
            state.unlink()
        self.pid = None


def docker_client() -> str:
    found = shutil.which("docker")
    if not found:
        raise DockerError("the docker client is not installed: run `bash infra/docker-setup.sh`")
    return found


def from_env() -> DockerHost:
    """The engine DOCKER_HOST names (or the default socket): someone else's, never stopped."""
    return DockerHost(host=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))


def connect(root: Path) -> DockerHost:
    """The dockerd that `start_dockerd(root)` left running (e.g. from the CLI)."""
    root = Path(root).resolve()
    state = root / STATE_FILE
    if not state.is_file():
        raise DockerError(f"no dockerd was started under {root} (no {state}); run `start --root {root}` first")
    data = json.loads(state.read_text())
    host = DockerHost(host=data["host"], root=root, exec_root=Path(data["exec_root"]),
                      data_root=Path(data["data_root"]), pid=data["pid"], log=Path(data["log"]),
                      short_dir=Path(data["short_dir"]) if data.get("short_dir") else None)
    if not (_alive(host.pid) and host.answers()):
        raise DockerError(f"the dockerd started under {root} (pid {host.pid}) is not answering; see {host.log}")
    return host


def start_dockerd(root: Path, timeout: float = 90, bridge: bool = False, data_root: Path | None = None) -> DockerHost:
    """Start a private dockerd whose state lives under `root`; wait until it answers.

    `data_root` (default `root/data`) holds images and the build cache: a folder kept
    between runs makes the next build reuse them (never two dockerds on one data root).

    `bridge=False` (the default) gives it no bridge, no iptables rules and no IP forwarding:
    the machine's network is left as it was, and containers run with `--network host` or none.
    Raises DockerError (a RuntimeError) saying why when it cannot start.
    """
    root = Path(root).resolve()
    if os.geteuid() != 0:
        raise DockerError("dockerd must run as root (this process runs as uid %d)" % os.geteuid())
    dockerd = shutil.which("dockerd") or next((p for p in ("/usr/sbin/dockerd", "/usr/bin/dockerd")
                                                if os.access(p, os.X_OK)), None)
    if not dockerd:
        raise DockerError("dockerd is not installed: run `bash infra/docker-setup.sh` (apt-get install docker.io)")
    docker_client()
    root.mkdir(parents=True, exist_ok=True)
    if (root / STATE_FILE).exists():
        try:
            return connect(root)
        except DockerError:
            (root / STATE_FILE).unlink()
    short_dir = None
    if len(str(root)) > MAX_SHORT_ROOT:  # sockets need short paths: keep them in /tmp
        short_dir = Path(tempfile.mkdtemp(prefix="dk-", dir="/tmp"))  # mkdtemp: private and unique  # nosec B108
        run_dir = short_dir
    else:
        run_dir = root
    data_root, exec_root = Path(data_root).resolve() if data_root else root / "data", run_dir / "exec"
    users = _pids_using(f"--data-root={data_root}", exact=True)
    if users:
        raise DockerError(f"another dockerd (pid {users[0]}) already uses {data_root}")
    sock, pidfile, log = run_dir / "docker.sock", root / "dockerd.pid", root / "dockerd.log"
    config = root / "daemon.json"
    config.write_text("{}\n")  # not the machine's /etc/docker/daemon.json
    argv = [dockerd, f"--data-root={data_root}", f"--exec-root={exec_root}", f"--pidfile={pidfile}",
            f"--host=unix://{sock}", f"--config-file={config}", "--group=root"]
    if not bridge:
        argv += ["--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    host = DockerHost(host=f"unix://{sock}", root=root, exec_root=exec_root, data_root=data_root, pid=proc.pid,
                      log=log, short_dir=short_dir, _proc=proc)
    deadline = time.monotonic() + timeout
    while not host.answers():
        if proc.poll() is not None:
            host.stop()
            raise DockerError(f"dockerd exited with status {proc.returncode} at start: {_why(log)} (log: {log})")
        if time.monotonic() > deadline:
            host.stop()
            raise DockerError(f"dockerd did not answer within {timeout:.0f} s: {_why(log)} (log: {log})")
        time.sleep(0.3)
    (root / STATE_FILE).write_text(json.dumps({
        "host": host.host, "exec_root": str(exec_root), "data_root": str(data_root), "pid": proc.pid,
        "log": str(log), "short_dir": str(short_dir) if short_dir else None}) + "\n")
    return host


def _why(log: Path, lines: int = 6) -> str:
    """The lines of dockerd's log that say what went wrong (else its last lines)."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    bad = [ln for ln in text if re.search(r"level=(fatal|error)|failed to start|permission denied|"
                                         r"operation not permitted", ln, re.I)]
    return " | ".join((bad or text)[-lines:]) or "(empty log)"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _pids_using(path: str, exact: bool = False) -> list[int]:
    """Processes whose command line names `path` (our containerd and its shims), or has it
    as one whole argument (`exact`)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(path.encode() == arg if exact else path.encode() in arg for arg in argv):
            found.append(int(entry.name))
    return found


def unmount_under(folder: Path | None) -> list[str]:
    """Unmount every mount point under `folder` (netns files, overlays), deepest first."""
    if folder is None:
        return []
    prefix = str(Path(folder).resolve()).rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as info:
        for line in info:
            point = line.split()[4].replace("\\040", " ")
            if point.startswith(prefix) or point + "/" == prefix:
                points.append(point)
    for point in sorted(set(points), key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", point], capture_output=True)
    return points


# --- the base image ------------------------------------------------------------------------


def debian_codename() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"') or "bookworm"
    except OSError:
        pass
    return "bookworm"


def debian_mirror_lines(codename: str | None = None, etc: Path = Path("/etc/apt")) -> list[str]:
    """This machine's apt sources for `codename` as one-line `deb` entries (for mmdebstrap).

    Reads sources.list, sources.list.d/*.list and deb822 sources.list.d/*.sources; keeps
    enabled binary (`deb`) entries whose suite is the release or one of its pockets
    (-updates, -security, ...), so third-party repositories stay out of the image.
    """
    codename = codename or debian_codename()
    entries: list[tuple[str, str, str, list[str]]] = []  # options, uri, suite, components
    files = [etc / "sources.list"] if (etc / "sources.list").is_file() else []
    files += sorted(p for p in (etc / "sources.list.d").glob("*") if p.suffix in (".list", ".sources"))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":
            entries += _deb822_entries(text)
        else:
            entries += _one_line_entries(text)
    lines = []
    for options, uri, suite, comps in entries:
        if suite == codename or suite.startswith((codename + "-", codename + "/")):
            line = f"deb {'[' + options + '] ' if options else ''}{uri} {suite} {' '.join(comps)}".strip()
            if line not in lines:
                lines.append(line)
    return lines


def _one_line_entries(text: str):
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        options = ""
        rest = line[4:].strip()
        if rest.startswith("["):
            options, rest = rest[1:].split("]", 1)
            options = " ".join(o for o in options.split() if o.startswith(("signed-by=", "arch=")))
            rest = rest.strip()
        parts = rest.split()
        if len(parts) >= 2:
            yield options, parts[0], parts[1], parts[2:]


def _deb822_entries(text: str):
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for raw in stanza.splitlines():
            if raw.startswith("#"):
                continue
            if raw[:1] in (" ", "\t") and key:  # a continuation line (e.g. an inline key)
                fields[key] += "\n" + raw.strip()
                continue
            if ":" in raw:
                key, value = raw.split(":", 1)
                key = key.strip().lower()
                fields[key] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes").lower() == "no":
            continue
        options = []
        signed = fields.get("signed-by", "")
        if signed and "\n" not in signed and signed.startswith("/"):
            options.append(f"signed-by={signed}")
        if fields.get("architectures"):
            options.append(f"arch={','.join(fields['architectures'].split())}")
        for uri in fields.get("uris", "").split():
            for suite in fields.get("suites", "").split():
                yield " ".join(options), uri, suite, fields.get("components", "").split()


def build_base_image(host: DockerHost, tag: str = BASE_TAG, packages: tuple[str, ...] = BASE_PACKAGES,
                     codename: str | None = None, mirrors: list[str] | None = None, force: bool = False,
                     log: Path | None = None) -> str:
    """`mmdebstrap --variant=minbase ... | docker import`: Debian with python3 and ffmpeg.

    Uses the machine's own Debian mirrors; skipped when `tag` exists (unless `force`).
    Man pages, docs (but copyright files) and translations are left out.
    """
    if not force and host.image_exists(tag):
        return tag
    mmdebstrap = shutil.which("mmdebstrap")
    if not mmdebstrap:
        raise DockerError("mmdebstrap is not installed: run `bash infra/docker-setup.sh`")
    codename = codename or debian_codename()
    mirrors = mirrors if mirrors is not None else debian_mirror_lines(codename)
    if not mirrors:
        mirrors = [f"deb http://deb.debian.org/debian {codename} main"]
    argv = [mmdebstrap, "--quiet", "--variant=minbase", f"--include={','.join(packages)}",
            "--aptopt=Acquire::Languages \"none\"",
            "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/info/*",
            "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--customize-hook=rm -rf \"$1\"/var/lib/apt/lists/* \"$1\"/var/cache/apt/*.bin",
            "--format=tar", codename, "-", *mirrors]
    changes = ["ENV LANG=C.UTF-8", "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               'CMD ["/bin/bash"]']
    importer = [docker_client(), "import", *[a for c in changes for a in ("--change", c)], "-", tag]
    log_file = open(log, "ab") if log else tempfile.TemporaryFile()
    with log_file:
        debstrap = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log_file, stdin=subprocess.DEVNULL)
        imported = subprocess.run(importer, stdin=debstrap.stdout, env=host.environ(), capture_output=True,
                                  text=True)
        debstrap.stdout.close()
        rc = debstrap.wait()
        if rc != 0 or imported.returncode != 0:
            log_file.seek(0)
            why = log_file.read().decode(errors="replace")[-2000:] if not log else f"see {log}"
            raise DockerError(f"base image {tag} failed: mmdebstrap exit {rc}, docker import exit "
                              f"{imported.returncode}: {imported.stderr.strip()[-1000:]} {why}")
    return tag


# --- the project image ---------------------------------------------------------------------


def machine_ca_bundle() -> Path | None:
    """The CA bundle this machine's pip trusts: PIP_CERT, pip's `cert`, then the usual ones."""
    candidates = [os.environ.get("PIP_CERT"), _pip_config().get("cert"), os.environ.get("REQUESTS_CA_BUNDLE"),
                  os.environ.get("SSL_CERT_FILE"), "/etc/ssl/certs/ca-certificates.crt"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _pip_config() -> dict[str, str]:
    """pip's `global`/`install` settings from the machine's files (later files win), then env."""
    files = [Path("/etc/pip.conf"), *sorted(Path("/etc/xdg/pip").glob("pip.conf")),
             Path.home() / ".pip" / "pip.conf", Path.home() / ".config" / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE") and os.environ["PIP_CONFIG_FILE"] != os.devnull:
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    found: dict[str, str] = {}
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except (configparser.Error, OSError):
            continue
        for section in ("global", "install"):
            if parser.has_section(section):
                found.update({k: v for k, v in parser.items(section)})
    for name in ("index-url", "extra-index-url", "trusted-host", "cert"):
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env:
            found[name] = env
    return found


def pip_index_config() -> dict[str, str]:
    """The machine's pip index settings a build can use: http(s) indexes only (file:// and
    find-links are paths on this machine, not in the build)."""
    conf = _pip_config()
    out = {}
    for name in ("index-url", "extra-index-url"):
        urls = [u for u in conf.get(name, "").split() if u.startswith(("http://", "https://"))]
        if urls:
            out[name] = " ".join(urls)
    if conf.get("trusted-host") and out:
        out["trusted-host"] = conf["trusted-host"]
    return out


def build_project_image(host: DockerHost, base: str = BASE_TAG, tag: str = IMAGE_TAG, context: Path = REPO_ROOT,
                        log: Path | None = None, timeout: float = 1800) -> str:
    """`DOCKER_BUILDKIT=0 docker build --network host --build-arg BASE_IMAGE=base -t tag .`

    The machine's CA bundle and pip index settings go into `.docker-build/` in the
    context for this build only (the Dockerfile's builder stage reads them; the shipped
    stage does not copy them) and the folder is removed afterwards.
    """
    context = Path(context).resolve()
    if not (context / HLSJS).is_file():
        raise DockerError(f"{HLSJS} is missing: run `npm ci --prefix player` (make setup) first")
    files = context / BUILD_FILES
    files.mkdir(exist_ok=True)
    lock = os.open(files, os.O_RDONLY)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DockerError(f"another build from {context} is running (it holds {files})") from None
        for old in files.iterdir():
            old.unlink()
        ca = machine_ca_bundle()
        if ca:
            shutil.copyfile(ca, files / "ca.crt")
        index = pip_index_config()
        if index:
            (files / "pip.conf").write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in index.items()))
        argv = ["build", "--network", "host", "--build-arg", f"BASE_IMAGE={base}", "-t", tag]
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
            if os.environ.get(name):  # predefined build args: not kept in the image's history
                argv += ["--build-arg", name]
        argv.append(str(context))
        started = time.monotonic()
        proc = subprocess.run([docker_client(), *argv], env=host.environ(DOCKER_BUILDKIT="0"), text=True,
                              capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if log:
            with open(log, "a") as out:
                out.write(f"$ docker {' '.join(argv)}  ({time.monotonic() - started:.0f} s)\n"
                          f"{proc.stdout}{proc.stderr}\n")
        if proc.returncode != 0:
            raise DockerError(f"docker build of {tag} failed (exit {proc.returncode}):\n"
                              f"{(proc.stdout + proc.stderr)[-4000:]}")
    finally:
        shutil.rmtree(files, ignore_errors=True)
        os.close(lock)
    return tag


# --- command line --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.docker_host", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("start", "build-base", "build-image", "stop"):
        p = sub.add_parser(name)
        p.add_argument("--root", type=Path, required=name in ("start", "stop"),
                       help="the private dockerd's folder (without it: DOCKER_HOST's engine)")
        if name == "start":
            p.add_argument("--bridge", action="store_true", help="give it a bridge network and iptables rules")
            p.add_argument("--data-root", type=Path, help="images and build cache (default ROOT/data); keep it "
                           "between runs to reuse them")
        if name == "build-base":
            p.add_argument("--tag", default=BASE_TAG)
            p.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
        if name == "build-image":
            p.add_argument("--base", default=BASE_TAG, help="BASE_IMAGE (python:3.11-slim with a registry)")
            p.add_argument("--tag", default=IMAGE_TAG)
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            started = time.monotonic()
            host = start_dockerd(args.root, bridge=args.bridge, data_root=args.data_root)
            print(f"dockerd (pid {host.pid}) answers after {time.monotonic() - started:.1f} s; log: {host.log}",
                  file=sys.stderr)
            print(f"export DOCKER_HOST={host.host}")
        elif args.command == "stop":
            try:
                connect(args.root).stop()
            except DockerError as exc:
                print(f"nothing to stop: {exc}", file=sys.stderr)
        else:
            host = connect(args.root) if args.root else from_env()
            started = time.monotonic()
            if args.command == "build-base":
                existed = not args.force and host.image_exists(args.tag)
                build_base_image(host, args.tag, force=args.force)
                print(f"{args.tag}: {'exists' if existed else 'built'} ({time.monotonic() - started:.0f} s)")
            else:
                build_project_image(host, base=args.base, tag=args.tag)
                print(f"{args.tag}: built from {args.base} ({time.monotonic() - started:.0f} s)")
    except DockerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
