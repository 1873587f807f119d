"""Ingest: a local path, an `s3://bucket/key` or an http(s) URL → the stored source.

The `video_id` is the first 16 hex digits of the content's sha256, so the same bytes
always land in the same place and a resubmission is a cache hit.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

from . import keys
from .errors import BadInputError
from .models import Chunk, Plan, SourceObject
from .settings import Settings
from .storage import Storage
from .workspace import write_aside

_EXT = re.compile(r"^[a-z0-9]{1,8}$")
T = TypeVar("T")


# Object names taken for videos by the bucket pickup and the bucket notifications (others are
# sidecars, folders, outputs).
MEDIA_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg", ".mxf",
                  ".flv", ".wmv", ".ogv", ".3gp")


def sha256_file(path: Path) -> str:
    # read into one 256 KiB buffer (hashlib.file_digest), not a new 1 MiB block a read: the
    # merge hashes 16 segments at once, and those blocks made its worker's peak (+6 MiB)
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def sha256_local(path: Path, settings: Settings) -> str:
    """sha256 of a user's file, remembered while the file is unchanged.

    A rerun of a large source would otherwise spend seconds hashing it again. The stamp
    is what git's index trusts: device, inode, size, and modification and change times
    in nanoseconds (any write changes the change time).
    """
    sha = remembered_sha256(path, settings)
    if sha is not None:
        return sha
    entry, stamp = _hash_entry(path, settings)  # before reading: a write meanwhile changes it
    sha = sha256_file(path)
    _remember(entry, stamp, sha)
    return sha


def remembered_sha256(path: Path, settings: Settings) -> str | None:
    """The sha256 `sha256_local` remembered for this file as it is now, else None."""
    entry, stamp = _hash_entry(path, settings)
    remembered, sha = _read_entry(entry)
    return sha if remembered == stamp else None


def restamp(path: Path, settings: Settings) -> None:
    """Keep the remembered sha256 of a file whose change time moved with its contents
    untouched: a hard link to it (the ingest's local copy) counts as a change of the inode.
    Only when device, inode, size and modification time are still the ones hashed."""
    try:
        entry, stamp = _hash_entry(path, settings)
    except OSError:
        return
    remembered, sha = _read_entry(entry)
    if sha and remembered != stamp and remembered.rsplit(":", 1)[0] == stamp.rsplit(":", 1)[0]:
        _remember(entry, stamp, sha)


def _read_entry(entry: Path) -> tuple[str, str | None]:
    """(stamp, sha256) of a remembered hash; ("", None) when there is none."""
    try:
        remembered, _, sha = entry.read_text().partition(" ")
    except OSError:
        return "", None
    return (remembered, sha) if len(sha) == 64 else ("", None)


def _remember(entry: Path, stamp: str, sha: str) -> None:
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = entry.with_name(f".{entry.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(f"{stamp} {sha}")
    os.replace(tmp, entry)


def _hash_entry(path: Path, settings: Settings) -> tuple[Path, str]:
    st = path.stat()
    stamp = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return settings.data_dir / "hash-cache" / hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:32], stamp


def safe_ext(name: str) -> str:
    ext = Path(name).suffix.lower().lstrip(".")
    return ext if _EXT.match(ext) else "bin"


def local_source_path(settings: Settings, video_id: str, ext: str) -> Path:
    return settings.work_dir / video_id / f"source.{ext}"


def ingest(origin: str, storage: Storage, settings: Settings,
           beside: Callable[[Path], T] | None = None) -> tuple[SourceObject, Path, T | None]:
    """Fetch and hash the source; return its content address, a local copy, and what
    `beside(path)` returned.

    `beside` reads the fetched file on a thread of its own while it is hashed (the probe
    and the packet index: both only read, and hashing holds no lock on them; for a 60 s
    1080p source that was 0.7 s after 0.8 s of hashing, measured). `store_source` then
    uploads it; the two are apart so that the upload of a large source overlaps with
    transcoding from the local copy.
    """
    staging = Path(tempfile.mkdtemp(prefix="ingest-", dir=_ensure(settings.work_dir)))
    try:
        path, name = _fetch(origin, staging, storage, settings)
        size = path.stat().st_size
        if size == 0:
            raise BadInputError("the file is empty (0 bytes)")
        if size > settings.max_input_bytes:
            raise BadInputError(f"the file is {size} bytes, over the limit of {settings.max_input_bytes}")
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-read") as pool:
            read = pool.submit(beside, path) if beside else None
            try:
                local_origin = "://" not in origin
                sha = sha256_local(path, settings) if local_origin else sha256_file(path)
            finally:
                if read is not None:
                    wait([read])  # the staging copy stays until the reading is done
        read_back = read.result() if read is not None else None  # its error (not a video) now
        video_id = sha[:16]
        ext = safe_ext(name)
        key = keys.source(video_id, ext)
        local = local_source_path(settings, video_id, ext)
        if not (local.exists() and local.stat().st_size == size):
            local.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, local)
            if local_origin:  # the link moved the user's file's change time: not a change
                restamp(path, settings)
        return SourceObject(video_id=video_id, key=key, sha256=sha, size=size, ext=ext, origin=origin), local, read_back
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def store_source(source: SourceObject, local: Path, storage: Storage) -> None:
    """Upload the original to `{video_id}/source/` unless that exact object is there."""
    if not storage.holds(source.key, source.sha256, source.size):
        storage.upload(local, source.key, metadata={"sha256": source.sha256})


def ensure_local(source: SourceObject, storage: Storage, settings: Settings) -> Path:
    """The source on this machine's disk (a worker that did not ingest downloads it once)."""
    local = local_source_path(settings, source.video_id, source.ext)
    if local.exists() and local.stat().st_size == source.size:
        return local
    storage.download(source.key, local)
    return local


def reads_by_range(chunk: Chunk, plan: Plan, settings: Settings) -> bool:
    """Whether a worker without the source reads this chunk through a link (`range_reads`)."""
    if settings.range_reads != "auto":
        return settings.range_reads == "ranges"
    length = chunk.out_frames / float(plan.fps)
    return chunk.lead <= settings.range_read_max_lead * length


def chunk_source(source: SourceObject, plan: Plan, chunk: Chunk, storage: Storage, settings: Settings,
                 seconds: float) -> Path | str:
    """Where a chunk's ffmpeg reads the source: this machine's copy when it has one (the
    worker that ingested it, mode "local", or one that downloaded it earlier); else the
    stored original through a presigned link (HTTP range requests: the header, then from
    the chunk's keyframe to its end), or a whole download, once per worker, when the chunk
    would read much more than its own bytes (`reads_by_range`).
    `seconds`: how long the link must last (the ffmpeg's timeout)."""
    local = local_source_path(settings, source.video_id, source.ext)
    if local.exists() and local.stat().st_size == source.size:
        return local
    if not reads_by_range(chunk, plan, settings):
        return ensure_local(source, storage, settings)
    return storage.presigned_url(source.key, expires=int(max(3600, 2 * seconds)))


def parse_s3_url(origin: str) -> tuple[str, str]:
    """`s3://bucket/key` -> (bucket, key), or a BadInputError that says what is wrong."""
    bucket, _, key = origin.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise BadInputError(f"not an object address: {origin!r} (expected s3://bucket/key)")
    if any(part in (".", "..") for part in key.split("/")):
        # S3 servers refuse such keys (400), and a local path made from one would climb out
        raise BadInputError(f"the object key {key!r} has a '.' or '..' segment")
    return bucket, key


def _fetch(origin: str, staging: Path, storage: Storage, settings: Settings) -> tuple[Path, str]:
    if origin.startswith(("http://", "https://")):
        from .urlfetch import download

        fetched = download(origin, staging, settings)
        return fetched.path, fetched.path.name
    if origin.startswith("s3://"):
        bucket, key = parse_s3_url(origin)
        other = Storage(storage.block.model_copy(update={"bucket_name": bucket}))
        if other.head(key) is None:
            raise BadInputError(f"no such object: {origin}")
        return other.download(key, staging / "download"), key
    if "://" in origin:
        raise BadInputError(f"unsupported source {origin!r}: give a file path, s3://bucket/key or an http(s) URL")
    path = Path(origin).expanduser()
    if not path.exists():
        raise BadInputError(f"no such file: {origin}")
    if not path.is_file():
        raise BadInputError(f"not a regular file: {origin}")
    return path, path.name


def _link_or_copy(src: Path, dst: Path) -> None:
    def link_or_copy(tmp: Path) -> None:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)

    write_aside(dst, link_or_copy, f"copy of the source to {dst.parent}")


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
