"""The project's error tree.

`TranscodeError` is the base. `RetryableError` is what a retry can fix (a killed or
timed-out process, a storage hiccup); `BadInputError` is what it cannot (the input is
not a usable video). Task retry conditions retry only the first kind, and the CLI
prints a `BadInputError` as one line without a traceback.
"""

from __future__ import annotations

import errno
import shlex


class TranscodeError(Exception):
    """Base of every error this project raises on purpose."""


class RetryableError(TranscodeError):
    """A transient failure: running the same step again may succeed."""


class BadInputError(TranscodeError):
    """The input cannot be transcoded; retrying will not help."""


class ConfigurationError(TranscodeError):
    """The engine's configuration cannot work (a block, a setting): fixing it, not retrying,
    is what helps."""

    def __init__(self, message: str):
        super().__init__(message)
        self.summary = message


class VerificationError(TranscodeError):
    """An output did not match the plan (frame count, duration, decodability)."""


class DiskFullError(TranscodeError):
    """No space left on the worker's disk. Not retried at once (the space is still gone);
    what was finished is stored, so a rerun after freeing space redoes only the rest."""

    def __init__(self, what: str):
        super().__init__(f"{what}: no space left on the device (free some space under TRANSCODE_DATA_DIR "
                         "and rerun: finished chunks are kept)")
        self.summary = str(self)


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno == errno.ENOSPC


class StorageFullError(TranscodeError):
    """The S3 server refused a write for lack of space. Not retried at once (each retry
    would re-send the same bytes into the same full disk); what is stored stays."""

    def __init__(self, what: str, detail: str):
        super().__init__(f"{what}: the storage server is out of space ({detail}); free space on it or give it "
                         "more, then rerun: finished chunks are kept")
        self.summary = str(self)


# What S3 servers answer when their disks are full: MinIO's error code, and HTTP 507
# (WebDAV's Insufficient Storage) that other servers and gateways use.
_STORAGE_FULL_CODES = ("XMinioStorageFull", "InsufficientStorage", "507")


def storage_full_code(exc: BaseException) -> str | None:
    """The error code of a write the server refused for lack of space, else None. boto3's
    managed uploads re-raise the server's error as text (S3UploadFailedError), so the
    code is looked for in the messages of the exception and its causes."""
    seen = 0
    while exc is not None and seen < 5:
        response = getattr(exc, "response", None) or {}
        code = str(response.get("Error", {}).get("Code", ""))
        status = str(response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        for candidate in _STORAGE_FULL_CODES:
            if candidate in (code, status) or f"({candidate})" in str(exc):
                return candidate
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


class FFmpegError(RetryableError):
    """An ffmpeg/ffprobe process failed; carries the command and its stderr tail."""

    def __init__(self, message: str, argv: list[str] | None = None, stderr: str = ""):
        self.argv = argv or []
        self.stderr = stderr
        detail = f"\ncommand: {shlex.join(self.argv)}" if self.argv else ""
        tail = f"\nstderr (last lines):\n{stderr[-2000:]}" if stderr else ""
        super().__init__(f"{message}{detail}{tail}")
        self.summary = message


class FFmpegTimeout(FFmpegError):
    """An ffmpeg process ran past its timeout and was killed."""


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RetryableError)
