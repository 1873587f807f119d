"""Core benchmark: the chunked engine against one plain ffmpeg making the same ladder.

    .venv/bin/python benchmarks/bench_core.py [--seconds 60] [--height 1080] [--out benchmarks/out]

On one input, in one run:
  (b) engine     `transcode run` cold (a content-unique copy of the input, so no cache hit),
                 wall + CPU of the CLI and its children + CPU of the Prefect and SeaweedFS servers;
  (a) reference  one ffmpeg: decode once, split, one MP4 per rung, the engine's exact x264 args;
      rerun      the engine again on the same input (everything from the cache);
      quality    PSNR/SSIM of every rung of (a) and (b) against the source scaled to that rung.
Prints a table with the targets and writes every number to OUT/results-core.json.
Everything runs on this machine; the only traffic is loopback to the local stack.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run as a plain script, from any directory

from transcoder.encode import video_filters, x264_args  # noqa: E402
from transcoder.ffmpeg import FFMPEG, FFPROBE  # noqa: E402  (the binaries the engine runs)
from transcoder.ingest import sha256_file  # noqa: E402
from transcoder.models import EncoderSettings, Plan, Rung  # noqa: E402
from transcoder.samples import make_sample  # noqa: E402
from transcoder.settings import get_settings  # noqa: E402

TRANSCODE = str(Path(sys.executable).parent / "transcode")
LADDER = "1080p,720p,480p,360p"
TARGETS = {  # ratio <= target passes; size and PSNR are bands around the reference
    "wall_ratio": 1.25,
    "cpu_ratio": 1.20,
    "size_delta_pct": 5.0,
    "psnr_delta_db": 0.2,
    "rerun_ratio": 0.10,
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass
class Measured:
    wall: float
    cpu: float  # user + system of the child and every descendant it waited for
    server_cpu: float  # Prefect server + SeaweedFS (and their children) during the run
    stdout: str
    peak_rss: int = 0  # bytes: the most the run's processes held at once (sampled every 0.2 s)
    server_peak_rss: int = 0
    # of `cpu`, the started command's own (for the engine, its Python: Prefect, the tasks,
    # transfers), as last sampled: the rest is what it started (ffmpeg, ffprobe)
    command_cpu: float = 0.0
    server_cpu_each: tuple[float, ...] = ()  # `server_cpu` per server, in the order of the pids given


# ---------------------------------------------------------------- measuring


def proc_table() -> dict[int, tuple[int, int, float]]:
    """pid -> (ppid, RSS bytes, CPU seconds incl. reaped children) for every live process."""
    table = {}
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # exited while we looked
            continue
        fields = stat.rpartition(")")[2].split()  # the command name may hold spaces and ')'
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        table[int(entry)] = (int(fields[1]), int(fields[21]) * page, (utime + stime + cutime + cstime) / CLK_TCK)
    return table


def tree_usage(table: dict[int, tuple[int, int, float]], roots: list[int]) -> tuple[int, float]:
    """RSS bytes and CPU seconds of the processes `roots` and all their live descendants."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree, frontier = set(), [p for p in roots if p in table]
    while frontier:
        pid = frontier.pop()
        if pid not in tree:
            tree.add(pid)
            frontier += children.get(pid, [])
    return sum(table[p][1] for p in tree), sum(table[p][2] for p in tree)


def each_server_cpu(roots: list[int]) -> list[float]:
    """CPU seconds used so far by each server process and all its live descendants."""
    table = proc_table()
    return [tree_usage(table, [root])[1] for root in roots]


