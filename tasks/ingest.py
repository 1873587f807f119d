from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from transcoder.ingest import ingest
from transcoder.models import SourceObject
from transcoder.settings import get_settings
from transcoder.storage import Storage

from .common import retry_transient


@task(name="ingest", retries=2, retry_delay_seconds=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def ingest_source(origin: str) -> SourceObject:
    """Copy the source to `{video_id}/source/` (file, s3:// object or URL)."""
    source, _local = ingest(origin, Storage(), get_settings())
    return source
