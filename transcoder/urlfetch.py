"""Fetching an http(s) URL with yt-dlp, refusing addresses a user should not reach.

`check_host` is the address check (tested on its own, never by connecting);
`download` is the one narrow entry point and returns a typed result.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .errors import BadInputError, RetryableError
from .settings import Settings


@dataclass(frozen=True)
class Fetched:
    path: Path
    title: str
    url: str


def address_allowed(ip: str, allow_private: bool = False) -> bool:
    """Only public unicast addresses, unless private ones are allowed by configuration.

    Metadata (169.254.169.254), link-local, multicast, reserved and unspecified
    addresses are refused even then.
    """
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if addr.is_link_local or addr.is_multicast or addr.is_reserved or addr.is_unspecified:
        return False
    if addr.is_global:
        return True
    return allow_private and (addr.is_private or addr.is_loopback)


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
        ip = info[4][0]
        if not address_allowed(ip, settings.allow_private_urls):
            raise BadInputError(f"refusing to fetch {host}: it resolves to {ip}, a private or reserved address")


def download(url: str, dest: Path, settings: Settings) -> Fetched:
    import yt_dlp
    from yt_dlp.utils import DownloadError

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
    }
    try:
        with yt_dlp.YoutubeDL(opts) as ydl:
            info = ydl.extract_info(url, download=False)
            if info.get("_type") == "playlist":
                raise BadInputError("the URL is a playlist; submit one video at a time")
            final = info.get("url") or url
            if final != url:
                check_url(final, settings)
            info = ydl.process_ie_result(info, download=True)
            info = ydl.sanitize_info(info)
    except BadInputError:
        raise
    except DownloadError as exc:
        msg = str(exc).removeprefix("ERROR: ").splitlines()[0]
        if "timed out" in msg.lower() or "connection" in msg.lower():
            raise RetryableError(f"download failed: {msg}") from None
        raise BadInputError(f"cannot download {url}: {msg}") from None
    files = [p for p in dest.iterdir() if p.is_file() and p.name.startswith("download.") and not p.name.endswith(".part")]
    if not files:
        raise BadInputError(f"cannot download {url}: nothing was saved (over the size limit?)")
    if files[0].stat().st_size > limit:
        files[0].unlink()
        raise BadInputError(f"the download passed the size limit of {limit} bytes")
    return Fetched(path=files[0], title=str(info.get("title") or ""), url=url)
