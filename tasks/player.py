from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from transcoder import player
from transcoder.models import Thumbnails
from transcoder.settings import get_settings
from transcoder.storage import Storage

from .common import retry_transient


@task(name="player-page", retries=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def publish_player(video_id: str, title: str, thumbnails: Thumbnails | None) -> str:
    """The player page in storage, next to the package; returns its presigned address.

    Its links last `TRANSCODE_PLAYER_LINK_SECONDS` (at most 7 days with SigV4); rerunning
    the same command writes a fresh one at no transcoding cost.
    """
    return player.publish(Storage(), video_id, title, thumbnails, get_settings().player_link_seconds)


@task(name="export-player", cache_policy=NO_CACHE)
def export_player(video_id: str, title: str, thumbnails: Thumbnails | None, output_dir: str) -> str:
    """`DIR/player.html` beside a folder copy (`--output-dir`): relative links, no expiry."""
    return player.export(video_id, title, thumbnails, output_dir)
