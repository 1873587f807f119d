"""The one place that starts processes: timeouts kill the whole process, failures carry the command."""

from __future__ import annotations

import os
import time

import pytest

from transcoder import ffmpeg
from transcoder.errors import FFmpegError, FFmpegTimeout, is_retryable


def test_a_hung_ffmpeg_is_killed_at_its_timeout(tmp_path):
    # an endless source written nowhere: it would run forever
    argv = [ffmpeg.FFMPEG, "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=25", "-f", "null", "-"]
    started = time.monotonic()
    with pytest.raises(FFmpegTimeout) as info:
        ffmpeg.run(argv, timeout=2, what="endless")
    assert time.monotonic() - started < 30
    assert is_retryable(info.value) and "timed out after 2 s" in str(info.value)
    assert "testsrc2" in str(info.value)  # the command, to rerun by hand
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _cmd(p).startswith(b"ffmpeg\0-v\0error\0-re")]
    assert not leftovers


def test_a_failing_ffmpeg_reports_its_stderr(tmp_path):
    with pytest.raises(FFmpegError) as info:
        ffmpeg.run([ffmpeg.FFMPEG, "-v", "error", "-i", f"file:{tmp_path}/missing.mp4", "-f", "null", "-"], 30, "x")
    assert "exit status 1" in str(info.value) and "No such file" in str(info.value)


def _cmd(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def test_segment_checks_count_what_was_written_and_refuse_a_cut_file(tmp_path):
    """The packet check (default for H.264 segments x264 measured) and the decode check
    both count a whole segment's 50 frames; a segment cut short does not pass as whole."""
    from transcoder.errors import VerificationError
    from transcoder.verify import decoded_frames, packet_frames

    seg = tmp_path / "seg.ts"
    ffmpeg.run([ffmpeg.FFMPEG, "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25", "-frames:v", "50",
                "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-f", "mpegts", ffmpeg.file_url(seg)], 60, "seg")
    assert packet_frames(seg, 30) == 50 == decoded_frames(seg, 30)
    cut = tmp_path / "cut.ts"
    data = seg.read_bytes()
    cut.write_bytes(data[: len(data) * 6 // 10 // 188 * 188 + 100])  # mid-packet, as a crash leaves it
    for check in (packet_frames, decoded_frames):
        try:
            assert check(cut, 30) < 50, check.__name__
        except VerificationError:
            pass  # or it says the file does not read cleanly
