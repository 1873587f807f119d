from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from transcoder.facts import facts_of, keep_facts
from transcoder.ingest import ensure_local, ingest, store_source
from transcoder.models import SourceObject
from transcoder.settings import get_settings
from transcoder.storage import Storage

from .common import retry_transient


@task(name="ingest", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def ingest_source(origin: str) -> SourceObject:
    """Fetch (file, s3:// object or URL) and hash the source; keep a local copy. Its probe
    and packet index are read beside the hash and kept for the metadata and split stages
    (transcoder/facts.py): a source that is not a usable video is refused here."""
    settings, storage = get_settings(), Storage()
    source, _local, facts = ingest(origin, storage, settings, beside=lambda path: facts_of(path, settings))
    keep_facts(source, facts, storage, settings)
    return source


@task(name="store-source", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient,
      cache_policy=NO_CACHE)
def store_source_object(source: SourceObject) -> str:
    """Keep the original, as received, at `{video_id}/source/source.<ext>`."""
    storage = Storage()
    store_source(source, ensure_local(source, storage, get_settings()), storage)
    return source.key
