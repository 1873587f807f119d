"""Cache-key locks as objects in the bucket (transcoder/locks.py), on the real S3 server."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest


def put_lease(engine, key: str, **lease) -> None:
    engine.s3.put_object(Bucket=engine.bucket, Key=f"locks/{key}", Body=json.dumps(lease).encode())


def test_one_holder_at_a_time(engine):
    from transcoder.locks import S3LockManager

    locks = S3LockManager()
    assert locks.acquire_lock("v/cache/a", "run-1")
    assert locks.is_locked("v/cache/a") and locks.is_lock_holder("v/cache/a", "run-1")
    assert locks.acquire_lock("v/cache/a", "run-1")  # the holder again: still its own
    started = time.monotonic()
    assert not locks.acquire_lock("v/cache/a", "run-2", acquire_timeout=1.0)
    assert time.monotonic() - started >= 1.0
    assert not locks.wait_for_lock("v/cache/a", timeout=0.5)
    with pytest.raises(ValueError, match="another holder"):
        locks.release_lock("v/cache/a", "run-2")
    locks.release_lock("v/cache/a", "run-1")
    assert not locks.is_locked("v/cache/a") and locks.wait_for_lock("v/cache/a", timeout=0)
    assert locks.acquire_lock("v/cache/a", "run-2", acquire_timeout=0)
    locks.release_lock("v/cache/a", "run-2")
    assert not engine.keys("locks/")


def test_a_dead_holder_is_taken_over(engine):
    """A process of this machine that is gone: at once. Another machine's: once its lease
    ran out, not before."""
    import socket

    from transcoder.locks import S3LockManager

    locks = S3LockManager()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    put_lease(engine, "v/cache/b", holder="killed", host=socket.gethostname(), pid=int(gone.stdout),
              until=time.time() + 600)
    assert locks.acquire_lock("v/cache/b", "run-3", acquire_timeout=0)
    locks.release_lock("v/cache/b", "run-3")

    put_lease(engine, "v/cache/c", holder="elsewhere", host="other-machine", pid=1, until=time.time() + 600)
    assert not locks.acquire_lock("v/cache/c", "run-4", acquire_timeout=0.5)
    put_lease(engine, "v/cache/c", holder="elsewhere", host="other-machine", pid=1, until=time.time() - 1)
    assert locks.acquire_lock("v/cache/c", "run-4", acquire_timeout=0)
    locks.release_lock("v/cache/c", "run-4")
