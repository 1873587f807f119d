"""Fetching an http(s) URL with yt-dlp, refusing addresses a user should not reach.

`address_allowed` is the address check (tested on its own, never by connecting);
`check_url` applies it to the URL's host before anything is fetched; `download` is the
one narrow entry point and returns a typed result.

Checking the first host is not enough: a redirect, or a DNS answer that changes between
the check and the connection, can lead anywhere. So while `download` runs, every socket
connection its thread makes (yt-dlp's, whatever its HTTP library) is checked against the
same rule by an audit hook on `socket.connect`, with the address actually connected to.
That hook sees only this process's sockets, so yt-dlp is never let start an ffmpeg of its own
(it hands HLS with AES-128 or SAMPLE-AES keys, and live HLS, to one): such streams are refused.
The same sockets are shut when the download passes its time limit, so a server that trickles
bytes cannot hold a worker for hours.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import BadInputError, DiskFullError, RetryableError
from .settings import Settings

log = logging.getLogger(__name__)
# worth another try; a name that does not resolve, a 404 or a refusal are not
_TRANSIENT = re.compile(r"timed out|connection (refused|reset|aborted)|temporar|HTTP Error 5\d\d", re.I)
# a path that can never exist (/dev/null is not a folder): yt-dlp then finds no ffmpeg to start
NO_FFMPEG = "/dev/null/ffmpeg"
_NEEDS_FFMPEG = re.compile(r"ffmpeg (could not be found|is not installed)|ffmpeg not found", re.I)


class _YtDlpLog:
    """yt-dlp prints its errors to stderr even when quiet; the error reaches the user
    through the exception, so its own lines go to the log at debug level."""

    def debug(self, msg: str) -> None:
        log.debug("yt-dlp: %s", msg)

    info = warning = error = debug


@dataclass(frozen=True)
class Fetched:
    path: Path
    title: str
    url: str


def _address(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address an IP string names: an IPv6 zone id dropped, IPv4-mapped IPv6 unwrapped."""
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return addr.ipv4_mapped
    return addr


def address_allowed(ip: str, allow_private: bool = False) -> bool:
    """Only public unicast addresses, unless private ones are allowed by configuration.

    Metadata (169.254.169.254), link-local, multicast, reserved and unspecified
    addresses are refused even then.
    """
    addr = _address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and (addr.sixtofour or addr.teredo):
        # 2002::/16 and Teredo carry an IPv4 address that a relay connects to: judge that one
        embedded = addr.sixtofour or addr.teredo[1]  # type: ignore[index]
        return address_allowed(str(embedded), allow_private)
    if addr.is_link_local or addr.is_multicast or addr.is_unspecified:
        return False
    if allow_private and addr.is_loopback:  # before `is_reserved`: Python counts ::1 in reserved ::/8
        return True
    if addr.is_reserved:
        return False
    if addr.is_global:
        return True
    return allow_private and addr.is_private


def _allowed_networks(settings: Settings) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    try:
        return [ipaddress.ip_network(n, strict=False) for n in settings.url_allowed_networks]
    except ValueError as exc:
        raise BadInputError(f"TRANSCODE_URL_ALLOWED_NETWORKS: {exc}") from None


def ip_allowed(ip: str, settings: Settings) -> bool:
    """`address_allowed`, plus the networks the configuration opens explicitly."""
    if address_allowed(ip, settings.allow_private_urls):
        return True
    addr = _address(ip)
    return any(addr in net for net in _allowed_networks(settings))


class _Download:
    """One download's connections: what was refused, and the sockets to shut at its deadline."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.refused: str | None = None
        self.expired = False
        self.sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def opened(self, sock: socket.socket) -> None:
        with self._lock:
            if self.expired:  # a retry after the deadline
                raise TimeoutError("the download's time limit has passed")
            self.sockets.append(sock)

    def expire(self) -> None:
        """From a timer thread: a blocked read returns at once, and no new connection is made."""
        with self._lock:
            self.expired = True
            for sock in self.sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # not connected yet, or already closed


class _Guard(threading.local):
    download: _Download | None = None


_guard = _Guard()
_hook_lock = threading.Lock()
_hook_installed = False


def _audit(event: str, args: tuple) -> None:
    if event != "socket.connect" or _guard.download is None:
        return
    sock, address = args
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return
    ip = str(address[0])
    current = _guard.download
    if not ip_allowed(ip, current.settings):
        current.refused = ip
        # an OSError: the HTTP library fails the request the way it fails a refused connection
        raise PermissionError(f"connection to {ip} refused: a private or reserved address")
    current.opened(sock)


@contextmanager
def connections_checked(settings: Settings, seconds: float | None = None):
    """Every connection this thread makes inside the block goes to an allowed address;
    after `seconds` every one of them is shut (the block's `expired` says so)."""
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)  # for the life of the process; idle outside this block
            _hook_installed = True
    current = _guard.download = _Download(settings)
    timer = threading.Timer(seconds, current.expire) if seconds else None
    if timer:
        timer.daemon = True
        timer.start()
    try:
        yield current
    finally:
        if timer:
            timer.cancel()
        _guard.download = None


