"""One machine, one input, every way of making the ladder; and the BD-rate against one ffmpeg.

    .venv/bin/python benchmarks/bench_ladder.py [--seconds 60] [--height 1080] [--crfs 19,23,27] [--out DIR]
                                                [--bd-reference x264|source]

Contenders, all on the same generated input in this run, x264 veryfast capped CRF 23 with the
engine's GOP, VBV caps and AAC 128k (the engine's settings, read from its own JSON):
  engine        `transcode run` cold (a content-unique copy: nothing cached), then again (rerun);
  single        one ffmpeg, decode once, one MP4 per rung, x264 threads as ffmpeg picks them
                (frame threads: the fastest one ffmpeg);
  single-1t     the same with the engine's exact x264 arguments (one thread per encoder);
  sequential    one ffmpeg per rung, one after another (threads as ffmpeg picks them);
  naive         a chunker like the earlier Temporal system's: stream-copy segment split at 8 s,
                every chunk x rung its own ffmpeg (as many at once as cores) with its own AAC
                audio, joined with the concat demuxer by stream copy.
For each: wall, CPU-seconds (every process it started; the engine also the Prefect server and
SeaweedFS), peak memory (summed RSS of its processes, sampled), and per output: size,
PSNR/SSIM against the source scaled to the rung (ffmpeg's filters, frame n against frame n),
frame count and A/V offset (audio end minus video end).

BD-rate (Bjontegaard, PSNR and SSIM): the engine and `single` at each CRF of --crfs, quality
measured by x264 itself on both sides (the same measurement, no extra decode).
Writes OUT/results-ladder.json; loopback traffic only.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (LADDER, TRANSCODE, engine_plan, frame_count, input_args, make_input,  # noqa: E402
                        measure_call, out_dir, quality, reference_argv, run_checked, stack_pids, unique_copy)

from transcoder.encode import x264_args  # noqa: E402
from transcoder.ffmpeg import FFMPEG, FFPROBE, INFO_LOG  # noqa: E402
from transcoder.models import Plan, Quality, Rung  # noqa: E402
from transcoder.quality import x264_stats  # noqa: E402

NAIVE_CHUNK_SECONDS = 8
TARGETS = {"wall_ratio": 1.00, "cpu_ratio": 1.05, "bd_rate_pct": 1.0, "rerun_ratio": 0.05}


# ---------------------------------------------------------------- contenders


def fastest(plan: Plan) -> Plan:
    """The plan with x264 threads left to ffmpeg (0 = auto: frame threads)."""
    return plan.model_copy(update={"encoder": plan.encoder.model_copy(update={"threads": 0})})


def rung_args(rung: Rung, plan: Plan, measure: bool = False) -> list[str]:
    args = x264_args(rung, plan, measure=measure)
    if plan.encoder.threads == 0:  # frame threads, not the engine's slices: what ffmpeg does by default
        i = args.index("-x264-params")
        del args[i:i + 2]
    return args + ["-c:a", "aac", "-b:a", f"{plan.encoder.audio_bitrate_kbps}k", "-ar", "48000", "-ac", "2",
                   "-movflags", "+faststart"]


def single_argv(source: Path, plan: Plan, out: Path, measure: bool = False) -> tuple[list[str], dict[str, Path]]:
    argv, outputs = reference_argv(source, plan, out)
    if plan.encoder.threads == 0 or measure:  # the engine's argv with this plan's x264 arguments
        argv = argv[:argv.index("-filter_complex") + 2]
        for i, rung in enumerate(plan.rungs):
            argv += ["-map", f"[o{i}]", "-map", "0:a:0", *rung_args(rung, plan, measure), str(outputs[rung.name])]
    if measure:
        argv[argv.index("-v"):argv.index("-v") + 2] = INFO_LOG
    return argv, outputs


def run_sequential(source: Path, plan: Plan, out: Path) -> dict[str, Path]:
    outputs = {}
    for rung in plan.rungs:
        argv, one = single_argv(source, plan.model_copy(update={"rungs": (rung,)}), out)
        run_checked(argv)
        outputs.update(one)
    return outputs


def run_naive(source: Path, plan: Plan, out: Path, workers: int) -> dict[str, Path]:
    """Split by stream copy (cuts land on the source's keyframes), encode each piece with its
    own AAC, join by stream copy: what a hand-rolled chunker does."""
    pieces_dir = out / "pieces"
    pieces_dir.mkdir(parents=True)
    run_checked([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", "-i", str(source), "-map", "0", "-c", "copy",
                 "-f", "segment", "-segment_time", str(NAIVE_CHUNK_SECONDS), "-reset_timestamps", "1",
                 str(pieces_dir / "piece_%03d.mp4")])
    pieces = sorted(pieces_dir.glob("piece_*.mp4"))
    one_thread = plan  # the engine's arguments: one thread per encoder, pieces side by side

    def encode(job: tuple[Path, Rung]) -> None:
        piece, rung = job
        graph = f"scale={rung.width}:{rung.height}:flags=bicubic,setsar=1,format=yuv420p"
        run_checked([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", "-i", str(piece), "-vf", graph,
                     *rung_args(rung, one_thread), str(pieces_dir / f"{piece.stem}-{rung.name}.mp4")])

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(encode, [(p, r) for p in pieces for r in plan.rungs]))
    outputs = {}
    for rung in plan.rungs:
        listing = pieces_dir / f"concat-{rung.name}.txt"
        listing.write_text("".join(f"file '{p.stem}-{rung.name}.mp4'\n" for p in pieces))
        outputs[rung.name] = out / f"{rung.name}.mp4"
        run_checked([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0",
                     "-i", str(listing), "-c", "copy", "-movflags", "+faststart", str(outputs[rung.name])])
    return outputs


# ---------------------------------------------------------------- outputs


def av_offset(path: Path) -> float | None:
    """Audio end minus video end, seconds (None without audio): drift shows here."""
    streams = json.loads(subprocess.run([FFPROBE, "-v", "error", "-show_entries", "stream=codec_type,start_time,duration",
                                         "-of", "json", str(path)], check=True, capture_output=True, text=True).stdout)
    ends = {s["codec_type"]: float(s["start_time"]) + float(s["duration"]) for s in streams["streams"]
            if s.get("duration") not in (None, "N/A")}
    return round(ends["audio"] - ends["video"], 4) if "audio" in ends and "video" in ends else None


def describe(outputs: dict[str, Path], source: Path, plan: Plan) -> list[dict]:
    rows = []
    for rung in plan.rungs:
        q = quality(outputs[rung.name], source, rung)
        rows.append({"name": rung.name, **q, "av_offset": av_offset(outputs[rung.name])})
    return rows


def contender(name: str, measured, outputs: dict[str, Path] | None, source: Path, plan: Plan, **extra) -> dict:
    # the servers count for the engine, which uses them; for the others their idle CPU meanwhile does not
    engine = name.startswith("engine")
    row = {"name": name, "wall": measured.wall, "cpu": measured.cpu, "server_cpu": measured.server_cpu,
           "cpu_total": measured.cpu + (measured.server_cpu if engine else 0.0), "peak_rss": measured.peak_rss,
           "server_peak_rss": measured.server_peak_rss if engine else 0, **extra}
    if engine:  # where the engine's CPU goes (stack_pids: the Prefect server, then the S3 server)
        row["cpu_split"] = {"command": measured.command_cpu, "started": measured.cpu - measured.command_cpu,
                            "prefect_server": measured.server_cpu_each[0], "s3_server": measured.server_cpu_each[1]}
    if outputs:
        row["outputs"] = describe(outputs, source, plan)
    return row


# ---------------------------------------------------------------- BD-rate


def ssim_db(ssim: float) -> float:
    """SSIM on a dB scale (-10 log10(1 - SSIM)), as BD-rate on SSIM is usually computed: near 1
    raw SSIM is too flat for the fit."""
    return -10 * math.log10(max(1e-10, 1 - ssim))


def bd_rate(ref: list[tuple[float, float]], test: list[tuple[float, float]]) -> float:
    """Bjontegaard delta rate, %: the average bitrate difference of `test` against `ref` at
    equal quality, over the quality range both cover. Points are (bitrate, quality); log-rate
    is fitted as a polynomial in quality (cubic with 4+ points, as many as the points allow)."""
    import numpy as np

    def fit(points):
        q = np.array([p[1] for p in points])
        r = np.log(np.array([p[0] for p in points]))
        return np.polyfit(q, r, min(3, len(points) - 1)), q.min(), q.max()

    (p_ref, lo_ref, hi_ref), (p_test, lo_test, hi_test) = fit(ref), fit(test)
    lo, hi = max(lo_ref, lo_test), min(hi_ref, hi_test)
    if hi <= lo:
        return math.nan
    area = lambda p: np.polyval(np.polyint(p), hi) - np.polyval(np.polyint(p), lo)  # noqa: E731
    return float((math.exp((area(p_test) - area(p_ref)) / (hi - lo)) - 1) * 100)


def engine_points(result: dict) -> dict[str, dict]:
    return {r["name"]: {"bitrate": r["size"] * 8 / result["duration"], "psnr": r["quality"]["psnr_db"], "ssim": r["quality"]["ssim"]}
            for r in result["renditions"]}


def single_points(source: Path, plan: Plan, out: Path, reference: str = "x264") -> dict[str, dict]:
    """`single` at this plan's CRF with x264 measuring itself (the engine's method), or with
    `reference="source"` each output against the source scaled straight to its rung."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    measure = reference == "x264"  # else x264 would measure what source_points measures again
    argv, outputs = single_argv(source, plan, out, measure=measure)
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"single ffmpeg failed: {proc.stderr[-2000:]}")
    if not measure:
        return source_points(outputs, source, plan)
    stats: list[Quality] = x264_stats(proc.stderr, plan.total_frames)
    points = {}
    for rung, q in zip(plan.rungs, stats):
        summary = q.summary()
        bitrate = outputs[rung.name].stat().st_size * 8 / plan.duration  # whole file, like the engine's figure
        points[rung.name] = {"bitrate": bitrate, "psnr": summary["psnr_db"], "ssim": summary["ssim"]}
    return points


