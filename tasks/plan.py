from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from transcoder import keys
from transcoder.facts import source_facts
from transcoder.models import EncoderSettings, Plan, Probe, SourceObject
from transcoder.plan import make_plan
from transcoder.settings import get_settings
from transcoder.storage import Storage

from .common import retry_transient


@task(name="plan", retries=1, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def plan_transcode(
    source: SourceObject,
    probe: Probe,
    rungs: tuple[int, ...] | None,
    encoder: EncoderSettings,
    gop_seconds: float,
    chunk_seconds: float,
) -> Plan:
    """Chunk boundaries from the packet index, the ladder; written to the manifest."""
    settings = get_settings()
    storage = Storage()
    index = source_facts(source, storage, settings).index
    plan = make_plan(source.video_id, source.sha256, probe, index, rungs, encoder, gop_seconds, chunk_seconds)
    storage.put_json(keys.manifest(source.video_id), {
        "source": source.model_dump(),
        "probe": probe.model_dump(),
        "plan": plan.model_dump(),
    })
    return plan
