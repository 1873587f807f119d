"""Pure argv builders for the encoders. Nothing here runs a process.

One ffmpeg per chunk decodes it once and writes every rung that is still missing
(a `split` filter, one output per rung): decoding the chunk again per rung would
cost about 30% more CPU (DESIGN.md). Audio is encoded once per video, never per
chunk: AAC per chunk adds priming samples at every joint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import ffmpeg, scaling, thumbnails
from .models import Chunk, EncoderSettings, Plan, Rung, stable_hash


@dataclass(frozen=True, slots=True)
class ChunkScanFiles:
    """Where a chunk's encode writes its thumbnail scan: the scores, and every frame as a
    JPEG of `size` in `pictures` (thumbnails.scan_output_args)."""

    stats: Path
    pictures: Path
    size: tuple[int, int]


def maxrate_kbps(rung: Rung, plan: Plan) -> int:
    """VBV cap of a rung: capped CRF keeps a streaming ladder's peaks predictable.

    About 6 Mb/s at 1080p30, scaled with pixels^0.75 and with the frame rate above 30.
    """
    pixels = rung.width * rung.height
    rate_factor = max(1.0, float(plan.fps) / 30) ** 0.5
    return max(300, round(6000 * (pixels / (1920 * 1080)) ** 0.75 * rate_factor / 50) * 50)


def video_filters(plan: Plan, rungs: list[Rung], chunk: Chunk | None = None, scan: ChunkScanFiles | None = None) -> str:
    """`-filter_complex` graph: the chunk's frames, shared pre-processing, then each rung
    scaled from the source or from a larger rung's pictures (scaling.py), one output each
    (`[oN]`); with `scan`, the smallest rung's pictures also go on to the thumbnail scan
    (`[scan]`): shrinking them costs far less than shrinking the source."""
    pre = []
    if chunk is not None and (chunk.start_time is not None or chunk.end_time is not None):
        bounds = [f"start={chunk.start_time:.6f}"] if chunk.start_time is not None else []
        bounds += [f"end={chunk.end_time:.6f}"] if chunk.end_time is not None else []
        pre.append("trim=" + ":".join(bounds))
    # Constant rate: frame n at n/fps exactly, so the joints and the concat durations
    # agree even where the planned rate was snapped from a slightly irregular source.
    # round(): setpts truncates its double, and 29/25 / (1/25) is 28.999...: in a time base
    # of one frame (AVI, MP4 with timescale 25) two frames got the same time.
    pre.append("setpts=PTS-STARTPTS" if plan.vfr else f"setpts=round(N*{plan.fps_den}/{plan.fps_num}/TB)")
    if plan.deinterlace:
        pre.append("yadif=mode=send_frame:parity=auto:deint=all")
    if plan.vfr:
        # Constant output rate; the pad only matters at the end of the stream, where
        # `-frames:v` stops the output at its planned count.
        pre.append(f"fps=fps={plan.fps_num}/{plan.fps_den}:round=near")
        pre.append("tpad=stop=-1:stop_mode=clone")
    # Each rung from the source or from a larger rung's pictures (scaling.py); a rung
    # that is only a parent (cached, not encoded) is scaled but not output.
    every = list(plan.rungs) if all(r in plan.rungs for r in rungs) else list(rungs)
    source = (plan.source_width, plan.source_height)
    chain = scaling.steps(every, source)
    wanted = {every.index(r): i for i, r in enumerate(rungs)}
    # the scan always takes the smallest rung's pictures, encoded here or not
    tapped = every.index(scaling.smallest(every)) if scan else None
    nodes = scaling.needed(chain, list(wanted) + ([tapped] if tapped is not None else []))

    def fan_out(node: int) -> str:
        """The end of a node's filters: its pictures to everything that takes them."""
        outs = [f"[{_link(node, j)}]" for j in nodes if chain[j].parent == node]
        outs += [f"[o{wanted[node]}]"] if node in wanted else []
        outs += ["[tap]"] if node == tapped else []
        return f",split={len(outs)}" + "".join(outs) if len(outs) > 1 else outs[0]

    branches = [
        f"[{_link(chain[j].parent, j)}]scale={every[j].width}:{every[j].height}:flags={chain[j].flags},setsar=1,"
        f"format={plan.encoder.pix_fmt}{fan_out(j)}"
        for j in nodes
    ]
    head = ",".join(pre) + fan_out(-1)  # pre always sets the timestamps
    if scan:
        branches.append(thumbnails.scan_filter("tap", scan.size, scan.stats, "scan"))
    return ";".join([f"[0:v:0]{head}"] + branches)


