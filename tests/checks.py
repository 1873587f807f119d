"""Independent checks of outputs with ffprobe/ffmpeg (not the pipeline's own verify)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path


def streams(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-count_frames", "-show_entries",
                          "stream=codec_type,codec_name,profile,level,width,height,pix_fmt,field_order,nb_read_frames,duration,start_time,"
                          "sample_rate,channels:stream_side_data=rotation:format=duration,start_time", "-of", "json", str(path)],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    by_type = {}
    for s in data["streams"]:
        by_type.setdefault(s["codec_type"], s)
    by_type["format"] = data["format"]
    return by_type


def decoded_frames(path: Path) -> int:
    return int(streams(path)["video"]["nb_read_frames"])


def moov_before_mdat(path: Path) -> bool:
    head = path.read_bytes()[:1 << 16]
    return 0 <= head.find(b"moov") < (head.find(b"mdat") if b"mdat" in head else 1 << 30)


def per_frame_psnr(output: Path, source: Path, width: int, height: int, extra_filters: str = "") -> list[float]:
    """PSNR (luma+chroma average) of each output frame against the source frame it should be.

    A frame lost, repeated or shifted at a chunk joint shows up as a sharp dip.
    """
    pre = f"{extra_filters}," if extra_filters else ""
    graph = (f"[1:v]{pre}scale={width}:{height}:flags=bicubic,setsar=1,format=yuv420p[ref];"
             f"[0:v]format=yuv420p[dis];[dis][ref]psnr=stats_file=-")
    proc = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(output), "-i", str(source),
                           "-lavfi", graph, "-f", "null", "-"], capture_output=True, text=True, check=True)
    values = []
    for line in proc.stdout.splitlines():
        m = re.search(r"psnr_avg:(\S+)", line)
        if m:
            values.append(float("inf") if m.group(1) == "inf" else float(m.group(1)))
    return values


def keyframe_times(path: Path) -> list[float]:
    """Presentation times of the video's keyframes, from packets (no decoding)."""
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts_time,flags",
                          "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout
    times = []
    for line in out.splitlines():
        pts, _, flags = line.partition(",")
        if "K" in flags and pts not in ("", "N/A"):
            times.append(round(float(pts), 3))
    return sorted(times)


# ------------------------------------------------------------ Prefect runs


def wait_final(flow_run_id, timeout: float = 900):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            assert time.monotonic() < deadline, f"flow run still {run.state.name} after {timeout} s"
            time.sleep(2)


def child_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))


def delete_project_deployments() -> int:
    """Remove prefect.yaml's deployments (`*/default`) and so their triggers from the test server,
    which the whole session shares: another module's event must not start runs of them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        found = client.read_deployments(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["default"])))
        for deployment in found:
            client.delete_deployment(deployment.id)  # its automations go with it
    return len(found)


def video_md5(path: Path) -> str:
    """MD5 of the video stream's packets: the same encode, whatever the container around it."""
    out = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v", "-c", "copy", "-f", "md5", "-"],
                         capture_output=True, text=True, check=True).stdout
    return out.strip()


class FFmpegSignaller(threading.Thread):
    """Sends `sig` (SIGKILL by default; SIGSTOP hangs it) to the real ffmpeg processes
    working on one chunk, `times` times."""

    def __init__(self, chunk: str, times: int, sig: int = signal.SIGKILL):
        super().__init__(daemon=True)
        self.needle, self.times, self.sig, self.killed = f"chunk_{chunk}-".encode(), times, sig, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.killed < self.times:
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if cmd.startswith(b"ffmpeg\0") and self.needle in cmd:
                    try:
                        os.kill(int(pid), self.sig)
                        self.killed += 1
                    except ProcessLookupError:
                        pass
            time.sleep(0.01)