def own_cpu(pid: int) -> float:
    """A process's own CPU seconds (user + system), without its children's."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class PeakMemory:
    """Samples the summed RSS of this process's descendants (and of the servers) every
    0.2 s while a contender runs: what a machine running it must hold at once."""

    def __init__(self, server_pids: list[int]):
        self.server_pids = server_pids
        self.peak = self.server_peak = 0
        self.own: dict[int, float] = {}  # the direct children's own CPU, last sampled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = os.getpid()
        while True:
            table = proc_table()
            own = [pid for pid, (ppid, _, _) in table.items() if ppid == me]
            self.own.update((pid, own_cpu(pid)) for pid in own)
            self.peak = max(self.peak, tree_usage(table, own)[0])
            self.server_peak = max(self.server_peak, tree_usage(table, self.server_pids)[0])
            if self._stop.wait(0.2):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def measure_call(run: Callable[[], str], server_pids: list[int]) -> Measured:
    """Time `run` (which starts processes and waits for them; returns their output):
    RUSAGE_CHILDREN deltas count every process it waited for, however many."""
    cpu0, srv0, t0 = children_cpu(), each_server_cpu(server_pids), time.perf_counter()
    with PeakMemory(server_pids) as memory:
        stdout = run()
    wall = time.perf_counter() - t0
    servers = [after - before for before, after in zip(srv0, each_server_cpu(server_pids))]
    return Measured(wall=wall, cpu=children_cpu() - cpu0, server_cpu=sum(servers), stdout=stdout,
                    peak_rss=memory.peak, server_peak_rss=memory.server_peak, command_cpu=sum(memory.own.values()),
                    server_cpu_each=tuple(servers))


def run_checked(argv: list[str]) -> str:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(argv)}\n{proc.stderr[-3000:]}")
    return proc.stdout


def measure(argv: list[str], server_pids: list[int]) -> Measured:
    """Run argv to completion, measured (measure_call)."""
    return measure_call(lambda: run_checked(argv), server_pids)


# ---------------------------------------------------------------- inputs and stack


def make_input(out: Path, seconds: float, height: int, pattern: str = "standard") -> Path:
    """`pattern`: "standard" (graphics, bars under heavy temporal noise, a fractal zoom) or
    "soft" (smooth motion, no grain: the top rung stays under its VBV cap; samples.py)."""
    width = 2 * round(height * 16 / 9 / 2)
    # A keyframe every 2 s, as cameras and mezzanine files usually have; a long-GOP
    # source costs the engine up to one source GOP of extra decoding per chunk.
    name = f"source-{seconds:g}s-{height}p-gop50{'' if pattern == 'standard' else '-' + pattern}.mp4"
    return make_sample(pattern, out / name, seconds=seconds, width=width, height=height, fps="25", gop=50)


def unique_copy(source: Path, out: Path) -> Path:
    """Same pictures and sound, different bytes: the engine caches by the file's sha256."""
    for old in out.glob("unique-*.mp4"):
        old.unlink()
    copy = out / f"unique-{uuid.uuid4().hex[:12]}.mp4"
    subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", "-i", str(source),
                    "-map", "0", "-c", "copy", "-metadata", f"comment={copy.stem}", str(copy)], check=True)
    _made.append(sha256_file(copy)[:16])  # the video_id the engine gives these bytes (transcoder/ingest.py)
    return copy


# The videos of the copies above, removed from the local stack's bucket when the benchmark
# ends: each copy is a new video to the engine, and the stack kept every one's original and
# outputs (473 MB to 1.6 GB a run; 42 GB after a day of benchmarks filled the disk).
# BENCH_KEEP_VIDEOS=1 keeps them.
_made: list[str] = []


def forget_made_videos() -> None:
    if not _made or os.environ.get("BENCH_KEEP_VIDEOS"):
        return
    from transcoder.storage import Storage, direct_bucket, get_bucket

    settings = get_settings()
    storage = Storage(direct_bucket(settings, os.environ.get("PREFECT_API_URL")) or get_bucket(settings))
    videos = list(dict.fromkeys(_made))
    removed = sum(storage.delete_prefix(f"{video_id}/") + storage.delete_prefix(f"encoded/{video_id}_")
                  for video_id in videos)
    print(f"removed the benchmark's {len(videos)} videos from the bucket ({removed} objects; "
          "BENCH_KEEP_VIDEOS=1 keeps them)", file=sys.stderr)
    _made.clear()


def stack_pids() -> list[int]:
    """Start (or reuse) the local stack now, so its start-up is in no timed run."""
    subprocess.run([TRANSCODE, "up"], check=True, stdout=subprocess.DEVNULL)
    state = json.loads((get_settings().data_dir / "stack.json").read_text())
    # a Prefect client in this process must talk to that server (not start a temporary one)
    os.environ["PREFECT_API_URL"] = state["prefect_url"]
    atexit.unregister(forget_made_videos)  # registered once, however often this is called
    atexit.register(forget_made_videos)
    return [state["prefect_pid"], state["s3_pid"]]


# ---------------------------------------------------------------- the two contenders


def run_engine(source: Path, out_dir: Path, server_pids: list[int]) -> tuple[Measured, dict]:
    shutil.rmtree(out_dir, ignore_errors=True)
    m = measure([TRANSCODE, "run", str(source), "--json", "--output-dir", str(out_dir),
                 "--renditions", LADDER], server_pids)
    return m, json.loads(m.stdout)


