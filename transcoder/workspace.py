"""This machine's scratch space: one fresh folder per task attempt.

Two runs of the same video (or a retry beside a straggler) never write the same file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .errors import DiskFullError, is_disk_full
from .settings import Settings


def write_aside(dst: Path, write: Callable[[Path], None], what: str) -> Path:
    """`write(tmp)` to a name beside `dst`, then rename it to `dst`: a failure leaves nothing
    under the final name, and a full disk is a DiskFullError that names `what`."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        write(tmp)
        os.replace(tmp, dst)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if is_disk_full(exc) or is_disk_full(exc.__context__ or exc):  # boto3 wraps the OSError
            raise DiskFullError(what) from None
        raise
    return dst


def _scratch_root(settings: Settings, video_id: str) -> Path:
    return settings.work_dir / video_id / "scratch"


def scratch_dir(settings: Settings, video_id: str, name: str) -> Path:
    root = _scratch_root(settings, video_id)
    try:
        root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(f"scratch folder for {name}") from None
        raise


def remove_scratch(settings: Settings, video_id: str, keep_recent: float = 3600.0) -> None:
    """This machine's files of a video, except task folders touched in the last `keep_recent`
    seconds: another run of the same video (a second worker process, a retry beside a
    straggler) may still be working in one (its thumbnails folder vanished mid-task, seen in
    test_chaos). Every task removes its own folder when it ends; this catches what crashes left."""
    root = settings.work_dir / video_id
    scratch = _scratch_root(settings, video_id)
    now = time.time()
    for entry in list(root.iterdir()) if root.is_dir() else []:
        if entry == scratch:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    for entry in list(scratch.iterdir()) if scratch.is_dir() else []:
        try:
            stale = now - entry.stat().st_mtime > keep_recent
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)


def out_of_space(path: Path, margin: int = 1 << 20) -> bool:
    """Whether the filesystem holding `path` has less than `margin` bytes left.

    ffmpeg's MPEG-TS muxer ignores write errors (a full disk gives a truncated file and
    exit status 0), so a failed check of a fresh output asks this before blaming the input."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin
