"""Bad input: a clear one-line error, no traceback, nothing that looks finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import hostile
from tests.checks import decoded_frames
from transcoder.errors import BadInputError


def make_bad(kind: str, tmp: Path, media, trap: Path | None = None) -> Path:
    """`trap`: a file the input asks to be read (a FifoTrap), where the kind has one."""
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
        p = tmp / "evil.m3u8"
        p.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:6.0,\nfile://{trap}\n#EXTINF:6.0,\n{trap}\n"
                     "#EXTINF:1.0,\nfile:///etc/passwd\n#EXT-X-ENDLIST\n")
    elif kind == "concat_list_to_local_file":
        p = tmp / "evil.mp4"  # the name does not matter: the content is sniffed
        p.write_text(f"ffconcat version 1.0\nfile '{trap}'\nfile '/etc/passwd'\n")
    elif kind == "mp4_external_reference":
        plain = tmp / "plain.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=2",
                        "-c:v", "libx264", "-pix_fmt", "yuv420p", str(plain)], check=True)
        p = hostile.mp4_with_external_reference(plain, tmp / "alias.mp4", trap)
    elif kind == "pixel_bomb":
        p = hostile.y4m_pixel_bomb(tmp / "bomb.y4m")
    elif kind == "hour_of_1x1_frames":
        p = tmp / "dots.nut"  # silent, an hour long, one pixel a frame
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:size=2x2:rate=1:duration=3600,format=gray,scale=1:1", "-c:v", "ffv1", str(p)], check=True)
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
    "mp4_external_reference": "refers to media in other files",
    "pixel_bomb": "16000x16000, larger than 8192 pixels",
    "hour_of_1x1_frames": "1x1, smaller than 16 pixels",
}
WITH_TRAP = {"hls_playlist_to_local_file", "concat_list_to_local_file", "mp4_external_reference"}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_bad_input_is_refused_clearly_and_leaves_nothing_finished(kind, engine, media, tmp_path):
    from flows.transcode import transcode_video

    trap = hostile.FifoTrap(tmp_path / "secret.mp4") if kind in WITH_TRAP else None
    try:
        bad = make_bad(kind, tmp_path, media, trap.path if trap else None)
        with pytest.raises(BadInputError) as info:
            transcode_video(str(bad))
    finally:
        if trap:
            trap.close()
    assert not (trap and trap.opened), "the input made the engine open the file it points at"
    message = str(info.value)
    assert CASES[kind] in message and "\n" not in message
    assert "/" not in message.split(": ", 1)[-1], "the message shows a path on the worker"
    assert not engine.keys("encoded/")
    # only the original, as received, is kept (under {video_id}/source/)
    assert all("/source/" in k for k in engine.keys()), engine.keys()


def test_the_trap_catches_a_reader(tmp_path):
    """The check above means something: ffmpeg told to follow the data reference opens it."""
    trap = hostile.FifoTrap(tmp_path / "secret.mp4")
    try:
        bad = make_bad("mp4_external_reference", tmp_path, None, trap.path)
        subprocess.run(["ffprobe", "-v", "quiet", "-enable_drefs", "1", "-use_absolute_path", "1", str(bad)],
                       timeout=60)
    finally:
        trap.close()
    assert trap.opened


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


NASTY = "we ird;$(touch PWNED)`touch PWNED2`'\"<b>&|..mp4"


def test_names_with_shell_and_html_characters_are_only_names(engine, media, tmp_path, monkeypatch):
    """A local file and an S3 key with shell metacharacters, quotes, markup and `../`:
    transcoded like any other, nothing run, nothing written outside the data folder."""
    from flows.transcode import transcode_video

    monkeypatch.chdir(tmp_path)
    src = tmp_path / NASTY
    src.write_bytes(media("standard", seconds=2).read_bytes())
    local = transcode_video(str(src), renditions="144p")
    key = f"incoming/sub dir/{NASTY}"
    engine.s3.upload_file(str(src), engine.bucket, key)
    remote = transcode_video(f"s3://{engine.bucket}/{key}", renditions="144p")
    # S3 servers refuse `..` in a key (SeaweedFS and MinIO both): a clear error, nothing stored
    before = set(engine.keys())
    with pytest.raises(BadInputError) as info:
        transcode_video(f"s3://{engine.bucket}/incoming/../../../../tmp/{NASTY}", renditions="144p")
    assert "\n" not in str(info.value) and set(engine.keys()) == before
    assert local.video_id == remote.video_id  # same bytes, same video
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path("/tmp").glob("PWNED*"))
    assert not Path(f"/tmp/{NASTY}").exists()
    stored = engine.keys()
    assert stored and not any(NASTY in k or ".." in k for k in stored if not k.startswith(key)), stored
    report = json.loads(engine.s3.get_object(Bucket=engine.bucket, Key=f"{local.video_id}/report.json")["Body"].read())
    assert report["renditions"][0]["frames"] == decoded_frames(src)