def engine_plan(result: dict) -> Plan:
    """A Plan with the engine's own encoder settings, rungs and GOP (from its JSON)."""
    enc = result["encoder"]
    fps_num, fps_den = (int(x) for x in result["fps"].split("/"))
    return Plan(
        video_id="reference", source_sha256="", chunks=(),
        rungs=tuple(Rung(name=r["name"], width=r["width"], height=r["height"]) for r in result["renditions"]),
        fps_num=fps_num, fps_den=fps_den, vfr=False, deinterlace=False,
        gop_frames=enc["gop_frames"], total_frames=result["renditions"][0]["frames"],
        has_audio=True, video_start=0.0,  # no source size: every rung scaled straight from the source
        encoder=EncoderSettings(codec=enc["codec"], preset=enc["preset"], crf=enc["crf"], profile=enc["profile"],
                                pix_fmt=enc["pix_fmt"], audio_bitrate_kbps=enc["audio_bitrate_kbps"],
                                threads=get_settings().x264_threads),  # not in the JSON; same source as the engine
    )


def reference_argv(source: Path, plan: Plan, out_dir: Path) -> tuple[list[str], dict[str, Path]]:
    """One ffmpeg, one decode, the engine's filter graph and x264 args, one MP4 per rung."""
    outputs = {r.name: out_dir / f"{r.name}.mp4" for r in plan.rungs}
    argv = [FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", "-i", str(source),
            "-filter_complex", video_filters(plan, list(plan.rungs))]
    for i, rung in enumerate(plan.rungs):
        argv += ["-map", f"[o{i}]", "-map", "0:a:0", *x264_args(rung, plan),
                 "-c:a", "aac", "-b:a", f"{plan.encoder.audio_bitrate_kbps}k", "-ar", "48000", "-ac", "2",
                 "-movflags", "+faststart", str(outputs[rung.name])]
    return argv, outputs


# ---------------------------------------------------------------- quality


def frame_count(path: Path) -> int:
    out = subprocess.run([FFPROBE, "-v", "error", "-select_streams", "v:0", "-count_packets",
                          "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return int(out.strip())


def quality(output: Path, source: Path, rung: Rung) -> dict:
    """PSNR and SSIM of one output against the source scaled to the rung (frame n to frame n)."""
    graph = (f"[1:v]setpts=PTS-STARTPTS,scale={rung.width}:{rung.height}:flags=bicubic,setsar=1,"
             f"format=yuv420p,split[r0][r1];"
             f"[0:v]setpts=PTS-STARTPTS,format=yuv420p[d];"
             f"[d][r0]psnr[p];[p][r1]ssim")  # psnr passes its first input through to ssim
    err = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-i", str(output), "-i", str(source),
                          "-filter_complex", graph, "-an", "-f", "null", "-"],
                         check=True, capture_output=True, text=True).stderr
    psnr = re.search(r"PSNR .*average:([\d.]+|inf)", err)
    ssim = re.search(r"SSIM .*All:([\d.]+)", err)
    if not (psnr and ssim):
        sys.exit(f"no PSNR/SSIM summary for {output}:\n{err[-2000:]}")
    return {"psnr": float(psnr.group(1)), "ssim": float(ssim.group(1)),
            "frames": frame_count(output), "size": output.stat().st_size}


# ---------------------------------------------------------------- report


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(r: dict) -> None:
    a, b, rerun = r["reference"], r["engine"], r["rerun"]
    print(f"\ninput {r['input']['seconds']:g} s {r['input']['height']}p, {r['input']['frames']} frames; "
          f"engine {r['engine']['chunks']} chunks\n")
    print(f"{'':24}{'(a) ffmpeg':>12}{'(b) engine':>12}{'ratio':>8}  target")
    print(f"{'wall s':24}{a['wall']:>12.2f}{b['wall']:>12.2f}{r['wall_ratio']:>8.3f}  "
          f"<= {TARGETS['wall_ratio']}  {verdict(r['wall_ratio'] <= TARGETS['wall_ratio'])}")
    print(f"{'CPU s (b: incl. servers)':24}{a['cpu']:>12.2f}{b['cpu_total']:>12.2f}{r['cpu_ratio']:>8.3f}  "
          f"<= {TARGETS['cpu_ratio']}  {verdict(r['cpu_ratio'] <= TARGETS['cpu_ratio'])}")
    print(f"{'  of which CLI+ffmpeg':24}{'':>12}{b['cpu']:>12.2f}{r['cpu_ratio_processes']:>8.3f}  "
          f"(the engine's own processes; the servers idle at a few % of a core)")
    print(f"{'  of which servers':24}{'':>12}{b['server_cpu']:>12.2f}")
    print(f"{'cached rerun wall s':24}{'':>12}{rerun['wall']:>12.2f}{r['rerun_ratio']:>8.3f}  "
          f"<= {TARGETS['rerun_ratio']}  {verdict(r['rerun_ratio'] <= TARGETS['rerun_ratio'])}  "
          f"(cached {rerun['cached']}/{rerun['cached'] + rerun['transcoded']}, "
          f"same bytes: {rerun['same_sha256']})")
    print(f"{'flow wall s (inside)':24}{'':>12}{b['flow_wall']:>12.2f}"
          f"   rerun {rerun['flow_wall']:.2f}")
    print(f"\n{'rung':>6} {'size a':>11} {'size b':>11} {'b/a-1':>7} {'PSNR a':>7} {'PSNR b':>7} {'delta':>6}"
          f" {'SSIM a':>7} {'SSIM b':>7} {'frames a/b':>11}  size / PSNR")
    for q in r["rungs"]:
        qa, qb = q["a"], q["b"]
        print(f"{q['name']:>6} {qa['size']:>11,} {qb['size']:>11,} {q['size_delta_pct']:>+6.2f}% "
              f"{qa['psnr']:>7.2f} {qb['psnr']:>7.2f} {q['psnr_delta_db']:>+6.2f} {qa['ssim']:>7.4f} "
              f"{qb['ssim']:>7.4f} {qa['frames']:>5}/{qb['frames']:<5}  "
              f"{verdict(abs(q['size_delta_pct']) <= TARGETS['size_delta_pct'])} / "
              f"{verdict(abs(q['psnr_delta_db']) <= TARGETS['psnr_delta_db'])}")
    print(f"\ntargets: wall <= {TARGETS['wall_ratio']}, CPU <= {TARGETS['cpu_ratio']}, "
          f"size within {TARGETS['size_delta_pct']:g}%, PSNR within {TARGETS['psnr_delta_db']} dB, "
          f"rerun <= {TARGETS['rerun_ratio']:.0%} of cold")


