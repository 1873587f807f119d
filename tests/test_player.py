"""The player page in a real browser, against a fake private bucket: no S3, no Prefect.

A few seconds of fMP4 HLS made here with ffmpeg are served by a loopback HTTP server
that refuses every request without `?sig=ok`, as a private bucket refuses anything but
a presigned URL; the page has to route every fetch through its `signed` map.
"""

from __future__ import annotations

import functools
import http.server
import json
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser import chromium_available, play
from transcoder.player import ROOT, config_literal, render

ARTIFACTS = ROOT / "test-artifacts"
SECONDS = 4
FPS = 25
THUMB = (160, 90)


@pytest.fixture(scope="module")
def browser():
    reason = chromium_available()
    if reason:
        pytest.skip(f"BROWSER TESTS SKIPPED: {reason}")


# ---- a fake private bucket ------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    def _signed(self) -> bool:
        if parse_qs(urlsplit(self.path).query).get("sig") == ["ok"]:
            self.server.served.append(self.path)
            return True
        self.server.refused.append(self.path)
        self.send_error(403, "unsigned request to a private bucket")
        return False

    def do_GET(self):
        if self._signed():
            super().do_GET()

    def do_HEAD(self):
        if self._signed():
            super().do_HEAD()

    def log_message(self, *args):
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # hls.js aborts requests when it switches levels: broken pipes are normal


@pytest.fixture
def bucket(tmp_path):
    root = tmp_path / "bucket"
    root.mkdir()
    server = _Server(("127.0.0.1", 0), functools.partial(_Handler, directory=str(tmp_path)))
    server.served, server.refused = [], []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_port}/bucket", server
    server.shutdown()
    server.server_close()


# ---- media --------------------------------------------------------------------------

@dataclass
class Rung:
    name: str
    codec: str  # h264 | av1 | hevc
    width: int
    height: int
    kbps: int


ENCODERS = {
    "h264": ["-c:v", "libx264", "-preset", "veryfast", "-sc_threshold", "0"],
    "av1": ["-c:v", "libsvtav1", "-preset", "12"],
    "hevc": ["-c:v", "libx265", "-preset", "ultrafast", "-tag:v", "hvc1",
             "-x265-params", f"log-level=error:keyint={FPS}:min-keyint={FPS}:scenecut=0"],
}


def _ffmpeg(*args: str, cwd: Path | None = None) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-v", "error", "-y", *args],
                   cwd=cwd, check=True, capture_output=True)


def _source(size: str) -> list[str]:
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={FPS}:duration={SECONDS}",
            "-f", "lavfi", "-i", f"sine=frequency=440:duration={SECONDS}"]


def encode(hls_dir: Path, rung: Rung) -> str:
    """One rung as fMP4 HLS with 1 s segments; returns its master-playlist entry."""
    out = hls_dir / rung.name
    out.mkdir(parents=True)
    _ffmpeg(*_source(f"{rung.width}x{rung.height}"), *ENCODERS[rung.codec], "-g", str(FPS),
            "-b:v", f"{rung.kbps}k", "-c:a", "aac", "-b:a", "64k", "-ac", "2",
            "-f", "hls", "-hls_time", "1", "-hls_playlist_type", "vod", "-hls_segment_type", "fmp4",
            "-hls_fmp4_init_filename", "init.mp4", "-hls_segment_filename", "seg_%03d.m4s", "index.m3u8",
            cwd=out)
    peak = max(p.stat().st_size for p in out.glob("seg_*.m4s")) * 8  # bits in a 1 s segment
    average = sum(p.stat().st_size for p in out.glob("seg_*.m4s")) * 8 // SECONDS
    codecs = f"{codec_string(out / 'init.mp4')},mp4a.40.2"
    return (f'#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={average},'
            f'RESOLUTION={rung.width}x{rung.height},FRAME-RATE={FPS}.000,CODECS="{codecs}"\n'
            f"{rung.name}/index.m3u8\n")


