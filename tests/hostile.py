"""Hostile files for the bad-input tests: built here, byte by byte where ffmpeg cannot."""

from __future__ import annotations

import os
import stat
import struct
import threading
import time
from pathlib import Path

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"dinf"}


def _boxes(data: bytes, start: int, end: int):
    i = start
    while i < end:
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        yield i, size, kind
        i += size


def _alias(target: str) -> bytes:
    """A QuickTime alias record ('alis' data reference) with an absolute path, the layout
    ffmpeg's mov demuxer reads (mov_read_dref)."""
    path = target.encode()
    name = Path(target).name.encode()[:63]
    body = (b"\0" * 10 + bytes([4]) + b"Disk".ljust(27, b"\0") + b"\0" * 12 + bytes([len(name)])
            + name.ljust(63, b"\0") + b"\0" * 16 + struct.pack(">hh", -1, -1) + b"\0" * 16
            + struct.pack(">HH", 2, len(path)) + path + (b"\0" if len(path) % 2 else b"")
            + struct.pack(">HH", 0xFFFF, 0))
    return struct.pack(">I4sI", 12 + len(body), b"alis", 0) + body


def _with_dref(data: bytes, start: int, end: int, target: str) -> bytes:
    out = b""
    for i, size, kind in _boxes(data, start, end):
        if kind in _CONTAINERS:
            inner = _with_dref(data, i + 8, i + size, target)
            out += struct.pack(">I4s", 8 + len(inner), kind) + inner
        elif kind == b"dref":
            body = struct.pack(">II", 0, 1) + _alias(target)
            out += struct.pack(">I4s", 8 + len(body), b"dref") + body
        else:
            out += data[i:i + size]
    return out


def mp4_with_external_reference(mp4: Path, out: Path, target: Path) -> Path:
    """`mp4` (moov after mdat, so no chunk offset moves) whose track's data lives, by its
    data reference, in `target`."""
    data = mp4.read_bytes()
    out.write_bytes(_with_dref(data, 0, len(data), str(target)))
    return out


def y4m_pixel_bomb(out: Path, width: int = 16000, height: int = 16000) -> Path:
    """A stream header that declares a picture of width x height (256 MP; ffmpeg itself
    refuses sizes past about 2^31 bytes a frame) over a few bytes."""
    out.write_bytes(f"YUV4MPEG2 W{width} H{height} F25:1 Ip A1:1 C420jpeg\nFRAME\n".encode() + b"\x80" * 4096)
    return out


class FifoTrap:
    """A named pipe that records whether anything opened it for reading.

    Point a hostile input at it: a reader blocks in open() until a writer comes, so the
    watcher (trying a non-blocking write open every few ms) sees every attempt, then
    closes at once, and the reader gets an empty file."""

    def __init__(self, path: Path):
        self.path = path
        os.mkfifo(path)
        self.opened = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # ENXIO: no reader
                time.sleep(0.005)
                continue
            self.opened = True
            os.close(fd)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        if self.path.exists() and stat.S_ISFIFO(self.path.stat().st_mode):
            self.path.unlink()
