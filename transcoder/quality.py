"""PSNR and SSIM of every encoded frame, against the source scaled to its rung.

H.264 rungs: x264 measures its own reconstruction against its input (which is exactly
the source through our filters, scaled to the rung) when asked (`-flags +psnr -ssim 1`):
about 1% more CPU, and the bitstream does not change. ffmpeg's ssim filter is x264's
SSIM code, so both methods agree. Its summary lines are read from the encode's log;
ffmpeg closes its encoders in output order, so the n-th summary is the n-th output.

Other codecs: one more ffmpeg per chunk rebuilds the reference from the source with the
same filter graph, decodes every segment whole and compares them with the psnr and ssim
filters; the number of compared frames doubles as the decode check. It costs about one
more decode of the source, small next to an HEVC or AV1 encode.

ffmpeg 5.1 from Debian has no libvmaf, so VMAF is not measured.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import encode, ffmpeg
from .errors import VerificationError
from .models import Chunk, Plan, Quality, Rung, mse_of

# `[libx264 @ 0x55d8468f6840] [info] SSIM Mean Y:0.9940563 (22.259db)` and
# `[libx264 @ 0x55d8468f6840] [info] PSNR Mean Y:44.056 U:42.420 V:41.274 Avg:43.167 Global:43.118 kb/s:353.06`
# (the per-frame-type lines, `... frame P:78 ... PSNR Mean Y:...`, are not these)
_X264_SSIM = re.compile(r"^\[libx264 @ (0x[0-9a-f]+)\] (?:\[info\] )?SSIM Mean Y:([0-9.]+)", re.M)
_X264_PSNR = re.compile(r"^\[libx264 @ (0x[0-9a-f]+)\] (?:\[info\] )?PSNR Mean Y:.*\bGlobal:([0-9.]+|inf)", re.M)


def x264_stats(stderr: str, frames: int) -> list[Quality]:
    """The summaries of every libx264 instance of one ffmpeg, in output order."""
    ssim = dict((addr, float(v)) for addr, v in _X264_SSIM.findall(stderr))
    out = []
    for addr, psnr in _X264_PSNR.findall(stderr):
        if addr not in ssim:
            raise VerificationError(f"x264 printed PSNR but no SSIM for encoder {addr}")
        out.append(Quality(frames=frames, mse_sum=mse_of(float(psnr)) * frames, ssim_y_sum=ssim[addr] * frames,
                           method="x264"))
    return out


def check_argv(source: Path | str, plan: Plan, chunk: Chunk, outputs: list[tuple[Rung, Path]], stats: Path,
               max_pixels: int) -> list[str]:
    rungs = [r for r, _ in outputs]
    # Both sides get timestamps 0, 1, 2, ... in one time base, so the comparison pairs
    # frame n with frame n, whatever rounding the two containers' time bases did.
    frame_index = f"settb={plan.fps_den}/{plan.fps_num},setpts=N"
    graph = [encode.video_filters(plan, rungs, chunk)]
    for i, _ in enumerate(outputs):
        graph += [
            f"[{i + 1}:v:0]{frame_index}[d{i}]",
            f"[o{i}]{frame_index},split[ra{i}][rb{i}]",
            # shortest=1: a segment that lost frames compares fewer frames, and fails
            f"[d{i}][ra{i}]psnr=stats_file={_filter_path(stats / f'psnr_{i}.log')}:shortest=1[p{i}]",
            f"[p{i}][rb{i}]ssim=stats_file={_filter_path(stats / f'ssim_{i}.log')}:shortest=1[q{i}]",
        ]
    argv = [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", "-copyts", "-noaccurate_seek",
            *ffmpeg.source_input(source, seek=chunk.seek, max_pixels=max_pixels)]
    for _, path in outputs:
        argv += ffmpeg.trusted_input(path)
    argv += ["-filter_complex", ";".join(graph)]
    for i, _ in enumerate(outputs):
        argv += ["-map", f"[q{i}]", "-f", "null", "-"]
    return argv


def _filter_path(path: Path) -> str:
    # filter option values: ':' and '\' and quotes would need escaping; our scratch
    # paths have none of them, and we refuse rather than escape
    text = str(path.resolve())
    if any(c in text for c in ":\\'[],;="):
        raise ValueError(f"scratch path not usable in a filter graph: {text}")
    return text


def parse_stats(psnr_log: Path, ssim_log: Path) -> Quality:
    psnr_rows = [_fields(line) for line in psnr_log.read_text().splitlines() if line.strip()]
    ssim_rows = [_fields(line) for line in ssim_log.read_text().splitlines() if line.strip()]
    if len(psnr_rows) != len(ssim_rows):
        raise VerificationError(f"quality check compared {len(psnr_rows)} frames for PSNR, {len(ssim_rows)} for SSIM")
    return Quality(frames=len(psnr_rows), mse_sum=sum(r["mse_avg"] for r in psnr_rows),
                   ssim_y_sum=sum(r["Y"] for r in ssim_rows), method="ffmpeg")


def _fields(line: str) -> dict[str, float]:
    """`n:1 mse_avg:0.52 ... psnr_y:49.3` or `n:1 Y:0.99 U:0.98 V:0.98 All:0.99 (20.1)`."""
    out = {}
    for part in line.split():
        name, sep, value = part.partition(":")
        if sep:
            out[name] = float(value)  # float() reads "inf" too
    return out


def measure_chunk(source: Path | str, plan: Plan, chunk: Chunk, outputs: list[tuple[Rung, Path]], scratch: Path,
                  max_pixels: int, timeout: float) -> list[Quality]:
    """Per rung, the quality of its segment; raises if any segment misses frames or decodes with errors."""
    stats = scratch / "quality"
    stats.mkdir(parents=True, exist_ok=True)
    proc = ffmpeg.run(check_argv(source, plan, chunk, outputs, stats, max_pixels), timeout,
                      f"check chunk {chunk.name}")
    # ffmpeg's http client reports a dropped connection even when -reconnect recovered it:
    # those lines are about the source link, not the segments
    problems = [line for line in proc.stderr.strip().splitlines() if not line.startswith(("[http", "[https", "[tcp", "[tls"))]
    if problems:
        raise VerificationError(f"chunk {chunk.name}: a segment does not decode cleanly: {problems[0]}")
    results = []
    for i, (rung, _) in enumerate(outputs):
        quality = parse_stats(stats / f"psnr_{i}.log", stats / f"ssim_{i}.log")
        if quality.frames != chunk.out_frames:
            raise VerificationError(f"chunk {chunk.name} {rung.name}: {quality.frames} frames decoded, "
                                    f"the plan has {chunk.out_frames}")
        results.append(quality)
    return results


def measure_outputs(encode_log: str, source: Path | str, plan: Plan, chunk: Chunk, outputs: list[tuple[Rung, Path]],
                    scratch: Path, max_pixels: int, timeout: float) -> list[Quality]:
    """Per output of one chunk encode, in order: x264's own figures for H.264 rungs (from
    the encode's log), a comparison by a second ffmpeg for the others."""
    x264 = iter(x264_stats(encode_log, chunk.out_frames))
    others = [(rung, path) for rung, path in outputs if rung.codec != "h264"]
    compared = iter(measure_chunk(source, plan, chunk, others, scratch, max_pixels, timeout) if others else [])
    figures = []
    for rung, _ in outputs:
        quality = next(x264 if rung.codec == "h264" else compared, None)
        if quality is None:
            raise VerificationError(f"chunk {chunk.name}: no quality figures for {rung.name}")
        figures.append(quality)
    return figures


def rung_quality(segments: list) -> dict[str, float] | None:
    """The rung's summary over all its chunks; None unless every chunk was measured."""
    measured = [s.quality for s in segments]
    if not measured or any(q is None for q in measured):
        return None
    total = measured[0]
    for q in measured[1:]:
        total = total + q
    return total.summary()