def codec_string(init: Path) -> str:
    """The RFC 6381 CODECS value of the video track, read from its sample description."""
    data = init.read_bytes()
    if (i := data.find(b"avcC")) >= 0:
        # configurationVersion, then profile, constraint flags, level
        return "avc1." + data[i + 5:i + 8].hex()
    if data.find(b"av1C") >= 0:
        # av01.<profile>.<seq_level_idx><tier>.<bit depth>, as ffprobe reports them
        probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                                "stream=profile,level,pix_fmt", "-of", "json", str(init)],
                               check=True, capture_output=True, text=True)
        s = json.loads(probe.stdout)["streams"][0]
        profile = {"Main": 0, "High": 1, "Professional": 2}[s["profile"]]
        depth = 10 if "10" in s["pix_fmt"] else 12 if "12" in s["pix_fmt"] else 8
        return f"av01.{profile}.{int(s['level']):02d}M.{depth:02d}"
    if (i := data.find(b"hvcC")) >= 0:
        p = data[i + 4:]
        space = ["", "A", "B", "C"][p[1] >> 6]
        tier = "H" if p[1] & 0x20 else "L"
        compat = int(f"{int.from_bytes(p[2:6], 'big'):032b}"[::-1], 2)  # written bit-reversed
        constraints = bytes(p[6:12]).rstrip(b"\0")
        return (f"hvc1.{space}{p[1] & 0x1F}.{compat:X}.{tier}{p[12]}"
                + "".join(f".{b:X}" for b in constraints))
    raise AssertionError(f"no known codec configuration in {init}")


def make_video(video: Path, rungs: list[Rung], thumbnails: bool = True) -> None:
    hls = video / "hls"
    entries = [encode(hls, r) for r in rungs]
    (hls / "master.m3u8").write_text("#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-INDEPENDENT-SEGMENTS\n" + "".join(entries))
    if thumbnails:
        thumbs = video / "thumbnails"
        thumbs.mkdir()
        _ffmpeg(*_source("640x360")[:4], "-ss", "1", "-frames:v", "1", "-q:v", "3", str(thumbs / "poster.jpg"))
        w, h = THUMB
        _ffmpeg(*_source("640x360")[:4], "-vf", f"fps=1,scale={w}:{h},tile={SECONDS}x1", "-frames:v", "1",
                "-q:v", "4", str(thumbs / "sprite_000.jpg"))
        cues = [f"00:00:{i:02d}.000 --> 00:00:{i + 1:02d}.000\nsprite_000.jpg#xywh={i * w},0,{w},{h}\n"
                for i in range(SECONDS)]
        (thumbs / "thumbnails.vtt").write_text("WEBVTT\n\n" + "\n".join(cues))


def publish(video: Path, base_url: str, title: str, page_base: str | None = None) -> str:
    """Sign every object, render the page next to them; returns the page's signed URL."""
    signed = {p.relative_to(video).as_posix(): f"{base_url}{p.relative_to(video).as_posix()}?sig=ok"
              for p in sorted(video.rglob("*")) if p.is_file()}
    has_thumbs = (video / "thumbnails").is_dir()
    config = {"title": title, "base": base_url if page_base is None else page_base, "signed": signed,
              "master": "hls/master.m3u8",
              "poster": "thumbnails/poster.jpg" if has_thumbs else None,
              "thumbnails": "thumbnails/thumbnails.vtt" if has_thumbs else None}
    (video / "player.html").write_text(render(config), encoding="utf-8")
    return f"{base_url}player.html?sig=ok"


def _check(state: dict, server) -> None:
    assert not state["errors"], f"player errors: {state['errors']}; console {state['console'][-10:]}"
    assert state["ended"], state
    assert state["frames"] >= SECONDS * FPS * 0.8, f"only {state['frames']} frames shown"
    assert not server.refused, f"unsigned requests reached the bucket: {server.refused}"


# ---- tests --------------------------------------------------------------------------

def test_export_on_a_full_disk_leaves_no_half_page(tmpfs):
    from transcoder.errors import DiskFullError
    from transcoder.player import export

    disk = tmpfs("64k")  # the page inlines hls.js: several hundred kB
    with pytest.raises(DiskFullError, match="player.html"):
        export("0123456789abcdef", "a title", None, str(disk))
    assert not list(disk.iterdir())


