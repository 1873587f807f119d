from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from transcoder.ingest import ensure_local
from transcoder.models import Probe, SourceObject
from transcoder.probe import probe
from transcoder.settings import get_settings
from transcoder.storage import Storage

from .common import retry_transient


@task(name="probe", retries=1, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def probe_source(source: SourceObject) -> Probe:
    """ffprobe → typed metadata; a non-video or an undecodable file is refused here."""
    settings = get_settings()
    return probe(ensure_local(source, Storage(), settings), settings)
