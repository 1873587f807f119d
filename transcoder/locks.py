"""Locks on cache keys, held as objects in the bucket, so that two runs of the same video
(on one machine or many) never encode the same chunk twice.

Prefect's SERIALIZABLE cache isolation asks a lock manager for the cache key before it
looks the record up: the second run waits, then finds the first one's record (a cache
hit). Prefect ships a file-system lock (one machine) and Redis (another server to run);
every worker here already shares the S3 bucket, and S3 (AWS, MinIO, SeaweedFS) has
conditional writes: creating `locks/<key>` with `If-None-Match: *` succeeds for one
writer only, and replacing it with `If-Match: <etag>` only if nobody changed it.

A lock is a lease: its object says who holds it until when; the holding process renews
it every `RENEW_SECONDS`. A holder that dies (SIGKILL, a lost Spot machine) stops
renewing and its lock is taken over after `LEASE_SECONDS` (at once when the holder was a
process of this machine that no longer exists).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from typing import Any

from .errors import RetryableError
from .storage import Storage, get_bucket

LEASE_SECONDS = 60.0
RENEW_SECONDS = 15.0
POLL_SECONDS = 0.5
PREFIX = "locks/"
_HOST = socket.gethostname()


class _Leases:
    """This process's held locks and the thread that renews them (one per process)."""

    def __init__(self) -> None:
        self.held: dict[tuple[str, str], tuple[str, str, Storage]] = {}  # (bucket, key) -> holder, etag, storage
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def add(self, storage: Storage, key: str, holder: str, etag: str) -> None:
        with self.lock:
            self.held[(storage.name, key)] = (holder, etag, storage)
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._renew, name="lock-leases", daemon=True)
                self.thread.start()

    def drop(self, bucket: str, key: str) -> None:
        with self.lock:
            self.held.pop((bucket, key), None)

    def adopt(self, storage: Storage, key: str, holder: str, etag: str) -> None:
        """Renew a lock of ours that is not in the table (our write whose answer was lost)."""
        with self.lock:
            if (storage.name, key) in self.held:
                return
        self.add(storage, key, holder, etag)

    def _renew(self) -> None:
        # One thread renews every lock of the process in turn: a slow or hung request
        # delays the others (the lease, four renewals long, leaves room for that).
        while True:
            time.sleep(RENEW_SECONDS)
            with self.lock:
                items = list(self.held.items())
            for ident, (holder, etag, storage) in items:
                try:
                    new = _renew_one(storage, ident[1], holder, etag)
                except Exception:  # noqa: BLE001 - a missed renewal is retried; the lease is long
                    continue
                with self.lock:
                    if self.held.get(ident, (None, None))[1] != etag:
                        continue  # released (or taken again) meanwhile
                    if new:
                        self.held[ident] = (holder, new, storage)
                    else:
                        del self.held[ident]  # lost: another holder has it (or it is gone)


_leases = _Leases()
_storages: dict[int, Storage] = {}


def _storage_now() -> Storage:
    """A Storage (and its S3 client: ~20 ms to make) per bucket block, made once."""
    block = get_bucket()
    with _leases.lock:
        if id(block) not in _storages:
            _storages[id(block)] = Storage(block)
        return _storages[id(block)]


def _object(key: str) -> str:
    return PREFIX + key


def _put(storage: Storage, key: str, holder: str, if_match: str | None = None) -> str | None:
    """Write the lock object (create only, or replace only `if_match`); its ETag, or None
    when the condition did not hold."""
    body = json.dumps({"holder": holder, "host": _HOST, "pid": os.getpid(), "until": time.time() + LEASE_SECONDS})
    condition = {"IfMatch": if_match} if if_match else {"IfNoneMatch": "*"}
    try:
        resp = storage.client.put_object(Bucket=storage.name, Key=_object(key), Body=body.encode(),
                                         ContentType="application/json", **condition)
    except storage.client.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code"))
        if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
            return None
        raise RetryableError(f"lock on {key}: {exc}") from exc
    except Exception as exc:  # unreachable storage (after botocore's own retries): the task retries
        raise RetryableError(f"lock on {key}: {exc}") from exc
    return resp.get("ETag")