def input_args(description: str) -> argparse.ArgumentParser:
    """The options every benchmark shares: the generated input and the output folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    return parser


def out_dir(args: argparse.Namespace) -> Path:
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


def main() -> None:
    args = input_args(__doc__.splitlines()[0]).parse_args()
    out = out_dir(args)
    started = time.perf_counter()

    base = make_input(out, args.seconds, args.height)
    source = unique_copy(base, out)
    pids = stack_pids()

    print("(b) engine, cold ...", file=sys.stderr)
    engine, result = run_engine(source, out / "engine", pids)
    plan = engine_plan(result)

    print("(a) reference ffmpeg ...", file=sys.stderr)
    ref_dir = out / "reference"
    shutil.rmtree(ref_dir, ignore_errors=True)
    ref_dir.mkdir()
    argv, ref_outputs = reference_argv(source, plan, ref_dir)
    ref = measure(argv, pids)

    print("engine, cached rerun ...", file=sys.stderr)
    rerun, rerun_result = run_engine(source, out / "engine-rerun", pids)

    print("quality ...", file=sys.stderr)
    rungs = []
    for rung, rend in zip(plan.rungs, result["renditions"]):
        qa = quality(ref_outputs[rung.name], source, rung)
        qb = quality(Path(rend["path"]), source, rung)
        rungs.append({"name": rung.name, "width": rung.width, "height": rung.height, "a": qa, "b": qb,
                      "size_delta_pct": 100 * (qb["size"] / qa["size"] - 1),
                      "psnr_delta_db": qb["psnr"] - qa["psnr"]})

    engine_cpu_total = engine.cpu + engine.server_cpu
    results = {
        "input": {"path": str(source), "seconds": args.seconds, "height": args.height,
                  "frames": frame_count(source)},
        "targets": TARGETS,
        "reference": {"wall": ref.wall, "cpu": ref.cpu, "server_cpu_during": ref.server_cpu, "argv": argv},
        "engine": {"wall": engine.wall, "cpu": engine.cpu, "server_cpu": engine.server_cpu,
                   "cpu_total": engine_cpu_total, "flow_wall": result["wall_seconds"],
                   "cli_seconds": result["cli_seconds"], "chunks": result["chunks"],
                   "transcoded": result["transcoded"], "cached": result["cached"],
                   "video_id": result["video_id"], "encoder": result["encoder"], "fps": result["fps"]},
        "rerun": {"wall": rerun.wall, "cpu": rerun.cpu, "server_cpu": rerun.server_cpu,
                  "flow_wall": rerun_result["wall_seconds"], "cached": rerun_result["cached"],
                  "transcoded": rerun_result["transcoded"],
                  "same_sha256": [x["sha256"] for x in rerun_result["renditions"]]
                  == [x["sha256"] for x in result["renditions"]]},
        "wall_ratio": engine.wall / ref.wall,
        "cpu_ratio": engine_cpu_total / ref.cpu,
        "cpu_ratio_processes": engine.cpu / ref.cpu,
        "rerun_ratio": rerun.wall / engine.wall,
        "rungs": rungs,
    }
    results["benchmark_seconds"] = time.perf_counter() - started
    (out / "results-core.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nresults: {out / 'results-core.json'} (benchmark took {results['benchmark_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
