"""Bad input: a clear one-line error, no traceback, nothing that looks finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transcoder.errors import BadInputError


def make_bad(kind: str, tmp: Path, media) -> Path:
    if kind == "empty":
        p = tmp / "empty.mp4"
        p.write_bytes(b"")
    elif kind == "text":
        p = tmp / "notes.mp4"
        p.write_text("this is not a video\n" * 200)
    elif kind == "truncated_moov_at_end":
        src = media("no_audio", seconds=6).read_bytes()
        p = tmp / "truncated.mp4"
        p.write_bytes(src[: len(src) // 2])
    elif kind == "truncated_faststart":
        src = media("no_audio", seconds=6)
        fast = tmp / "fast.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(src), "-c", "copy", "-movflags", "+faststart",
                        str(fast)], check=True)
        data = fast.read_bytes()
        p = tmp / "truncated_fast.mp4"
        p.write_bytes(data[: len(data) // 2])
    elif kind == "hls_playlist_to_local_file":
        target = media("no_audio", seconds=6)
        p = tmp / "evil.m3u8"
        p.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:6.0,\nfile://{target}\n#EXTINF:1.0,\n"
                     "file:///etc/passwd\n#EXT-X-ENDLIST\n")
    elif kind == "concat_list_to_local_file":
        target = media("no_audio", seconds=6)
        p = tmp / "evil.mp4"  # the name does not matter: the content is sniffed
        p.write_text(f"ffconcat version 1.0\nfile '{target}'\nfile '/etc/passwd'\n")
    elif kind == "tiny_picture":
        p = tmp / "tiny.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=8x8:rate=25:duration=1",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(p)], check=True)
    else:
        raise ValueError(kind)
    return p


CASES = {
    "empty": "empty",
    "text": "not a readable video",
    "truncated_moov_at_end": "not a readable video",
    "truncated_faststart": "damaged or truncated",
    "hls_playlist_to_local_file": "not a readable video",
    "concat_list_to_local_file": "not a readable video",
    "tiny_picture": "smaller than 16 pixels",
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_input_is_refused_clearly_and_leaves_nothing_finished(kind, engine, media, tmp_path):
    from flows.transcode import transcode_video

    bad = make_bad(kind, tmp_path, media)
    with pytest.raises(BadInputError) as info:
        transcode_video(str(bad))
    message = str(info.value)
    assert CASES[kind] in message and "\n" not in message
    assert not engine.keys("encoded/")
    # only the original, as received, is kept (under {video_id}/source/)
    assert all("/source/" in k for k in engine.keys()), engine.keys()


def test_cli_prints_one_line_and_exits_2(engine, media, tmp_path, cli_env):
    bad = make_bad("text", tmp_path, media)
    proc = subprocess.run([sys.executable, "-m", "transcoder.cli", "run", str(bad)], capture_output=True,
                          text=True, env=cli_env, timeout=300)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error: bad input: not a readable video"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    missing = subprocess.run([sys.executable, "-m", "transcoder.cli", "run", str(tmp_path / "nope.mp4"), "--json"],
                             capture_output=True, text=True, env=cli_env, timeout=300)
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_json_output_and_output_dir(engine, media, tmp_path, cli_env):
    out = tmp_path / "out"
    src = media("standard", seconds=6)
    proc = subprocess.run([sys.executable, "-m", "transcoder.cli", "run", str(src), "--renditions", "240p,144p",
                           "--output-dir", str(out), "--json", "--chunk-seconds", "2", "--gop-seconds", "1"],
                          capture_output=True, text=True, env=cli_env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert {"video_id", "chunks", "transcoded", "cached", "renditions", "encoder"} <= set(data)
    assert data["encoder"]["codec"] == "h264" and data["encoder"]["gop_frames"] == 25
    assert {"codec", "preset", "crf", "gop_frames"} <= set(data["encoder"])
    assert data["transcoded"] + data["cached"] == data["chunks"] * 2
    for r in data["renditions"]:
        assert {"name", "key", "path", "width", "height", "frames", "duration", "bitrate"} <= set(r)
        assert Path(r["path"]).parent == out and os.path.getsize(r["path"]) == r["size"]