def test_render_escapes_script_end():
    title = 'x</script><script>alert(1)</script><!-- & \u2028'
    html = render({"title": title, "base": "", "signed": {}, "master": "hls/master.m3u8",
                   "poster": None, "thumbnails": None})
    assert "</script><script>alert" not in html
    assert "/*__CONFIG__*/" not in html and "/*__HLSJS__*/" not in html
    assert "sourceMappingURL" not in html
    assert html.lower().count("</script>") == 2  # hls.js's and the page's own
    literal = config_literal({"title": title})
    assert "<" not in literal and json.loads(literal) == {"title": title}


def test_two_rungs_switch_and_end(browser, bucket):
    root, url, server = bucket
    video = root / "videos" / "v1"
    make_video(video, [Rung("180p", "h264", 320, 180, 200), Rung("90p", "h264", 160, 90, 80)])
    page = publish(video, f"{url}/videos/v1/", "Test pattern </script> two rungs")

    shot = ARTIFACTS / "player.png"
    # hls.js starts on the best rung that fits its bandwidth estimate; ask for the other
    state = play(page, shot, switch_to=0)

    _check(state, server)
    heights = [lvl["height"] for lvl in state["levels"]]
    assert sorted(heights) == [90, 180], state["levels"]
    assert heights[0] == 90, "hls.js lists levels by height, lowest first"
    assert state["switchedTo"][0] != 0, f"playback started on the level asked for: {state['switchedTo']}"
    assert state["switchedTo"][-1] == 0 and state["currentLevel"] == 0
    assert state["videoSize"] == [160, 90]
    assert state["thumbnails"] == SECONDS
    assert shot.stat().st_size > 10_000
    kinds = {urlsplit(p).path.rsplit("/", 1)[-1] for p in server.served}
    assert {"master.m3u8", "index.m3u8", "init.mp4", "seg_000.m4s", "poster.jpg", "thumbnails.vtt",
            "sprite_000.jpg"} <= kinds, kinds


def test_av1_rung_listed_and_plays(browser, bucket):
    root, url, server = bucket
    video = root / "videos" / "av1"
    make_video(video, [Rung("av1", "av1", 320, 180, 200), Rung("h264", "h264", 160, 90, 100)],
               thumbnails=False)
    # base "" = relative to the page, which sits at the video's root
    page = publish(video, f"{url}/videos/av1/", "AV1 rung", page_base="")
    master = (video / "hls" / "master.m3u8").read_text()
    assert 'CODECS="av01.0.' in master, master

    # hls.js sorts levels by height: the 180-line AV1 rung is level 1
    state = play(page, ARTIFACTS / "player-av1.png", switch_to=1, timeout=60)
    _check(state, server)
    assert [lvl["codecs"][:5] for lvl in state["levels"]] == ["avc1.", "av01."], state["levels"]
    assert state["currentLevel"] == 1 and state["switchedTo"][-1] == 1
    assert state["videoSize"] == [320, 180]


def test_hevc_level_dropped_h264_plays(browser, bucket):
    root, url, server = bucket
    video = root / "videos" / "hevc"
    make_video(video, [Rung("hevc", "hevc", 320, 180, 200), Rung("h264", "h264", 320, 180, 300)],
               thumbnails=False)
    # a base no request may reach (.invalid never resolves): the page must find every
    # object through the roots of its signed URLs
    page = publish(video, f"{url}/videos/hevc/", "HEVC and H.264", page_base="https://media.invalid/hevc/")
    master = (video / "hls" / "master.m3u8").read_text()
    assert 'CODECS="hvc1.1.6.L' in master, master

    state = play(page, ARTIFACTS / "player-hevc.png", timeout=60)
    _check(state, server)
    # Chromium's Media Source cannot take hvc1 (no platform decoder): hls.js drops it
    assert [lvl["codecs"].split(",")[0][:4] for lvl in state["levels"]] == ["avc1"], state["levels"]
    assert [lvl["codecs"][:5] for lvl in state["dropped"]] == ["hvc1."], state["dropped"]
    assert not any("/hls/hevc/" in p for p in server.served), "the HEVC rung was fetched"
