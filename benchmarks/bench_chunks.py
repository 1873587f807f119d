"""Chunk length: wall time against bitrate and quality, to choose the default with data.

    .venv/bin/python benchmarks/bench_chunks.py [--seconds 60] [--height 1080] [--lengths 2,4,8,16,32]

Runs the engine cold (content-unique copies, no cache hit) once per chunk length on the same
input, and prints per length: wall, CPU (engine processes + local servers), chunks, the ladder's
total size and its size and PSNR/SSIM (the engine's own per-frame figures) relative to the
default length. Writes OUT/results-chunks.json. Loopback traffic only.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import (LADDER, TRANSCODE, input_args, make_input, measure, out_dir,  # noqa: E402
                        stack_pids, unique_copy)

DEFAULT = 8.0


def one_length(seconds: float, base: Path, out: Path, pids: list[int]) -> dict:
    source = unique_copy(base, out)
    m = measure([TRANSCODE, "run", str(source), "--json", "--renditions", LADDER,
                 "--chunk-seconds", f"{seconds:g}"], pids)
    result = json.loads(m.stdout)
    rungs = {r["name"]: {"size": r["size"], **(r["quality"] or {})} for r in result["renditions"]}
    return {"chunk_seconds": seconds, "chunks": result["chunks"], "wall": m.wall, "cpu": m.cpu,
            "server_cpu": m.server_cpu, "total_size": sum(r["size"] for r in rungs.values()), "rungs": rungs}


def main() -> None:
    parser = input_args(__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="2,4,8,16,32")
    args = parser.parse_args()
    out = out_dir(args)
    base = make_input(out, args.seconds, args.height)
    pids = stack_pids()
    lengths = [float(x) for x in args.lengths.split(",")]
    runs = []
    for seconds in lengths:
        print(f"chunks of {seconds:g} s ...", file=sys.stderr)
        runs.append(one_length(seconds, base, out, pids))
    ref = next((r for r in runs if r["chunk_seconds"] == DEFAULT), runs[0])
    for r in runs:
        r["size_vs_default_pct"] = 100 * (r["total_size"] / ref["total_size"] - 1)
        r["psnr_vs_default_db"] = {n: round(q.get("psnr_db", 0) - ref["rungs"][n].get("psnr_db", 0), 3)
                                   for n, q in r["rungs"].items()}
    results = {"input": {"seconds": args.seconds, "height": args.height}, "default": DEFAULT, "runs": runs,
               "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / "results-chunks.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'chunk s':>7}  {'chunks':>6}  {'wall s':>7}  {'cpu s':>7}  {'size vs 8 s':>11}  PSNR vs 8 s (dB, per rung)")
    for r in runs:
        psnr = " ".join(f"{n}:{d:+.3f}" for n, d in r["psnr_vs_default_db"].items())
        print(f"{r['chunk_seconds']:>7g}  {r['chunks']:>6}  {r['wall']:>7.1f}  {r['cpu'] + r['server_cpu']:>7.1f}  "
              f"{r['size_vs_default_pct']:>+10.2f}%  {psnr}")
    print(f"results: {out / 'results-chunks.json'}")


if __name__ == "__main__":
    main()