def shown(url: str) -> str:
    """The URL as messages show it: without a user name, password or query string, which
    may hold credentials (a presigned link's signature); messages reach logs and the API."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    return f"{parts.scheme}://{netloc}{parts.path}" + ("?..." if parts.query else "")


def check_url(url: str, settings: Settings) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BadInputError(f"only http and https URLs are fetched, not {parts.scheme or 'a bare path'!r}")
    host = parts.hostname
    if not host:
        raise BadInputError("the URL has no host")
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadInputError(f"cannot resolve {host}: {exc.strerror}") from None
    for info in infos:
        ip = str(info[4][0])
        if not ip_allowed(ip, settings):
            raise BadInputError(f"refusing to fetch {host}: it resolves to {ip}, a private or reserved address")


def download(url: str, dest: Path, settings: Settings) -> Fetched:
    check_url(url, settings)
    dest.mkdir(parents=True, exist_ok=True)
    limit, seconds = settings.max_input_bytes, settings.url_download_seconds
    deadline = time.monotonic() + seconds
    too_slow = (f"the download took longer than {seconds:g} s (TRANSCODE_URL_DOWNLOAD_SECONDS); "
                "nothing was kept")

    def enforce_limits(progress: dict) -> None:
        seen = progress.get("downloaded_bytes") or 0
        if seen > limit:
            raise BadInputError(f"the download passed the size limit of {limit} bytes")
        # besides the sockets shut at the deadline: a stream without a Content-Length, cut
        # there, would otherwise end as a (short) success
        if time.monotonic() > deadline:
            raise BadInputError(too_slow)

    opts = {
        "outtmpl": str(dest / "download.%(ext)s"),
        "noplaylist": True,
        "playlist_items": "1",
        "max_filesize": limit,
        "socket_timeout": settings.url_socket_timeout,
        "restrictfilenames": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "progress_hooks": [enforce_limits],
        "retries": 2,
        "format": "best",
        "overwrites": True,
        # Python's own HTTP only: an ffmpeg child (HLS) or fixup would make connections and
        # follow references that the guard below cannot see. Our probe reads the file later.
        # `hls_prefer_native` alone is not enough: yt-dlp still hands encrypted (AES-128
        # without pycryptodomex, SAMPLE-AES) and live HLS to ffmpeg; with no ffmpeg to find,
        # those fail instead (measured: a segment URL on a refused address was fetched).
        "hls_prefer_native": True,
        "ffmpeg_location": NO_FFMPEG,
        "logger": _YtDlpLog(),
        "fixup": "never",
    }
    with connections_checked(settings, seconds) as guard:
        try:
            return _fetch(url, dest, opts, limit, settings)
        except Exception as exc:
            for part in dest.glob("download.*"):  # a partial file must not look like a source
                part.unlink(missing_ok=True)
            if guard.expired and not isinstance(exc, DiskFullError):
                raise BadInputError(too_slow) from None
            if guard.refused:
                raise BadInputError(f"refusing to fetch {shown(url)}: it led to {guard.refused} (a redirect or a changed "
                                    "DNS answer), a private or reserved address") from None
            raise


def _fetch(url: str, dest: Path, opts: dict, limit: int, settings: Settings) -> Fetched:
    import yt_dlp
    from yt_dlp.utils import DownloadError

    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=False)
            if info.get("_type") == "playlist":
                raise BadInputError("the URL is a playlist; submit one video at a time")
            final = info.get("url") or url
            if final != url:
                check_url(final, settings)
            declared = info.get("filesize") or info.get("filesize_approx")
            if declared and declared > limit:
                raise BadInputError(f"the download is {int(declared)} bytes, over the size limit of {limit} bytes")
            info = ydl.process_ie_result(info, download=True)
            info = ydl.sanitize_info(info)
    except BadInputError:
        raise
    except DownloadError as exc:
        where = shown(url)
        msg = str(exc).removeprefix("ERROR: ").splitlines()[0].replace(url, where)
        if "No space left on device" in msg:
            raise DiskFullError(f"download of {where} to {dest.name}") from None
        if _NEEDS_FFMPEG.search(msg):
            raise BadInputError(f"cannot download {where}: the stream is encrypted HLS (AES-128 or SAMPLE-AES) or a "
                                "live HLS stream, which are not fetched") from None
        if _TRANSIENT.search(msg):
            raise RetryableError(f"download of {where} failed: {msg}") from None
        raise BadInputError(f"cannot download {where}: {msg}") from None
    files = [p for p in dest.iterdir() if p.is_file() and p.name.startswith("download.") and not p.name.endswith(".part")]
    if not files:
        raise BadInputError(f"cannot download {shown(url)}: nothing was saved (larger than the size limit of {limit} "
                            "bytes, or no media there)")
    if files[0].stat().st_size > limit:
        files[0].unlink()
        raise BadInputError(f"the download passed the size limit of {limit} bytes")
    return Fetched(path=files[0], title=str(info.get("title") or ""), url=url)