def _link(parent: int, child: int) -> str:
    return f"{'src' if parent < 0 else f'r{parent}'}_r{child}"


# x264 preset names are the interface; x265 has the same names, SVT-AV1 numbers.
SVT_PRESETS = {"ultrafast": 12, "superfast": 11, "veryfast": 10, "faster": 9, "fast": 8, "medium": 7, "slow": 6,
               "slower": 5, "veryslow": 4, "placebo": 2}
# Chunk files: MPEG-TS concatenates cleanly, but ffmpeg 5.1 cannot read AV1 back from
# it; IVF carries AV1 with exact timestamps (Matroska jitters at the joints).
SEGMENT_FORMAT = {"h264": ("mpegts", "ts"), "hevc": ("mpegts", "ts"), "av1": ("ivf", "ivf")}


def segment_ext(rung: Rung) -> str:
    return SEGMENT_FORMAT[rung.codec][1]


def crf_for(codec: str, crf: int) -> int:
    """The user's CRF is on x264's scale; these match or beat x264's PSNR and SSIM at
    CRF 18-28 (measured on 720p test patterns, docs/streaming.md)."""
    if codec == "hevc":
        return min(51, crf + 3)
    if codec == "av1":
        return max(1, min(63, round(40 + 1.6 * (crf - 23))))
    return crf


def video_args(rung: Rung, plan: Plan, chunk: Chunk | None = None, measure: bool = False) -> list[str]:
    if rung.codec == "hevc":
        return x265_args(rung, plan, chunk)
    if rung.codec == "av1":
        return svtav1_args(rung, plan)
    return x264_args(rung, plan, chunk, measure)


def _gop(plan: Plan) -> list[str]:
    # Same keyframes in every rung, every `gop_frames`, from each chunk's start:
    # chunks start on multiples of it, so the joints are shared keyframes.
    return ["-g", str(plan.gop_frames), "-keyint_min", str(plan.gop_frames)]


def x265_args(rung: Rung, plan: Plan, chunk: Chunk | None = None) -> list[str]:
    enc, cap = plan.encoder, maxrate_kbps(rung, plan)
    params = ["scenecut=0", "open-gop=0",  # closed GOPs: every chunk and HLS segment decodes alone
              f"pools={enc.threads}", "frame-threads=1",  # x265 ignores -threads
              "const-vbv=1",  # without it VBV with 2 threads is not bit-identical run to run (measured)
              "log-level=error"]
    if chunk is not None and chunk.index > 0:
        params.append("vbv-init=0.5")  # see x264_args
    return ["-c:v", "libx265", "-preset", enc.preset, "-crf", str(crf_for("hevc", enc.crf)),
            "-maxrate", f"{cap}k", "-bufsize", f"{cap * 2}k", "-profile:v", "main", "-pix_fmt", enc.pix_fmt,
            *_gop(plan), "-x265-params", ":".join(params)]


def svtav1_args(rung: Rung, plan: Plan) -> list[str]:
    enc, cap = plan.encoder, maxrate_kbps(rung, plan)
    # -maxrate makes SVT-AV1 1.4 capped CRF; it ignores -bufsize and has no vbv-init.
    # lp=1: capped CRF is bit-identical only with one thread (lp=2 varied run to run),
    # and costs no throughput when chunks run side by side.
    return ["-c:v", "libsvtav1", "-preset", str(SVT_PRESETS[enc.preset]), "-crf", str(crf_for("av1", enc.crf)),
            "-maxrate", f"{cap}k", "-pix_fmt", enc.pix_fmt, "-g", str(plan.gop_frames),
            "-svtav1-params", "scd=0:irefresh-type=2:lp=1"]