def _ours(lease: dict[str, Any], holder: str) -> bool:
    """The lease is one this process wrote for `holder`."""
    return lease.get("holder") == holder and lease.get("host") == _HOST and lease.get("pid") == os.getpid()


def _renew_one(storage: Storage, key: str, holder: str, etag: str) -> str | None:
    """Extend a held lease; its new ETag, or None when the lock is no longer ours.

    A failed condition is not proof of loss: when the server applied a renewal but its
    answer was lost, botocore re-sends the same PUT, which then fails (the ETag is our
    own new write's), and an error after botocore's retries can hide an applied write as
    well. So the lock is read again: still our lease, its ETag is adopted and renewed."""
    new = _put(storage, key, holder, if_match=etag)
    if new:
        return new
    found = _read(storage, key)
    if found is None or not _ours(found[0], holder):
        return None
    return _put(storage, key, holder, if_match=found[1]) or found[1]


def _read(storage: Storage, key: str) -> tuple[dict[str, Any], str] | None:
    try:
        resp = storage.client.get_object(Bucket=storage.name, Key=_object(key))
        body = resp["Body"].read()
    except storage.client.exceptions.ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code")) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise RetryableError(f"lock on {key}: {exc}") from exc
    except Exception as exc:
        raise RetryableError(f"lock on {key}: {exc}") from exc
    try:
        return json.loads(body), resp["ETag"]
    except ValueError:
        return {"until": 0}, resp["ETag"]  # unreadable: treat as expired


def _abandoned(lease: dict[str, Any]) -> bool:
    if lease.get("until", 0) < time.time():
        return True
    if lease.get("host") == _HOST and isinstance(lease.get("pid"), int) and lease["pid"] != os.getpid():
        try:
            os.kill(lease["pid"], 0)
        except ProcessLookupError:
            return True  # its process is gone from this machine
        except PermissionError:
            pass
    return False


class S3LockManager:
    """Prefect's LockManager protocol over the current settings' bucket.

    Holds no state of its own (Prefect deep-copies cache policies): the leases live in
    the module."""

    def _storage(self) -> Storage:
        return _storage_now()

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        storage = self._storage()
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while True:
            etag = _put(storage, key, holder)
            if etag is None:
                found = _read(storage, key)
                if found is None:
                    continue  # released in between: try again at once
                lease, current = found
                if lease.get("holder") == holder:
                    if _ours(lease, holder):  # our create or takeover, its answer lost: renew it
                        _leases.adopt(storage, key, holder, current)
                    return True
                if _abandoned(lease):
                    etag = _put(storage, key, holder, if_match=current)  # one taker wins
            if etag is not None:
                _leases.add(storage, key, holder, etag)
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)

    def release_lock(self, key: str, holder: str) -> None:
        storage = self._storage()
        _leases.drop(storage.name, key)
        for _ in range(5):
            found = _read(storage, key)
            if found is None:
                return
            lease, etag = found
            if lease.get("holder") != holder:
                raise ValueError(f"lock on {key} is held by another holder, not {holder}")
            # only the lease just read: one that ran out and was taken meanwhile stays
            try:
                storage.client.delete_object(Bucket=storage.name, Key=_object(key), IfMatch=etag)
                return
            except storage.client.exceptions.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code"))
                if code in ("NotImplemented", "501", "InvalidArgument", "InvalidRequest"):
                    # a server without conditional deletes: the lease just read is ours
                    storage.client.delete_object(Bucket=storage.name, Key=_object(key))
                    return
                if code not in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                    raise RetryableError(f"lock on {key}: release failed: {exc}") from exc
                # changed in between (a renewal in flight, a takeover, our delete's lost answer): read again
            except Exception as exc:  # left behind, it expires with its lease
                raise RetryableError(f"lock on {key}: release failed: {exc}") from exc
        raise RetryableError(f"lock on {key}: release failed: the lock kept changing")

    def is_locked(self, key: str) -> bool:
        found = _read(self._storage(), key)
        return found is not None and not _abandoned(found[0])

    def is_lock_holder(self, key: str, holder: str) -> bool:
        found = _read(self._storage(), key)
        return found is not None and found[0].get("holder") == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS)
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.wait_for_lock, key, timeout)