def source_points(outputs: dict[str, Path], source: Path, plan: Plan) -> dict[str, dict]:
    """Each output against the source scaled straight to its rung (bicubic, as one ffmpeg
    does): one reference for both sides, wherever a side's rung pictures came from."""
    points = {}
    for rung in plan.rungs:
        q = quality(outputs[rung.name], source, rung)
        points[rung.name] = {"bitrate": q["size"] * 8 / plan.duration, "psnr": q["psnr"], "ssim": q["ssim"]}
    return points


def engine_run(source: Path, out: Path, pids: list[int], crf: int, *extra: str):
    shutil.rmtree(out, ignore_errors=True)
    m = measure_call(lambda: run_checked([TRANSCODE, "run", str(source), "--json", "--output-dir", str(out),
                                          "--renditions", LADDER, "--crf", str(crf), *extra]), pids)
    return m, json.loads(m.stdout)


def bd_rates(base: Path, out: Path, pids: list[int], plan: Plan, crfs: list[int], first: tuple[int, dict],
             reference: str = "x264", single: str = "fastest") -> dict:
    """`single`: the process compared with, "fastest" (x264's frame threads, ffmpeg's default)
    or "one-thread" (the engine's own x264 arguments, one thread per encoder: what is left is
    the chunking's doing)."""
    engine_at, single_at = {}, {}
    base_plan = fastest(plan) if single == "fastest" else plan
    for crf in crfs:
        print(f"BD-rate: CRF {crf} ...", file=sys.stderr)
        at = base_plan.model_copy(update={"encoder": base_plan.encoder.model_copy(update={"crf": crf})})
        single_at[crf] = single_points(base, at, out / f"bd-single-{crf}", reference)
        result = first[1] if crf == first[0] else engine_run(unique_copy(base, out), out / f"bd-engine-{crf}", pids, crf)[1]
        engine_at[crf] = (engine_points(result) if reference == "x264" else
                          source_points({r["name"]: Path(r["path"]) for r in result["renditions"]}, base, plan))
    return bd_table(crfs, [{"name": rung.name, "single": {str(c): single_at[c][rung.name] for c in crfs},
                             "engine": {str(c): engine_at[c][rung.name] for c in crfs}} for rung in plan.rungs])


