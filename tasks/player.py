from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from transcoder import keys, player
from transcoder.models import Thumbnails
from transcoder.settings import get_settings
from transcoder.storage import Storage

from .common import retry_transient


def player_config(video_id: str, title: str, thumbnails: Thumbnails | None, storage: Storage | None,
                  expires: int = 0) -> dict:
    """The page's config. With `storage`, every file is reached through a presigned URL
    (the bucket is private); without, paths are relative to the page (a folder copy)."""
    root = keys.hls(video_id).removesuffix("hls/")
    config = {"title": title, "base": "", "signed": {}, "master": "hls/master.m3u8",
              "poster": "thumbnails/poster.jpg" if thumbnails else None,
              "thumbnails": "thumbnails/thumbnails.vtt" if thumbnails else None}
    if storage is not None:
        names = storage.list_keys(keys.hls(video_id)) + (storage.list_keys(keys.thumbnails(video_id)) if thumbnails else [])
        signed = {key[len(root):]: storage.presigned_url(key, expires, public=True) for key in names}
        master = signed["hls/master.m3u8"]
        config["signed"] = signed
        # the unsigned address of `{video_id}/`: what hls.js resolves relative URIs under
        config["base"] = master.split("?", 1)[0].removesuffix("hls/master.m3u8")
    return config


@task(name="player-page", retries=2, retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def publish_player(video_id: str, title: str, thumbnails: Thumbnails | None) -> str:
    """The player page in storage, next to the package; returns its presigned address.

    Its links are presigned too, so the page works for as long as they do
    (`TRANSCODE_PLAYER_LINK_SECONDS`, at most 7 days with SigV4); rerunning the same
    command writes a fresh one at no transcoding cost.
    """
    settings = get_settings()
    storage = Storage()
    expires = settings.player_link_seconds
    storage.put_text(keys.player(video_id), player.render(player_config(video_id, title, thumbnails, storage, expires)),
                     "text/html; charset=utf-8")
    return storage.presigned_url(keys.player(video_id), expires, public=True)


@task(name="export-player", cache_policy=NO_CACHE)
def export_player(video_id: str, title: str, thumbnails: Thumbnails | None, output_dir: str) -> str:
    """`DIR/player.html` beside a folder copy (`--output-dir`): relative links, no expiry."""
    local = Path(output_dir).expanduser().resolve() / "player.html"
    local.write_text(player.render(player_config(video_id, title, thumbnails, None)), encoding="utf-8")
    return str(local)
