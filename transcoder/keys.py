"""The one place that names storage keys (layout kept from the earlier system).

{video_id}/source/source.<ext>
{video_id}/chunks/...                                  (split intermediates; none by default)
{video_id}/manifests/source.json
{video_id}/manifests/facts.json                        (the probe and packet index, for the later stages)
{video_id}/outputs/{rung}/segments/{profile}-{encoder}/seg_00000-{chunk sha}.ts (.ivf for AV1)
{video_id}/outputs/audio/{profile}/audio.m4a
{video_id}/outputs/scans/{profile}/scan_00000-{chunk sha}.json  (each chunk's thumbnail scan)
{video_id}/cache/...                                   (Prefect result records)
{video_id}/hls/master.m3u8, {rung}/index.m3u8, {rung}/init.mp4, {rung}/seg_00000.m4s, audio/...
{video_id}/thumbnails/poster.jpg, sprite_000.jpg, thumbnails.vtt
{video_id}/player.html
{video_id}/report.json
{video_id}/results/{fingerprint}.json                  (a finished run's result, by its settings)
encoded/{video_id}_{rung}.mp4
requests/{request_id}.json                             (ingest API request -> video id, flow run)
uploads/{request_id}/source.<ext>                      (uploads through the ingest API)
"""

from __future__ import annotations


def source(video_id: str, ext: str) -> str:
    return f"{video_id}/source/source.{ext}"


def chunks_prefix(video_id: str) -> str:
    return f"{video_id}/chunks/"


def manifest(video_id: str) -> str:
    return f"{video_id}/manifests/source.json"


def facts(video_id: str) -> str:
    return f"{video_id}/manifests/facts.json"


def segment(video_id: str, rung: str, profile: str, encoder_version: str, index: int, chunk_sha: str,
            ext: str = "ts") -> str:
    # everything that decides the bytes is in the key: an object is never replaced by
    # different content (another chunking, another profile, another ffmpeg)
    return f"{video_id}/outputs/{rung}/segments/{profile}-{encoder_version}/seg_{index:05d}-{chunk_sha[:16]}.{ext}"


def scan(video_id: str, profile: str, index: int, chunk_sha: str) -> str:
    return f"{video_id}/outputs/scans/{profile}/scan_{index:05d}-{chunk_sha[:16]}.json"


def audio(video_id: str, profile: str) -> str:
    return f"{video_id}/outputs/audio/{profile}/audio.m4a"


def transcode_cache(video_id: str, rung: str, chunk_sha: str, profile: str, encoder_version: str) -> str:
    # task / chunk sha256 / rendition profile hash / encoder version
    return f"{video_id}/cache/transcode-{rung}/{chunk_sha}/{profile}/{encoder_version}"


def audio_cache(video_id: str, profile: str, encoder_version: str) -> str:
    return f"{video_id}/cache/audio/{profile}/{encoder_version}"


def report(video_id: str) -> str:
    return f"{video_id}/report.json"


def finished(video_id: str, fingerprint: str) -> str:
    return f"{video_id}/results/{fingerprint}.json"


def encoded(video_id: str, rung: str) -> str:
    return f"encoded/{video_id}_{rung}.mp4"


def hls(video_id: str, relative: str = "") -> str:
    """`{video_id}/hls/` and the files under it (relative to the master playlist)."""
    return f"{video_id}/hls/{relative}"


def thumbnails(video_id: str, name: str = "") -> str:
    return f"{video_id}/thumbnails/{name}"


def player(video_id: str) -> str:
    return f"{video_id}/player.html"


def request(request_id: str) -> str:
    return f"requests/{request_id}.json"


def upload(request_id: str, ext: str) -> str:
    return f"uploads/{request_id}/source.{ext}"