def bd_table(crfs: list[int], rows: list[dict]) -> dict:
    """BD-rates of each rung's points (`single` and `engine`: CRF -> bitrate, psnr, ssim)."""
    for row in rows:
        def curve(who: str, metric) -> list[tuple[float, float]]:
            return [(row[who][str(c)]["bitrate"], metric(row[who][str(c)])) for c in crfs]

        for name, metric in (("psnr", lambda p: p["psnr"]), ("ssim", lambda p: ssim_db(p["ssim"]))):
            row[f"bd_rate_{name}_pct"] = bd_rate(curve("single", metric), curve("engine", metric))
    return {"crfs": crfs, "rungs": rows}  # the caller adds `reference` and `single`


# ---------------------------------------------------------------- report


def print_table(r: dict) -> None:
    ref = r["contenders"]["single"]
    print(f"\ninput {r['input']['seconds']:g} s {r['input']['height']}p, {r['input']['frames']} frames, "
          f"{r['cores']} cores; ratios against `single` (one ffmpeg, fastest threading)\n")
    print(f"{'contender':<12}{'wall s':>9}{'ratio':>7}{'CPU s':>9}{'ratio':>7}{'peak MiB':>10}  "
          f"{'size':>7} {'dPSNR':>6} {'frames':>13} {'A/V end ms':>12}")
    for name, c in r["contenders"].items():
        outs = c.get("outputs") or []
        ref_outs = {o["name"]: o for o in ref["outputs"]}
        size = sum(o["size"] for o in outs) / sum(o["size"] for o in ref["outputs"]) - 1 if outs else None
        dpsnr = max((abs(o["psnr"] - ref_outs[o["name"]]["psnr"]) for o in outs), default=None)
        frames = "/".join(str(o["frames"]) for o in outs) if outs else "-"
        offsets = [o["av_offset"] for o in outs if o.get("av_offset") is not None]
        offset = f"{1000 * max(offsets, key=abs):+.0f}" if offsets else "-"
        print(f"{name:<12}{c['wall']:>9.1f}{c['wall'] / ref['wall']:>7.3f}{c['cpu_total']:>9.1f}"
              f"{c['cpu_total'] / ref['cpu_total']:>7.3f}{c['peak_rss'] / 2**20:>10.0f}  "
              + (f"{100 * size:>+6.1f}% {dpsnr:>6.2f} {frames:>13} {offset:>12}" if outs else ""))
    print("\n(size: the ladder's total against single; dPSNR: largest |difference| of a rung, dB; "
          "the engine's CPU includes the Prefect server and SeaweedFS)")
    if split := r["contenders"]["engine"].get("cpu_split"):
        print(f"engine CPU s: what the command started (ffmpeg, ffprobe) {split['started']:.1f} (single: "
              f"{ref['cpu']:.1f}), the command itself {split['command']:.1f}, the Prefect server "
              f"{split['prefect_server']:.1f}, the S3 server {split['s3_server']:.1f}")
    if "bd_rate" in r:
        how = ("against the source scaled straight to each rung" if r["bd_rate"].get("reference") == "source"
               else "x264's own PSNR/SSIM on both")
        who = "one ffmpeg, one thread per x264" if r["bd_rate"].get("single") == "one-thread" else "`single`"
        print(f"\nBD-rate of the engine against {who}, CRF {r['bd_rate']['crfs']} ({how}):")
        for row in r["bd_rate"]["rungs"]:
            print(f"  {row['name']:>6}: PSNR {row['bd_rate_psnr_pct']:+.2f}%   SSIM {row['bd_rate_ssim_pct']:+.2f}%")
    t = r["targets"]
    print(f"\ntargets: wall <= {t['wall_ratio']}x ({r['wall_ratio']:.3f}), CPU <= {t['cpu_ratio']}x ({r['cpu_ratio']:.3f}), "
          f"rerun <= {t['rerun_ratio']:.0%} of cold ({r['rerun_ratio']:.3f}), BD-rate <= +{t['bd_rate_pct']}% per rung")


