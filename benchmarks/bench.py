"""`make bench`: every benchmark of issue 8 in one go, then benchmarks/results.json and the plots.

    .venv/bin/python benchmarks/bench.py [--only ladder,ladder-soft,scaling,limited,chunks,memory,orchestration]
                                         [--collect]

Each part is its own script (run alone for one figure) writing OUT/results-<part>.json:
  ladder         bench_ladder.py         engine vs one ffmpeg, sequential ffmpegs, a naive chunker; BD-rate
  ladder-soft    bench_ladder.py --contenders single --pattern soft
                                         the BD-rate again on an input whose top rung is under its VBV cap
  scaling        bench_scaling.py        1 worker vs all cores, 8 workers sharing them, the model
  limited        bench_limited.py        the model checked: 1-8 CPU-limited warm workers, mode "deployments"
  chunks         bench_chunks.py         chunk length 2-32 s: wall against size and PSNR
  memory         bench_memory.py         worker peak RSS, 10 s to 30 min
  orchestration  bench_orchestration.py  Prefect per task and per subflow; the largest run
`--collect` runs nothing: it gathers the parts' JSON (OUT first, then the published copies in
benchmarks/) into benchmarks/results.json and draws docs/img/bench-*.png. On 2 cores the whole
set takes about 2.3 hours; the machine should be otherwise idle (ratios are of wall times).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PARTS = {"ladder": ["bench_ladder.py"],
         "ladder-soft": ["bench_ladder.py", "--contenders", "single", "--pattern", "soft"],
         "scaling": ["bench_scaling.py"], "limited": ["bench_limited.py"], "chunks": ["bench_chunks.py"],
         "memory": ["bench_memory.py"],
         "orchestration": ["bench_orchestration.py"]}
FILES = {"ladder-soft": "results-ladder-single-soft.json"}  # the others: results-<part>.json
# where each part's published figures live when OUT has none (the runs behind docs/performance.md)
PUBLISHED = {"chunks": "results-chunks-60s.json"}
IMG = REPO / "docs" / "img"
RESULTS = HERE / "results.json"


def load(part: str, out: Path) -> dict | None:
    name = FILES.get(part, f"results-{part}.json")
    for path in (out / name, HERE / name, HERE / PUBLISHED.get(part, "-")):
        if path.is_file():
            return json.loads(path.read_text())
    return None


# ---------------------------------------------------------------- plots


def plot_ladder(r: dict, plt) -> Path:
    names = list(r["contenders"])
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, key, label in ((axes[0], "wall", "wall time, s"), (axes[1], "cpu_total", "CPU time, s (engine: + servers)"),
                           (axes[2], "peak_rss", "peak memory, MiB")):
        values = [r["contenders"][n][key] / (2**20 if key == "peak_rss" else 1) for n in names]
        bars = ax.bar(names, values, color=["#4c72b0" if n.startswith("engine") else "#999999" for n in names])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
        ax.set_title(label, fontsize=10)
        ax.tick_params(axis="x", rotation=35, labelsize=8)
    inp = r["input"]
    fig.suptitle(f"One machine ({r['cores']} cores): {inp['seconds']:g} s {inp['height']}p into {inp['ladder']}", fontsize=11)
    fig.tight_layout()
    return save(fig, "bench-ladder.png", plt)


def plot_bd(r: dict, plt, name: str = "bench-bdrate.png") -> Path:
    rows = r["bd_rate"]["rungs"]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.6 * len(rows), 3.6), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for who, style in (("single", "o--"), ("engine", "s-")):
            pts = sorted((p["bitrate"] / 1000, p["psnr"]) for p in row[who].values())
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=who)
        ax.set_title(f"{row['name']}: BD-rate {row['bd_rate_psnr_pct']:+.2f}% (PSNR)", fontsize=9)
        ax.set_xlabel("kb/s", fontsize=8)
        ax.set_ylabel("PSNR dB", fontsize=8)
        ax.legend(fontsize=8)
    pattern = r["input"].get("pattern", "standard")
    fig.suptitle(f"Rate-quality, CRF {', '.join(map(str, r['bd_rate']['crfs']))}: engine vs one ffmpeg "
                 f"({pattern} input)", fontsize=10)
    fig.tight_layout()
    return save(fig, name, plt)


def plot_scaling(r: dict, plt) -> Path:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    curves = [(f"model, {length} input", rows, "o-") for length, rows in r["model"].items()]
    curves += [(f"model, {length}, each worker downloading the whole source", rows, "x--")
               for length, rows in r.get("model_whole_downloads", {}).items()]
    for label, rows, style in curves:
        n = [x["workers"] for x in rows]
        ax1.plot(n, [x["speedup"] for x in rows], style, label=label)
        ax2.plot(n, [100 * x["efficiency"] for x in rows], style, label=label)
    ax1.plot([1, 64], [1, 64], ":", color="#999999", label="linear")
    one = r["check"]["one_core"]["measured_flow"]
    full = r["check"]["all_cores"]["measured_flow"]
    ax1.plot([1, r["cores"]], [1, one / full], "k^", markersize=9, label="measured here")
    ax2.plot([1, r["cores"]], [100, 100 * one / full / r["cores"]], "k^", markersize=9, label="measured here")
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8, 16, 32, 64], ["1", "2", "4", "8", "16", "32", "64"])
        ax.set_xlabel("transcode workers (one core each)")
        ax.legend(fontsize=8)
    ax1.set_yscale("log", base=2)
    ax1.set_yticks([1, 2, 4, 8, 16, 32, 64], ["1", "2", "4", "8", "16", "32", "64"])
    ax1.set_ylabel("speedup over 1 worker")
    ax2.set_ylabel("parallel efficiency, %")
    ax2.axhline(75, color="#cc7777", lw=0.8)
    ax2.axhline(60, color="#cc7777", lw=0.8, ls="--")
    ax2.set_ylim(0, 105)
    fig.suptitle("Scaling: measured on 1 and all cores here, modelled beyond from per-stage costs", fontsize=10)
    fig.tight_layout()
    return save(fig, "bench-scaling.png", plt)


def plot_limited(r: dict, plt) -> Path:
    runs = r["runs"]
    n = [run["workers"] for run in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax1.plot(n, [run["flow_wall"] for run in runs], "ko-", label="measured")
    for key, style, label in (("model_longest_first", "s--", "model (bench_scaling), from the 1-worker run"),
                              ("model_in_order", "x:", "model, batches in submission order"),
                              ("model_in_order_own_serial", "d:", "model's batches + each run's own serial part")):
        ax1.plot(n, [run[key] for run in runs], style, label=label)
    ax1.set_ylabel("run wall time, s")
    ax2.plot(n, [100 * run["efficiency"] for run in runs], "ko-", label="measured")
    ax2.plot(n, [100 * runs[0]["model_longest_first"] / run["model_longest_first"] / run["workers"] for run in runs],
             "s--", label="model")
    ax2.set_ylabel("parallel efficiency, %")
    ax2.set_ylim(0, 105)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xticks(n, [str(x) for x in n])
        ax.set_xlabel(f"transcode workers, {r['cpu_per_worker']:g} of a core each")
        ax.legend(fontsize=8)
    inp = r["input"]
    fig.suptitle(f"The scaling model against real workers (mode deployments, CPU-limited warm workers): "
                 f"{inp['seconds']:g} s {inp['height']}p, {inp['chunk_seconds']:g} s chunks", fontsize=10)
    fig.tight_layout()
    return save(fig, "bench-limited.png", plt)


def plot_chunks(r: dict, plt) -> Path:
    runs = r["runs"]
    fig, ax1 = plt.subplots(figsize=(6.5, 4))
    x = [run["chunk_seconds"] for run in runs]
    ax1.plot(x, [run["wall"] for run in runs], "o-", color="#4c72b0", label="wall s")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(x, [f"{v:g}" for v in x])
    ax1.set_xlabel("chunk length, s")
    ax1.set_ylabel("wall time, s", color="#4c72b0")
    ax2 = ax1.twinx()
    ax2.plot(x, [run["size_vs_default_pct"] for run in runs], "s--", color="#dd8452", label="ladder size vs 8 s")
    ax2.set_ylabel("ladder size vs 8 s chunks, %", color="#dd8452")
    ax1.set_title("Chunk length: time against size (PSNR moves with size)", fontsize=10)
    fig.tight_layout()
    return save(fig, "bench-chunks.png", plt)


def plot_memory(r: dict, plt) -> Path:
    runs = r["runs"]
    minutes = [run["seconds"] / 60 for run in runs]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, style, label in (("worker_peak_rss", "ko-", "worker (the command's Python process)"),
                              ("largest_ffmpeg_rss", "s--", "largest single ffmpeg")):
        ax.plot(minutes, [run[key] / 2**20 for run in runs], style, label=label)
        for x, run in zip(minutes, runs):
            ax.annotate(f"{run[key] / 2**20:.0f}", (x, run[key] / 2**20), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xticks(minutes, [f"{run['seconds']:g} s" if run["seconds"] < 60 else f"{run['seconds'] / 60:g} min"
                            for run in runs])
    ax.set_xlabel(f"video length ({r['height']}p; chunks: "
                  f"{', '.join(str(run['chunks']) for run in runs)})")
    ax.set_ylabel("peak RSS, MiB")
    ax.set_ylim(0, None)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Peak memory against the video's length (ladder {r['ladder']})", fontsize=10)
    fig.tight_layout()
    return save(fig, "bench-memory.png", plt)


def save(fig, name: str, plt) -> Path:
    IMG.mkdir(parents=True, exist_ok=True)
    path = IMG / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def collect(out: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": {}}
    plots = []
    for part in PARTS:
        data = load(part, out)
        if data is None:
            print(f"{part}: no results yet (run benchmarks/{' '.join(PARTS[part])})", file=sys.stderr)
            continue
        results["parts"][part] = data
        if part == "ladder":
            plots.append(plot_ladder(data, plt))
            if "bd_rate" in data:
                plots.append(plot_bd(data, plt))
        elif part == "ladder-soft" and "bd_rate" in data:
            plots.append(plot_bd(data, plt, "bench-bdrate-soft.png"))
        elif part == "scaling":
            plots.append(plot_scaling(data, plt))
        elif part == "limited":
            plots.append(plot_limited(data, plt))
        elif part == "chunks":
            plots.append(plot_chunks(data, plt))
        elif part == "memory":
            plots.append(plot_memory(data, plt))
    results["plots"] = [str(p) for p in plots]
    RESULTS.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"{RESULTS}; plots: {', '.join(results['plots'])}")
    return results


def main() -> None:
    global RESULTS, IMG
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(PARTS))
    parser.add_argument("--collect", action="store_true", help="run nothing; gather results and draw the plots")
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the combined figures (JSON)")
    parser.add_argument("--img", type=Path, default=IMG, help="folder for the plots")
    args = parser.parse_args()
    RESULTS, IMG = args.results.resolve(), args.img.resolve()
    if not args.collect:
        for part in args.only.split(","):
            script, *options = PARTS[part]
            print(f"\n=== {part} ({' '.join(PARTS[part])})", flush=True)
            subprocess.run([sys.executable, str(HERE / script), *options, "--out", str(args.out)], check=True, cwd=REPO)
    collect(args.out.resolve())


if __name__ == "__main__":
    main()
