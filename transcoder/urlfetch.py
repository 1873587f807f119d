"""Fetching an http(s) URL with yt-dlp, refusing addresses a user should not reach.

`address_allowed` is the address check (tested on its own, never by connecting);
`check_url` applies it to the URL's host before anything is fetched; `download` is the
one narrow entry point and returns a typed result.

Checking the first host is not enough: a redirect, or a DNS answer that changes between
the check and the connection, can lead anywhere. So while `download` runs, every socket
connection its thread makes (yt-dlp's, whatever its HTTP library) is checked against the
same rule by an audit hook on `socket.connect`, with the address actually connected to.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import BadInputError, RetryableError
from .settings import Settings

log = logging.getLogger(__name__)
# worth another try; a name that does not resolve, a 404 or a refusal are not
_TRANSIENT = re.compile(r"timed out|connection (refused|reset|aborted)|temporar|HTTP Error 5\d\d", re.I)


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
    if addr.is_link_local or addr.is_multicast or addr.is_reserved or addr.is_unspecified:
        return False
    if addr.is_global:
        return True
    return allow_private and (addr.is_private or addr.is_loopback)


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


class _Guard(threading.local):
    settings: Settings | None = None
    refused: str | None = None


_guard = _Guard()
_hook_lock = threading.Lock()
_hook_installed = False


def _audit(event: str, args: tuple) -> None:
    if event != "socket.connect" or _guard.settings is None:
        return
    sock, address = args
    if sock.family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return
    ip = str(address[0])
    if not ip_allowed(ip, _guard.settings):
        _guard.refused = ip
        # an OSError: the HTTP library fails the request the way it fails a refused connection
        raise PermissionError(f"connection to {ip} refused: a private or reserved address")


@contextmanager
def connections_checked(settings: Settings):
    """Every connection this thread makes inside the block goes to an allowed address."""
    global _hook_installed
    with _hook_lock:
        if not _hook_installed:
            sys.addaudithook(_audit)  # for the life of the process; idle outside this block
            _hook_installed = True
    _guard.settings, _guard.refused = settings, None
    try:
        yield _guard
    finally:
        _guard.settings = None


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
    limit = settings.max_input_bytes

    def enforce_size(progress: dict) -> None:
        seen = progress.get("downloaded_bytes") or 0
        if seen > limit:
            raise BadInputError(f"the download passed the size limit of {limit} bytes")

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
        "progress_hooks": [enforce_size],
        "retries": 2,
        "format": "best",
        "overwrites": True,
        # Python's own HTTP only: an ffmpeg child (HLS) or fixup would make connections and
        # follow references that the guard below cannot see. Our probe reads the file later.
        "hls_prefer_native": True,
        "logger": _YtDlpLog(),
        "fixup": "never",
    }
    with connections_checked(settings) as guard:
        try:
            return _fetch(url, dest, opts, limit, settings)
        except Exception:
            for part in dest.glob("download.*"):  # a partial file must not look like a source
                part.unlink(missing_ok=True)
            if guard.refused:
                raise BadInputError(f"refusing to fetch {url}: it led to {guard.refused} (a redirect or a changed "
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
        msg = str(exc).removeprefix("ERROR: ").splitlines()[0]
        if _TRANSIENT.search(msg):
            raise RetryableError(f"download failed: {msg}") from None
        raise BadInputError(f"cannot download {url}: {msg}") from None
    files = [p for p in dest.iterdir() if p.is_file() and p.name.startswith("download.") and not p.name.endswith(".part")]
    if not files:
        raise BadInputError(f"cannot download {url}: nothing was saved (larger than the size limit of {limit} "
                            "bytes, or no media there)")
    if files[0].stat().st_size > limit:
        files[0].unlink()
        raise BadInputError(f"the download passed the size limit of {limit} bytes")
    return Fetched(path=files[0], title=str(info.get("title") or ""), url=url)
