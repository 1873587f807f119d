"""What the streaming extras cost: HLS packaging, poster/thumbnails, player page and the
per-frame PSNR/SSIM, against the core pipeline (MP4s and report only) on the same input.

    .venv/bin/python benchmarks/bench_streaming.py [--seconds 60] [--height 1080] [--rounds 2]

Each round runs the engine cold twice on content-unique copies of one input (so no
cache hit): once with TRANSCODE_STREAMING_OUTPUTS=false and TRANSCODE_QUALITY_METRICS=false
(core), once with the defaults (full); the order alternates between rounds so that a
drift of the machine's speed does not favour one side. Prints the ratio full / core of
wall time and CPU (engine processes and the local servers), and writes them to
OUT/results-streaming.json. Loopback traffic only.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import input_args, make_input, out_dir, run_engine, stack_pids, unique_copy  # noqa: E402

CORE_ENV = {"TRANSCODE_STREAMING_OUTPUTS": "false", "TRANSCODE_QUALITY_METRICS": "false"}
TARGET = 1.10  # the streaming extras may add at most 10% to the core's wall time


def one_run(mode: str, base: Path, out: Path, pids: list[int]) -> dict:
    saved = {k: os.environ.get(k) for k in CORE_ENV}
    if mode == "core":
        os.environ.update(CORE_ENV)
    try:
        source = unique_copy(base, out)
        measured, result = run_engine(source, out / f"engine-{mode}", pids)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"mode": mode, "wall": measured.wall, "cpu": measured.cpu, "server_cpu": measured.server_cpu,
            "flow_wall": result["wall_seconds"], "hls": result["hls_master_key"] is not None,
            "quality": [r["quality"] for r in result["renditions"]], "video_id": result["video_id"]}


def main() -> None:
    parser = input_args(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    out = out_dir(args)
    base = make_input(out, args.seconds, args.height)
    pids = stack_pids()
    runs = []
    for i in range(args.rounds):
        for mode in (("core", "full") if i % 2 == 0 else ("full", "core")):
            print(f"round {i + 1}: {mode} ...", file=sys.stderr)
            runs.append(one_run(mode, base, out, pids))
            assert runs[-1]["hls"] == (mode == "full") and all(runs[-1]["quality"]) == (mode == "full")
    rounds = [{"core": next(r for r in runs[2 * i: 2 * i + 2] if r["mode"] == "core"),
               "full": next(r for r in runs[2 * i: 2 * i + 2] if r["mode"] == "full")} for i in range(args.rounds)]
    wall = [r["full"]["wall"] / r["core"]["wall"] for r in rounds]
    cpu = [(r["full"]["cpu"] + r["full"]["server_cpu"]) / (r["core"]["cpu"] + r["core"]["server_cpu"]) for r in rounds]
    results = {"input": {"seconds": args.seconds, "height": args.height}, "target_wall_ratio": TARGET,
               "runs": runs, "wall_ratio": wall, "cpu_ratio": cpu,
               "wall_ratio_median": statistics.median(wall), "cpu_ratio_median": statistics.median(cpu),
               "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": os.cpu_count()}
    (out / "results-streaming.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'round':>5}  {'core wall':>9}  {'full wall':>9}  {'wall ratio':>10}  {'cpu ratio':>9}")
    for i, (r, w, c) in enumerate(zip(rounds, wall, cpu)):
        print(f"{i + 1:>5}  {r['core']['wall']:>9.1f}  {r['full']['wall']:>9.1f}  {w:>10.3f}  {c:>9.3f}")
    med = results["wall_ratio_median"]
    print(f"median wall ratio {med:.3f} (target <= {TARGET}: {'met' if med <= TARGET else 'MISSED'}), "
          f"cpu ratio {results['cpu_ratio_median']:.3f}; results: {out / 'results-streaming.json'}")


if __name__ == "__main__":
    main()
