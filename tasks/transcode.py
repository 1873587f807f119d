from __future__ import annotations

from prefect import task

from transcoder.errors import TranscodeError
from transcoder.ingest import chunk_source
from transcoder.models import Chunk, Plan, Rung, Segment, SourceObject
from transcoder.settings import get_settings
from transcoder.storage import Storage
from transcoder.transcode import chunk_timeout, encode_chunk, stored_segment
from transcoder.workspace import scratch_dir

from .common import ChunkRungCache, KeyedLocks, locked, retry_transient

_chunk_locks = KeyedLocks()


@task(
    name="transcode",
    task_run_name="transcode-{rung.name}-{chunk.index:05d}",
    retries=2,
    retry_delay_seconds=1,
    retry_condition_fn=retry_transient,
    cache_policy=locked(ChunkRungCache()),
    persist_result=True,
)
def transcode_chunk(plan: Plan, source: SourceObject, chunk: Chunk, rung: Rung) -> Segment:
    """One chunk x rung, cached on its own key.

    The ffmpeg it starts decodes the chunk once and writes every rung of that chunk
    not yet in storage; the sibling tasks of the other rungs then find their segment
    stored and return at once. The flow submits rung-major, so concurrent tasks work
    on different chunks.
    """
    settings = get_settings()
    storage = Storage()
    with _chunk_locks(f"{plan.video_id}/{chunk.sha256}"):
        done = stored_segment(storage, plan, rung, chunk)
        if done is not None:
            return done
        missing = [r for r in plan.rungs if r == rung or stored_segment(storage, plan, r, chunk) is None]
        # the encode, its check and (HEVC/AV1) the comparison each read the source once
        reader = chunk_source(source, plan, chunk, storage, settings, 3 * chunk_timeout(plan, chunk, settings))
        scratch = scratch_dir(settings, plan.video_id, f"chunk_{chunk.name}")
        # the thumbnails' scan rides along (tasks/thumbnails.py)
        for segment in encode_chunk(reader, plan, chunk, missing, storage, settings, scratch,
                                    scan=settings.streaming_outputs):
            if segment.rung == rung.name:
                return segment
    raise TranscodeError(f"chunk {chunk.name}: {rung.name} was not written")  # unreachable: rung is in `missing`