CONTENDERS = ("single", "single-1t", "sequential", "naive")


def main() -> None:
    parser = input_args(__doc__.splitlines()[0])
    parser.add_argument("--crfs", default="19,23,27", help="CRFs for the BD-rate ('' for none)")
    parser.add_argument("--bd-reference", choices=("x264", "source"), default="x264",
                        help="the BD-rate's quality: x264's own PSNR/SSIM (against each encode's input), or every "
                             "output against the source scaled straight to its rung (one reference for both sides; "
                             "24 more decodes)")
    parser.add_argument("--bd-single", choices=("fastest", "one-thread"), default="fastest",
                        help="the BD-rate's single process: x264's frame threads (ffmpeg's default), or the "
                             "engine's own x264 arguments with one thread per encoder (isolates the chunking)")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="the engine and which of these (a subset writes results-ladder-<names>.json)")
    parser.add_argument("--pattern", choices=("standard", "soft"), default="standard",
                        help="the input's pictures: 'soft' keeps the top rung under its VBV cap, for the BD-rate "
                             "(writes results-ladder-<names>-soft.json)")
    args = parser.parse_args()
    chosen = [c.strip() for c in args.contenders.split(",") if c.strip()]
    if set(chosen) - set(CONTENDERS) or "single" not in chosen:
        parser.error(f"--contenders: 'single' and any of {', '.join(CONTENDERS)}, comma-separated")
    out = out_dir(args) / "ladder"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    base = make_input(out.parent, args.seconds, args.height, args.pattern)
    pids = stack_pids()
    cores = os.cpu_count() or 1

    print("engine, cold ...", file=sys.stderr)
    source = unique_copy(base, out)
    engine, result = engine_run(source, out / "engine", pids, 23)
    plan = engine_plan(result)
    print("engine, rerun ...", file=sys.stderr)
    rerun, rerun_result = engine_run(source, out / "engine-rerun", pids, 23)

    rows = {}
    engine_outputs = {r["name"]: Path(r["path"]) for r in result["renditions"]}
    for name, run in [c for c in (
        ("single", lambda d: measure_call(lambda: run_checked(single_argv(source, fastest(plan), d)[0]), pids)),
        ("single-1t", lambda d: measure_call(lambda: run_checked(single_argv(source, plan, d)[0]), pids)),
        ("sequential", lambda d: measure_call(lambda: run_sequential(source, fastest(plan), d) and "", pids)),
        ("naive", lambda d: measure_call(lambda: run_naive(source, plan, d, cores) and "", pids)),
    ) if c[0] in chosen]:
        print(f"{name} ...", file=sys.stderr)
        d = out / name
        d.mkdir()
        m = run(d)
        rows[name] = contender(name, m, {r.name: d / f"{r.name}.mp4" for r in plan.rungs}, source, plan)
    rows["engine"] = contender("engine", engine, engine_outputs, source, plan, chunks=result["chunks"],
                               flow_wall=result["wall_seconds"],  # time to each rung's MP4 in storage:
                               ready_seconds={r["name"]: r.get("ready_seconds") for r in result["renditions"]})
    rows["engine-rerun"] = contender("engine-rerun", rerun, None, source, plan, reused=rerun_result.get("reused"),
                                     same_sha256=[x["sha256"] for x in rerun_result["renditions"]]
                                     == [x["sha256"] for x in result["renditions"]])

    results = {
        "input": {"seconds": args.seconds, "height": args.height, "frames": frame_count(source), "ladder": LADDER,
                  "pattern": args.pattern},
        "cores": cores,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "targets": TARGETS,
        "encoder": result["encoder"],
        "contenders": rows,
        "wall_ratio": rows["engine"]["wall"] / rows["single"]["wall"],
        "cpu_ratio": rows["engine"]["cpu_total"] / rows["single"]["cpu_total"],
        "cpu_ratio_processes": rows["engine"]["cpu"] / rows["single"]["cpu"],
        "rerun_ratio": rows["engine-rerun"]["wall"] / rows["engine"]["wall"],
    }
    crfs = [int(c) for c in args.crfs.split(",") if c.strip()]
    if len(crfs) >= 2:
        results["bd_rate"] = {**bd_rates(base, out, pids, plan, crfs, (23, result), args.bd_reference, args.bd_single),
                              "reference": args.bd_reference, "single": args.bd_single}
    results["benchmark_seconds"] = time.perf_counter() - started
    name = "-".join(["results-ladder"] + ([] if set(chosen) == set(CONTENDERS) else chosen)
                    + ([] if args.pattern == "standard" else [args.pattern])
                    + ([] if args.bd_single == "fastest" else ["bd-one-thread"])) + ".json"
    (out.parent / name).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nresults: {out.parent / name} (benchmark took {results['benchmark_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
