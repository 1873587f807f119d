from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from transcoder.facts import source_facts
from transcoder.models import Probe, SourceObject
from transcoder.settings import get_settings
from transcoder.storage import Storage

from .common import retry_transient


@task(name="probe", retries=1, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def probe_source(source: SourceObject) -> Probe:
    """Typed metadata, from the facts the download stage kept (ffprobe when there are none,
    or they were checked under other limits); a non-video or an undecodable file is refused."""
    return source_facts(source, Storage(), get_settings()).probe
