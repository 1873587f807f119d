"""What the tasks share: retry condition, cache policies, per-process helpers."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Optional

from prefect.cache_policies import CachePolicy

from transcoder import keys
from transcoder.errors import is_retryable
from transcoder.ffmpeg import encoder_version
from transcoder.models import stable_hash
from transcoder.settings import get_settings


def retry_transient(task, task_run, state) -> bool:
    """Retry only what a retry can fix: killed/timed-out processes, storage hiccups."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_retryable(exc)


@dataclass
class ChunkRungCache(CachePolicy):
    """Cache key: task / chunk sha256 / rendition profile hash / encoder version.

    The key is a storage path too: the result record lands at that key in the bucket,
    so any run, on any machine, finds it.
    """

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> Optional[str]:
        plan, chunk, rung = inputs["plan"], inputs["chunk"], inputs["rung"]
        return keys.transcode_cache(plan.video_id, rung.name, chunk.sha256, plan.profile_hash(rung), encoder_version())


@dataclass
class AudioCache(CachePolicy):
    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> Optional[str]:
        from transcoder.encode import audio_profile

        plan = inputs["plan"]
        return keys.audio_cache(plan.video_id, audio_profile(plan), encoder_version())


@dataclass
class AssembleCache(CachePolicy):
    """An assembled rendition is a pure function of its segments and its audio."""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs) -> Optional[str]:
        plan, rung = inputs["plan"], inputs["rung"]
        parts = {
            "segments": [s.sha256 for s in sorted(inputs["segments"], key=lambda s: s.index)],
            "audio": inputs["audio"].sha256 if inputs.get("audio") else None,
            "frames": plan.total_frames,
            "fps": [plan.fps_num, plan.fps_den],
            # the rung's HLS package is made here too
            "hls_segment_seconds": get_settings().segment_seconds if get_settings().streaming_outputs else None,
        }
        return f"{plan.video_id}/cache/assemble-{rung.name}/{plan.profile_hash(rung)}/{stable_hash(parts)[:24]}/{encoder_version()}"


def locked(policy: CachePolicy) -> CachePolicy:
    """`policy` with its key locked in the bucket while the task runs (transcoder.locks):
    a second run of the same video waits for the first and then finds its record."""
    from prefect.transactions import IsolationLevel

    from transcoder.locks import S3LockManager

    return policy.configure(isolation_level=IsolationLevel.SERIALIZABLE, lock_manager=S3LockManager())


class KeyedLocks:
    """One lock per key, for threads of this process (e.g. the rungs of one chunk)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __call__(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())
