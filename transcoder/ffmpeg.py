"""Running ffmpeg and ffprobe: the only place that starts them.

Every command is logged with `shlex.join` so it can be pasted into a shell, runs in
its own process group with a timeout (a Prefect task timeout cannot kill a child),
and reads inputs through a protocol and demuxer whitelist: an input is hostile
until probed, and HLS/concat playlists can otherwise make ffmpeg read local files.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import subprocess
from functools import lru_cache
from pathlib import Path

from .errors import DiskFullError, FFmpegError, FFmpegTimeout
from .models import stable_hash

log = logging.getLogger("transcoder.ffmpeg")

FFMPEG = os.environ.get("TRANSCODE_FFMPEG", "ffmpeg")
FFPROBE = os.environ.get("TRANSCODE_FFPROBE", "ffprobe")

# Demuxers a source may be read with. Playlist-like demuxers (hls, concat, dash,
# image2 patterns, ...) are absent on purpose: they open other files by name.
SOURCE_FORMATS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,mpegts,avi,flv,mpeg,mpegvideo,asf,ogg,mxf,"
    "h264,hevc,m4v,ivf,yuv4mpegpipe,nut,wav,mp3,aac,flac,dv,gif"
)


def file_url(path: str | Path) -> str:
    """A path that can never be read as a protocol or an option."""
    return "file:" + str(Path(path).resolve())


# The stored original read over HTTP(S) through a presigned link (ingest.chunk_source):
# only these protocols, and only for that one input.
REMOTE_PROTOCOLS = "http,https,tcp,tls"
_SIGNED = re.compile(r"([?&]X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s']+")


def is_url(source: str | Path) -> bool:
    return isinstance(source, str) and source.startswith(("http://", "https://"))


def redact_text(text: str) -> str:
    """Text as it may be logged: a presigned link's signature and credential hidden (in a
    command, and in ffmpeg's own messages, which name the link it failed to read)."""
    return _SIGNED.sub(r"\1...", text)


def redact(argv: list[str]) -> list[str]:
    return [redact_text(a) for a in argv]


def source_input(path: str | Path, seek: float | None = None, max_pixels: int | None = None) -> list[str]:
    """Input options for reading an untrusted source: a local file, or the stored original
    through a presigned http(s) link (ffmpeg then fetches only the byte ranges it reads)."""
    remote = is_url(path)
    args = ["-protocol_whitelist", REMOTE_PROTOCOLS if remote else "file", "-format_whitelist", SOURCE_FORMATS]
    if remote:  # a dropped connection resumes at the same offset instead of failing the chunk;
        # a fixed receive buffer: with the kernel's autotuning (here up to 32 MB) each connection
        # that a seek abandons had carried ~4 MB ffmpeg never read; ~1.2 MB with this (measured)
        args += ["-reconnect", "1", "-reconnect_on_network_error", "1", "-reconnect_delay_max", "4",
                 "-recv_buffer_size", str(1 << 20)]
        if str(path).startswith("https://"):  # ffmpeg's TLS does not check certificates unless asked
            args += ["-tls_verify", "1"]
    if max_pixels:
        args += ["-max_pixels", str(max_pixels)]
    if seek is not None:
        args += ["-ss", f"{seek:.6f}"]
    return args + ["-i", str(path) if remote else file_url(path)]


def trusted_input(path: str | Path) -> list[str]:
    """Input options for a file this project wrote itself."""
    return ["-protocol_whitelist", "file", "-i", file_url(path)]


INFO_LOG = ["-loglevel", "level+info", "-nostats"]  # for encoder summaries; errors keep their [error] tag


def run(argv: list[str], timeout: float, what: str) -> subprocess.CompletedProcess:
    """Run one ffmpeg/ffprobe command; raise FFmpegError with its stderr on failure.

    With `INFO_LOG` in argv the error keeps only the lines above [info] level, so the
    message shows what went wrong rather than encoder statistics.
    """
    log.info("%s: %s", what, shlex.join(redact(argv)))
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: a timeout kills all of it
        env={**os.environ, "SVT_LOG": "1"},  # SVT-AV1 logs info lines whatever -v says; 1: errors only
        text=True,
        errors="replace",
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise FFmpegTimeout(f"{what}: timed out after {timeout:.0f} s and was killed", redact(argv),
                            _problems(argv, err)) from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    if proc.returncode != 0:
        if "No space left on device" in err:
            raise DiskFullError(what)
        if proc.returncode < 0:
            reason = f"killed by signal {signal.Signals(-proc.returncode).name}"
        else:
            reason = f"exit status {proc.returncode}"
        raise FFmpegError(f"{what}: ffmpeg failed ({reason})", redact(argv), _problems(argv, err))
    return subprocess.CompletedProcess(argv, proc.returncode, out, redact_text(err))


def _problems(argv: list[str], stderr: str) -> str:
    stderr = redact_text(stderr)
    if "level+info" not in argv:
        return stderr
    return "\n".join(line for line in stderr.splitlines() if "[info]" not in line and "[verbose]" not in line)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@lru_cache(maxsize=1)
def encoder_version() -> str:
    """A short hash of the ffmpeg build: a new ffmpeg means new cache keys."""
    out = subprocess.run([FFMPEG, "-hide_banner", "-version"], capture_output=True, text=True, check=True).stdout
    first = out.splitlines()[0] if out else "unknown"
    return "ff" + stable_hash({"ffmpeg": first, "pipeline": PIPELINE_VERSION})[:12]


# Bump when a change to argv building changes the pictures of an unchanged profile.
PIPELINE_VERSION = 3  # 3: chunk timestamps rounded (setpts), not truncated
