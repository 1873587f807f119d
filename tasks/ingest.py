from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from transcoder.ingest import ensure_local, ingest, store_source
from transcoder.models import SourceObject
from transcoder.settings import get_settings
from transcoder.storage import Storage

from .common import retry_transient


@task(name="ingest", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def ingest_source(origin: str) -> SourceObject:
    """Fetch (file, s3:// object or URL) and hash the source; keep a local copy."""
    source, _local = ingest(origin, Storage(), get_settings())
    return source


@task(name="store-source", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient,
      cache_policy=NO_CACHE)
def store_source_object(source: SourceObject) -> str:
    """Keep the original, as received, at `{video_id}/source/source.<ext>`."""
    storage = Storage()
    store_source(source, ensure_local(source, storage, get_settings()), storage)
    return source.key
