"""Sources other than a local path: an s3:// object and an http(s) URL (yt-dlp), loopback only."""

from __future__ import annotations

import functools
import http.server
import threading
import time
import urllib.parse
from pathlib import Path

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


class Origin(http.server.SimpleHTTPRequestHandler):
    """Static files, plus `/redirect/<url>` (302 to it), `/page.html` (two videos: a
    playlist), `/stream/<file>` (the file without a Content-Length), `/trickle` (10 bytes a
    second of a declared megabyte) and `/hls/<METHOD>/<url>.m3u8` (an HLS playlist with a
    key line of that method, then one clear segment at `<url>`)."""

    hits: list[str]

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.hits.append(self.path)
        if self.path.startswith("/redirect/"):
            self.send_response(302)
            self.send_header("Location", urllib.parse.unquote(self.path.removeprefix("/redirect/")))
            self.end_headers()
        elif self.path == "/page.html":
            self._send(b"<html><body><video src='/a.mp4'></video><video src='/b.mp4'></video></body></html>",
                       "text/html")
        elif self.path.startswith("/hls/"):
            method, segment = self.path.removeprefix("/hls/").removesuffix(".m3u8").split("/", 1)
            self._send(f"""#EXTM3U
#EXT-X-VERSION:5
#EXT-X-TARGETDURATION:6
#EXT-X-KEY:METHOD={method},URI="/key.bin"
#EXT-X-KEY:METHOD=NONE
#EXTINF:6.0,
{urllib.parse.unquote(segment)}
#EXT-X-ENDLIST
""".encode(), "application/vnd.apple.mpegurl")
        elif self.path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", "1000000")
            self.end_headers()
            try:
                for _ in range(120):  # until the client gives up
                    self.wfile.write(b"\0" * 10)
                    self.wfile.flush()
                    time.sleep(1)
            except OSError:
                pass
            self.close_connection = True
        elif self.path.startswith("/stream/"):
            data = (Path(self.directory) / self.path.removeprefix("/stream/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            try:
                for i in range(0, len(data), 65536):
                    self.wfile.write(data[i:i + 65536])
            except OSError:
                pass  # the client gave up: the size limit did its work
            self.close_connection = True
        else:
            super().do_GET()

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def serve(host: str, folder: Path, family=None):
    hits: list[str] = []
    handler = functools.partial(type("H", (Origin,), {"hits": hits}), directory=str(folder))
    cls = http.server.ThreadingHTTPServer
    if family is not None:
        cls = type("V6", (http.server.ThreadingHTTPServer,), {"address_family": family})
    server = cls((host, 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


@pytest.fixture
def origins(media):
    """An allowed origin on 127.0.0.2 (TRANSCODE_URL_ALLOWED_NETWORKS) and two it may
    redirect to: 127.0.0.1 and ::1, which count the requests they get."""
    import socket

    folder = media("standard", seconds=6).parent
    allowed, _ = serve("127.0.0.2", folder)
    v4, v4_hits = serve("127.0.0.1", folder)
    v6, v6_hits = serve("::1", folder, socket.AF_INET6)
    yield {"allowed": f"http://127.0.0.2:{allowed.server_address[1]}", "v4_port": v4.server_address[1],
           "v6_port": v6.server_address[1], "hits": (v4_hits, v6_hits), "file": media("standard", seconds=6).name}
    for server in (allowed, v4, v6):
        server.shutdown()


def allowed_settings(**kw):
    from transcoder.settings import Settings

    return Settings(url_allowed_networks=["127.0.0.2/32"], **kw)


def test_allowed_network_is_fetched(origins, tmp_path, media):
    from transcoder.urlfetch import download

    fetched = download(f"{origins['allowed']}/{origins['file']}", tmp_path / "dl", allowed_settings())
    assert fetched.path.read_bytes() == media("standard", seconds=6).read_bytes()


@pytest.mark.parametrize("spelling", ["127.0.0.1", "2130706433", "0x7f.1", "localhost", "localhost.", "[::1]"])
def test_redirect_to_loopback_is_refused_without_connecting(origins, tmp_path, spelling):
    """The first host is allowed; the redirect leads to loopback in one of its spellings:
    refused by the connection guard, and the loopback servers never see a request."""
    from transcoder.urlfetch import download

    port = origins["v6_port"] if spelling == "[::1]" else origins["v4_port"]
    target = f"http://{spelling}:{port}/{origins['file']}"
    # a name this machine cannot resolve (`localhost.` on some) fails before any connection
    with pytest.raises(BadInputError, match="refusing to fetch|Failed to resolve") as err:
        download(f"{origins['allowed']}/redirect/{target}", tmp_path / "dl", allowed_settings())
    assert "\n" not in str(err.value)
    assert origins["hits"] == ([], [])
    assert not any((tmp_path / "dl").iterdir())


def test_redirect_refusal_end_to_end_stores_nothing(engine, origins, monkeypatch):
    from flows.transcode import transcode_video
    from transcoder.settings import reload_settings

    monkeypatch.setenv("TRANSCODE_URL_ALLOWED_NETWORKS", '["127.0.0.2/32"]')
    reload_settings()
    with pytest.raises(BadInputError, match="it led to 127.0.0.1"):
        transcode_video(f"{origins['allowed']}/redirect/http://127.0.0.1:{origins['v4_port']}/{origins['file']}")
    assert origins["hits"] == ([], [])
    assert not engine.keys()


def test_guard_is_off_outside_a_download(origins):
    """The audit hook checks only the downloading thread: other connections of the worker
    (Prefect, S3 on loopback in tests) go on."""
    import urllib.request

    from transcoder.urlfetch import connections_checked

    with connections_checked(allowed_settings()):
        pass
    with urllib.request.urlopen(f"http://127.0.0.1:{origins['v4_port']}/{origins['file']}") as resp:
        assert resp.status == 200


@pytest.mark.parametrize("path", ["{file}", "stream/{file}"])
def test_download_over_the_size_limit_is_refused_and_nothing_kept(origins, tmp_path, path):
    """With a Content-Length (yt-dlp's max_filesize) and without one (counted while streaming)."""
    from transcoder.urlfetch import download

    with pytest.raises(BadInputError, match="size limit of 100000 bytes"):
        download(f"{origins['allowed']}/{path.format(file=origins['file'])}", tmp_path / "dl",
                 allowed_settings(max_input_bytes=100_000))
    assert not any((tmp_path / "dl").iterdir())


def test_playlist_url_is_refused(origins, tmp_path):
    from transcoder.urlfetch import download

    with pytest.raises(BadInputError, match="playlist; submit one video at a time"):
        download(f"{origins['allowed']}/page.html", tmp_path / "dl", allowed_settings())


@pytest.mark.parametrize("method", ["AES-128", "SAMPLE-AES"])
def test_encrypted_hls_is_refused_and_its_segments_never_fetched(origins, tmp_path, method):
    """yt-dlp hands such playlists to an ffmpeg of its own, whose connections the guard cannot
    see: here the segment is on 127.0.0.1, a refused address. No ffmpeg is let start."""
    from transcoder.urlfetch import download

    segment = urllib.parse.quote(f"http://127.0.0.1:{origins['v4_port']}/{origins['file']}", safe="")
    with pytest.raises(BadInputError, match="encrypted HLS"):
        download(f"{origins['allowed']}/hls/{method}/{segment}.m3u8", tmp_path / "dl", allowed_settings())
    assert origins["hits"] == ([], [])
    assert not any((tmp_path / "dl").iterdir())


def test_a_trickling_download_is_stopped_at_its_time_limit(origins, tmp_path):
    """10 bytes a second never trips the socket timeout; the download's own limit does."""
    from transcoder.urlfetch import download

    with pytest.raises(BadInputError, match="took longer than 3 s"):  # not a day (a megabyte at 10 B/s)
        download(f"{origins['allowed']}/trickle", tmp_path / "dl",
                 allowed_settings(url_socket_timeout=5, url_download_seconds=3))
    assert not any((tmp_path / "dl").iterdir())


def test_a_full_disk_during_a_url_download_is_a_disk_error_not_bad_input(origins, tmp_path, tmpfs):
    """The user's URL is fine: the message says the worker's disk is full, and nothing is kept."""
    from transcoder.errors import DiskFullError
    from transcoder.urlfetch import download

    disk = tmpfs("256k")
    with pytest.raises(DiskFullError, match="no space left"):
        download(f"{origins['allowed']}/{origins['file']}", disk / "dl", allowed_settings())
    assert not any((disk / "dl").iterdir())


def test_credentials_in_a_url_never_reach_the_message(origins, tmp_path):
    """A user name, password or presigned query is left out of the error (logs, the API)."""
    from transcoder.urlfetch import download

    secret_url = origins["allowed"].replace("http://", "http://user:hunter2@") + "/missing.mp4?X-Amz-Signature=s3cr3t"
    with pytest.raises(BadInputError) as err:
        download(secret_url, tmp_path / "dl", allowed_settings())
    assert "missing.mp4?..." in str(err.value)
    assert "hunter2" not in str(err.value) and "s3cr3t" not in str(err.value), err.value
