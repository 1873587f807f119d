"""Memory: a worker's peak RSS against the video's length (10 s to 30 min, same picture size).

    .venv/bin/python benchmarks/bench_memory.py [--lengths 10,60,180,600,1800] [--height 480]

Each input (every length in seconds, shortest first) runs cold through `transcode run` (mode
local: the command's process is the worker, its ffmpegs its children). Sampled every 0.2 s:
the worker's Python process (its VmHWM, the kernel's own high-water mark), the largest single
ffmpeg, and everything the command started at once. The picture size is kept small so the 10-minute run fits in minutes on 2 cores;
memory per ffmpeg depends on the picture size and the chunk, not on the video's length,
which is what this checks. Writes OUT/results-memory.json. Loopback only.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import FFMPEG, TRANSCODE, make_input, out_dir, proc_table, stack_pids, tree_usage, unique_copy  # noqa: E402

LADDER = "360p,240p"


def vm_status(pid: int) -> tuple[int, int]:
    """(VmHWM, VmRSS) of a process, bytes: its peak so far and what it holds now."""
    found = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "VmRSS:")):
                found[line[:5]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found.get("VmHWM", 0), found.get("VmRSS", 0)


def command_of(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def cmdline_of(pid: int) -> str:
    try:
        return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0"))[:600]
    except OSError:
        return ""


PIECE = 600  # seconds: longer inputs are this one over again (the fractal part of the pattern
             # slows lavfi's generation to a crawl past about 10 minutes)


def input_of(out: Path, seconds: float, height: int) -> Path:
    """The test pattern, `seconds` long; past PIECE, PIECE-second copies joined by stream copy."""
    if seconds <= PIECE:
        return make_input(out, seconds, height)
    copies = math.ceil(seconds / PIECE)
    piece = make_input(out, PIECE, height)
    joined = out / f"source-{copies * PIECE}s-{height}p-gop50.mp4"
    if not joined.exists():
        listing = out / f"{joined.stem}.txt"
        listing.write_text(f"file '{piece.resolve()}'\n" * copies)
        subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-y", "-f", "concat", "-safe", "0",
                        "-i", str(listing), "-map", "0", "-c", "copy", str(joined.with_suffix(".part.mp4"))],
                       check=True)
        joined.with_suffix(".part.mp4").rename(joined)
        listing.unlink()
    return joined


def run_sampled(source: Path) -> dict:
    proc = subprocess.Popen([TRANSCODE, "run", str(source), "--json", "--renditions", LADDER, "--no-reuse"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    worker = tree = ffmpeg = 0
    largest = ""  # the command line of the largest ffmpeg: which step it is
    timeline: list[tuple[float, float]] = []  # (seconds, worker RSS MiB) every 2 s: when it grows
    peak_at = 0.0
    started = time.perf_counter()
    while proc.poll() is None:
        hwm, worker_rss = vm_status(proc.pid)
        now = time.perf_counter() - started
        if hwm > worker:
            worker, peak_at = hwm, now
        if not timeline or now - timeline[-1][0] >= 2:
            timeline.append((round(now, 1), round(worker_rss / 2**20, 1)))
        table = proc_table()
        tree = max(tree, tree_usage(table, [proc.pid])[0])
        for pid, (ppid, rss, _) in table.items():
            if ppid == proc.pid and rss > ffmpeg and command_of(pid) == "ffmpeg":
                ffmpeg, largest = rss, cmdline_of(pid)
        time.sleep(0.2)
    wall = time.perf_counter() - started
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"engine failed: {stderr[-2000:]}")
    result = json.loads(stdout)
    return {"wall": wall, "chunks": result["chunks"], "duration": result["duration"], "worker_peak_rss": worker,
            "largest_ffmpeg_rss": ffmpeg, "largest_ffmpeg_command": largest, "all_processes_peak_rss": tree,
            "worker_peak_at": round(peak_at, 1), "worker_rss_timeline": timeline}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="10,60,180,600,1800", help="seconds of video, comma-separated")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = parser.parse_args()
    out = out_dir(args) / "memory"
    out.mkdir(parents=True, exist_ok=True)
    stack_pids()
    rows = []
    lengths = sorted(float(x) for x in args.lengths.split(","))
    for seconds in lengths:
        print(f"{seconds:g} s input ...", file=sys.stderr)
        source = unique_copy(input_of(out.parent, seconds, args.height), out)
        rows.append({"seconds": seconds, **run_sampled(source)})
    results = {"height": args.height, "ladder": LADDER, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": rows,
               # shortest to longest; and from the second length, where every stage runs as many
               # transfers and tasks at once as it ever will (a 10 s video has one chunk)
               "worker_growth": rows[-1]["worker_peak_rss"] / rows[0]["worker_peak_rss"],
               "worker_growth_from_second": rows[-1]["worker_peak_rss"] / rows[min(1, len(rows) - 1)]["worker_peak_rss"],
               "ffmpeg_growth": rows[-1]["largest_ffmpeg_rss"] / rows[0]["largest_ffmpeg_rss"]}
    (out.parent / "results-memory.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'input':>8} {'chunks':>6} {'wall s':>7} {'worker MiB':>11} {'largest ffmpeg':>15} {'all at once':>12}")
    for r in rows:
        print(f"{r['seconds']:>7g}s {r['chunks']:>6} {r['wall']:>7.1f} {r['worker_peak_rss'] / 2**20:>11.0f} "
              f"{r['largest_ffmpeg_rss'] / 2**20:>15.0f} {r['all_processes_peak_rss'] / 2**20:>12.0f}")
    for r in rows:
        print(f"largest ffmpeg at {r['seconds']:g} s: {r['largest_ffmpeg_command'][:300]}")
        print(f"worker's peak at {r['seconds']:g} s: {r['worker_peak_at']:.0f} s into the {r['wall']:.0f} s run")
    print(f"\nworker {results['worker_growth']:.3f}x ({results['worker_growth_from_second']:.3f}x from the second "
          f"length), largest ffmpeg {results['ffmpeg_growth']:.2f}x from {lengths[0]:g} s to {lengths[-1]:g} s; "
          f"results: {out.parent / 'results-memory.json'}")


if __name__ == "__main__":
    main()
