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


@pytest.mark.parametrize("lost", ["resent", "error"])
def test_a_lost_renewal_answer_keeps_the_lock(engine, monkeypatch, lost):
    """The server applies a renewal but its answer is lost: botocore sends the same
    conditional PUT again, which fails (the ETag is now our own write's), or the call ends
    in an error. The holder reads the lock, finds its own lease and goes on renewing."""
    import threading

    from botocore.exceptions import EndpointConnectionError

    from transcoder import locks

    monkeypatch.setattr(locks, "RENEW_SECONDS", 0.3)
    monkeypatch.setattr(locks, "LEASE_SECONDS", 2.0)
    monkeypatch.setattr(locks, "_leases", locks._Leases())  # its own thread, on the short period
    storage = locks._storage_now()
    applied = []  # status of each renewal PUT the server answered

    def lose_first_answer(response=None, request_dict=None, **_):
        if threading.current_thread().name != "lock-leases" or "If-Match" not in request_dict["headers"]:
            return None
        applied.append(response[0].status_code if response else None)
        if applied == [200]:  # the server wrote it; the answer never arrives
            if lost == "resent":
                return 0  # botocore's retry: the same request again, at once
            raise EndpointConnectionError(endpoint_url=request_dict["url"])
        return None

    events = storage.client.meta.events
    events.register_first("needs-retry.s3.PutObject", lose_first_answer, unique_id="lose-first-answer")
    try:
        assert locks.S3LockManager().acquire_lock("v/cache/d", "run-5")
        time.sleep(3.5)  # the lease the lost write set ran out ~1.5 s ago, unless renewed since
    finally:
        events.unregister("needs-retry.s3.PutObject", unique_id="lose-first-answer")

    assert applied[0] == 200 and (lost == "error" or applied[1] == 412), applied
    assert applied.count(200) >= 5, applied  # renewals went on after the lost answer
    lease = json.loads(engine.s3.get_object(Bucket=engine.bucket, Key="locks/v/cache/d")["Body"].read())
    assert lease["holder"] == "run-5" and lease["until"] > time.time() + 1
    assert not locks.S3LockManager().acquire_lock("v/cache/d", "run-6", acquire_timeout=0.5)
    locks.S3LockManager().release_lock("v/cache/d", "run-5")
    assert not engine.keys("locks/")