def x264_args(rung: Rung, plan: Plan, chunk: Chunk | None = None, measure: bool = False) -> list[str]:
    enc: EncoderSettings = plan.encoder
    cap = maxrate_kbps(rung, plan)
    # A chunk after the first joins a stream whose VBV buffer level it cannot know.
    # x264 assumes 90% full by default, which lets every joint overspend: a burst above
    # the cap (and +6% size on a cap-bound rung, measured). Half full is the middle of
    # what the previous chunk can leave.
    # Threads inside one x264 make capped CRF (VBV) timing-dependent: the same chunk
    # encoded twice under load came out different with frame threads (3 of 8 runs) and
    # with 2 slice threads too (1 of 96 chunk encodes), never with one thread (0 of 144,
    # measured). So one thread per encoder by default (EncoderSettings.threads): the
    # parallelism comes from chunks and rungs running side by side. Slices if a user
    # asks for more threads: rarer differences than frame threads.
    params = ["sliced-threads=1"] + (["vbv-init=0.5"] if chunk is not None and chunk.index > 0 else [])
    return [
        "-x264-params", ":".join(params),
        "-c:v", enc.codec,
        "-preset", enc.preset,
        "-crf", str(enc.crf),
        "-maxrate", f"{cap}k",
        "-bufsize", f"{cap * 2}k",
        "-profile:v", enc.profile,
        "-pix_fmt", enc.pix_fmt,
        *_gop(plan),
        "-sc_threshold", "0",
        "-threads", str(enc.threads),
    ] + (["-flags", "+psnr", "-ssim", "1"] if measure else [])  # x264 reports PSNR/SSIM; same bitstream


def chunk_argv(
    source: Path | str, plan: Plan, chunk: Chunk, outputs: list[tuple[Rung, Path]], max_pixels: int, measure: bool = False,
    scan: ChunkScanFiles | None = None,
) -> list[str]:
    """With `measure`, x264 measures PSNR/SSIM and the log is kept at info level (read by
    quality.x264_stats). With `scan`, the thumbnail scan is one more output."""
    rungs = [r for r, _ in outputs]
    # Timestamps stay the source's (-copyts) and ffmpeg's own cut at the seek point is
    # off (-noaccurate_seek): `trim` in the graph cuts, on exact source timestamps.
    log = ffmpeg.INFO_LOG if measure else ["-v", "error"]
    argv = [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", *log, "-y", "-copyts", "-noaccurate_seek",
            *ffmpeg.source_input(source, seek=chunk.seek, max_pixels=max_pixels),
            "-filter_complex", video_filters(plan, rungs, chunk, scan)]
    for i, (rung, path) in enumerate(outputs):
        argv += ["-map", f"[o{i}]", "-frames:v", str(chunk.out_frames), "-fps_mode", "passthrough",
                 *video_args(rung, plan, chunk, measure), "-an", "-sn", "-dn", "-map_metadata", "-1",
                 "-f", SEGMENT_FORMAT[rung.codec][0], ffmpeg.file_url(path)]
    if scan:
        argv += thumbnails.scan_output_args("scan", chunk.out_frames, scan.pictures)
    return argv


def audio_argv(source: Path, plan: Plan, channels: int, out: Path, *, format_start: float) -> list[str]:
    """The source's first audio track, aligned to the first video frame, cut to the video.

    `format_start` is the container's start_time (Probe.format_start): with it,
    plan.video_start becomes the first frame's own timestamp. Timestamps stay the
    source's (-copyts), the same as in the video's chunks: without it ffmpeg moves them
    by a start time it picks itself, and for MPEG-TS/PS (formats with timestamp
    discontinuities) that is the earliest start among the streams it reads, here the
    audio alone. Audio that starts after the video then came out early by the gap.
    """
    first_frame = format_start + plan.video_start
    af = ",".join([
        f"asetpts=PTS-{first_frame:.6f}/TB",
        # pads silence if audio starts after the video, trims if it starts before
        "aresample=async=1:first_pts=0",
        "apad",
    ])
    return [ffmpeg.FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", "-copyts",
            *ffmpeg.source_input(source),
            "-map", "0:a:0", "-vn", "-sn", "-dn", "-af", af, "-t", f"{plan.duration:.6f}",
            "-c:a", "aac", "-b:a", f"{plan.encoder.audio_bitrate_kbps}k", "-ac", str(min(max(channels, 1), 2)),
            "-ar", "48000", "-map_metadata", "-1", "-movflags", "+faststart", "-f", "mp4", ffmpeg.file_url(out)]


def audio_profile(plan: Plan) -> str:
    # "sync": 2 since the source's own timestamps (-copyts): audio cached before it could
    # be early on MPEG-TS/PS sources whose audio starts after the video
    return stable_hash({"bitrate": plan.encoder.audio_bitrate_kbps, "start": round(plan.video_start, 6),
                        "duration": round(plan.duration, 6), "codec": "aac", "sync": 2})[:16]
