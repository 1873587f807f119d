"""Synthetic test media from ffmpeg's lavfi sources (demo, tests, benchmarks).

Each recipe is a small argv builder; `make_sample` runs it once and keeps the file.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from . import ffmpeg

AUDIO = "sine=frequency=440:sample_rate=48000:duration={d},volume=0.3"


def _one_after_another(srcs: list[str]) -> str:
    labels = "".join(f"[v{i}]" for i in range(len(srcs)))
    return (";".join(f"{s},format=yuv420p,setsar=1[v{i}]" for i, s in enumerate(srcs))
            + f";{labels}concat=n={len(srcs)}:v=1:a=0[v]")


def scenes(width: int, height: int, fps: str, seconds: float) -> str:
    """Three patterns one after the other: two hard scene cuts, with moving detail."""
    part = seconds / 3
    srcs = [
        f"testsrc2=size={width}x{height}:rate={fps}:duration={part:.3f}",
        f"smptehdbars=size={width}x{height}:rate={fps}:duration={part:.3f},noise=alls=12:allf=t",
        f"mandelbrot=size={width}x{height}:rate={fps},trim=duration={seconds - 2 * part:.3f}",
    ]
    return _one_after_another(srcs)


def soft_scenes(width: int, height: int, fps: str, seconds: float) -> str:
    """Three patterns with smooth motion and no grain: graphics, drifting gradients, a
    softened fractal zoom. At 1080p, x264 veryfast needs about 4.2 / 2.6 / 1.5 Mb/s at CRF
    19 / 23 / 27 for it, under the top rung's 6 Mb/s VBV cap, where `scenes` (temporal noise)
    sits on the cap: a rate-quality curve that the cap does not flatten."""
    part = seconds / 3
    srcs = [
        f"testsrc2=size={width}x{height}:rate={fps}:duration={part:.3f}",
        f"gradients=size={width}x{height}:rate={fps}:speed=0.02:n=6:duration={part:.3f}",
        f"mandelbrot=size={width}x{height}:rate={fps},trim=duration={seconds - 2 * part:.3f},gblur=sigma=1.5",
    ]
    return _one_after_another(srcs)


def recipe(kind: str, out: Path, seconds: float = 4.0, width: int = 320, height: int = 240,
           fps: str = "25", gop: int | None = None) -> list[str]:
    """argv for one kind of sample; `gop` fixes the keyframe interval (default: x264's)."""
    d = f"{seconds:.3f}"
    base = [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y"]
    graph = (soft_scenes if kind == "soft" else scenes)(width, height, fps, seconds)
    with_audio = ["-f", "lavfi", "-i", AUDIO.format(d=d)]
    x264 = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "20"] + (["-g", str(gop)] if gop else [])
    aac = ["-c:a", "aac", "-b:a", "96k"]
    if kind in ("standard", "soft"):  # scene cuts, audio, x264 default GOP (keyframes at cuts)
        return base + ["-filter_complex", graph, *with_audio, "-map", "[v]", "-map", "0:a",
                       *x264, "-pix_fmt", "yuv420p", *aac, "-shortest", str(out)]
    if kind == "open_gop":  # open GOPs and B-frames: stream-copy cuts drop frames here
        return base + ["-filter_complex", graph, *with_audio, "-map", "[v]", "-map", "0:a",
                       "-c:v", "libx264", "-preset", "fast", "-crf", "22", "-bf", "3",
                       "-x264-params", "open-gop=1:keyint=30:min-keyint=30:scenecut=0",
                       "-pix_fmt", "yuv420p", *aac, "-shortest", str(out)]
    if kind == "vfr":  # frames dropped irregularly, timestamps kept: variable frame rate
        return base + ["-filter_complex", graph + ";[v]select='not(eq(mod(n\\,7)\\,3))*not(eq(mod(n\\,11)\\,5))'[s]",
                       *with_audio, "-map", "[s]", "-map", "0:a", "-fps_mode", "vfr", *x264,
                       "-pix_fmt", "yuv420p", *aac, "-shortest", str(out)]
    if kind == "odd_size":  # odd dimensions and non-square pixels (4:4:4 allows odd sizes)
        g = scenes(width | 1, height | 1, fps, seconds).replace("format=yuv420p,setsar=1", "format=yuv444p,setsar=1")
        return base + ["-filter_complex", g + ";[v]setsar=16/15[s]", *with_audio, "-map", "[s]", "-map", "0:a",
                       *x264, "-pix_fmt", "yuv444p", *aac, "-shortest", str(out)]
    if kind == "black_intro":  # two seconds of black, then the scenes: no poster should be black
        black = f"color=black:size={width}x{height}:rate={fps}:duration=2,format=yuv420p,setsar=1[bk]"
        with_audio = ["-f", "lavfi", "-i", AUDIO.format(d=f"{seconds + 2:.3f}")]
        return base + ["-filter_complex", f"{graph};{black};[bk][v]concat=n=2:v=1:a=0[w]", *with_audio,
                       "-map", "[w]", "-map", "0:a", *x264, "-pix_fmt", "yuv420p", *aac, "-shortest", str(out)]
    if kind == "no_audio":
        return base + ["-filter_complex", graph, "-map", "[v]", *x264, "-pix_fmt", "yuv420p", str(out)]
    if kind == "audio_only":
        return base + [*with_audio, "-map", "0:a", *aac, "-t", d, str(out)]
    if kind == "ten_bit":
        return base + ["-filter_complex", graph.replace("format=yuv420p", "format=yuv420p10le"), *with_audio,
                       "-map", "[v]", "-map", "0:a", *x264, "-pix_fmt", "yuv420p10le", "-profile:v", "high10",
                       *aac, "-shortest", str(out)]
    if kind == "interlaced":  # field-coded, top field first
        return base + ["-filter_complex", graph.replace(f"rate={fps}", f"rate={int(fps) * 2}")
                       + ";[v]tinterlace=mode=interleave_top,setfield=tff[s]", *with_audio,
                       "-map", "[s]", "-map", "0:a", *x264, "-flags", "+ildct+ilme", "-x264-params", "tff=1",
                       "-pix_fmt", "yuv420p", "-field_order", "tt", *aac, "-shortest", str(out)]
    raise ValueError(f"unknown sample kind {kind!r}")


def make_sample(kind: str, out: Path, **kwargs) -> Path:
    if out.exists() and out.stat().st_size > 0:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".part" + out.suffix)
    if kind == "mpegts":
        # open GOPs and B-frames in MPEG-TS: timestamps start at 1.4 s and seeking has
        # no index to go by
        plain = out.with_name(out.stem + ".plain.mp4")
        subprocess.run(recipe("open_gop", plain, **kwargs), check=True, timeout=1800)
        subprocess.run([ffmpeg.FFMPEG, "-v", "error", "-y", "-i", str(plain), "-c", "copy", "-f", "mpegts", str(tmp)],
                       check=True, timeout=600)
        plain.unlink()
    elif kind == "rotated":
        # stored landscape, shown portrait: ffmpeg 5.1 writes the display matrix from the
        # `rotate` tag only when stream-copying, so encode first, then copy with the tag
        plain = out.with_name(out.stem + ".plain" + out.suffix)
        subprocess.run(recipe("standard", plain, **kwargs), check=True, timeout=1800)
        argv = [ffmpeg.FFMPEG, "-v", "error", "-y", "-i", str(plain), "-c", "copy",
                "-metadata:s:v:0", "rotate=90", str(tmp)]
        subprocess.run(argv, check=True, timeout=600)
        plain.unlink()
    else:
        subprocess.run(recipe(kind, tmp, **kwargs), check=True, timeout=1800)
    tmp.replace(out)
    return out
