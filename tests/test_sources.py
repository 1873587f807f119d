"""Sources other than a local path: an s3:// object and an http(s) URL (yt-dlp), loopback only."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from tests.checks import decoded_frames
from transcoder.errors import BadInputError


@pytest.fixture
def http_server(media):
    folder = media("standard", seconds=6).parent
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_s3_object_source(engine, media):
    from flows.transcode import transcode_video

    src = media("standard", seconds=6)
    engine.s3.upload_file(str(src), engine.bucket, "incoming/clip.mp4")
    result = transcode_video(f"s3://{engine.bucket}/incoming/clip.mp4", renditions="144p")
    assert result.source_key == f"{result.video_id}/source/source.mp4"
    assert engine.keys(f"encoded/{result.video_id}_144p.mp4")


def test_missing_s3_object_is_a_clear_error(engine):
    from flows.transcode import transcode_video

    with pytest.raises(BadInputError, match="no such object"):
        transcode_video(f"s3://{engine.bucket}/incoming/missing.mp4")


def test_url_source_through_yt_dlp_when_loopback_is_allowed(engine, media, http_server, monkeypatch):
    from flows.transcode import transcode_video
    from transcoder.settings import reload_settings

    src = media("standard", seconds=6)
    monkeypatch.setenv("TRANSCODE_ALLOW_PRIVATE_URLS", "true")
    reload_settings()
    result = transcode_video(f"{http_server}/{src.name}", renditions="144p")
    assert result.renditions[0].frames == decoded_frames(src)


@pytest.mark.parametrize("spelling", ["127.0.0.1", "localhost", "[::1]", "2130706433", "0x7f.1"])
def test_url_to_loopback_is_refused_by_default(engine, http_server, spelling):
    from flows.transcode import transcode_video

    port = http_server.rsplit(":", 1)[1]
    with pytest.raises(BadInputError, match="refusing to fetch|cannot resolve"):
        transcode_video(f"http://{spelling}:{port}/x.mp4")
    assert not engine.keys()


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://127.0.0.1/x.mp4", "gopher://x/"])
def test_other_schemes_are_refused(engine, url):
    from flows.transcode import transcode_video

    with pytest.raises(BadInputError):
        transcode_video(url)
