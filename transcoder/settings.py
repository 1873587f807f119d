"""Every knob in one place, read from the environment (prefix `TRANSCODE_`).

Tasks never hard-code a bucket, a block name or an endpoint: they ask `get_settings()`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


# The input limits: a source they refuse must not be answered from a record made under others
# (transcoder/reuse.py, transcoder/facts.py).
INPUT_LIMITS = frozenset({"max_input_bytes", "max_duration_seconds", "max_dimension", "min_dimension", "max_frames"})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRANSCODE_", extra="ignore")

    # Local state of the embedded stack (servers' data, scratch space, samples).
    data_dir: Path = REPO_ROOT / ".data"
    # Storage: an S3Bucket block by name, unless an endpoint is given here, in which
    # case credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY.
    storage_block: str = "transcode-storage"
    bucket: str = "videos"
    s3_endpoint: str | None = None
    s3_region: str = "us-east-1"
    # Parts of one large transfer in flight (boto3's default is 10). Against one S3 server
    # on loopback 4 move a 1 GiB file as fast (upload 124 against 121 MB/s, download the
    # same) and the worker holds 12 MiB for an upload instead of 31, which grew its peak with
    # the source's size. A distant server (more latency per part) may want more.
    s3_transfer_threads: int = Field(4, ge=1, le=64)
    # What viewers' browsers reach the S3 server at, when not the endpoint above (the
    # player page's and the ingest API's presigned links are signed for it).
    public_s3_endpoint: str | None = None

    # Chunking. Every rung has a keyframe every `gop_seconds` (the same frames in all
    # rungs); chunks are a whole number of GOPs, so every chunk joint is such a keyframe,
    # and HLS segments (`segment_seconds`, a multiple of the GOP) can cut anywhere on it.
    gop_seconds: float = Field(2.0, gt=0.1, le=30)
    segment_seconds: float = Field(4.0, gt=0.1, le=60)
    # Unset: chosen per video (plan.auto_chunk_seconds): about two chunks per encode slot,
    # 8 to 32 s. Each chunk costs a process, x264 start-ups, a task and its storage requests,
    # so fewer, longer chunks are cheaper where there are no more slots to fill.
    chunk_seconds: float | None = Field(None, gt=0.1, le=600)
    max_workers: int = Field(default_factory=lambda: os.cpu_count() or 2, ge=1)
    # Chunk encodes a run has at once, for choosing the chunk length: unset, `max_workers` in
    # mode "local" and 16 in mode "deployments" (set it to the transcode pool's size). Part
    # of the plan, so of the cache keys: reruns with the same value reuse every chunk.
    parallel_chunks: int | None = Field(None, ge=1)
    # Fan-out across workers (mode "deployments"): chunks per transcode batch (one flow
    # run on one worker, every rung of each chunk; a run costs a process/container start).
    batch_chunks: int = Field(4, ge=1)
    # How a worker without the source on its disk reads a chunk: "ranges", its bytes from
    # storage through a presigned link (HTTP range requests; what a chunk's ffmpeg reads is
    # its own bytes plus those from the keyframe it decodes from, about 7% over the file in
    # all, measured); "download", the whole file once per worker; "auto" (default), ranges
    # unless the chunk decodes more than its own length before its first frame (a source
    # with sparse keyframes, where each chunk would read much of the file again).
    # `true`/`false` are read as ranges/download.
    range_reads: Literal["auto", "ranges", "download"] = "auto"
    # the longest lead (seconds decoded before a chunk's first frame), in chunk lengths, that "auto" reads by range
    range_read_max_lead: float = Field(1.0, ge=0)

    # Encoder defaults (see README: why veryfast / CRF 23 / capped VBV).
    codec: str = "h264"  # h264 | hevc | av1, for rungs that name none (`720p:av1` does)
    preset: str = "veryfast"
    crf: int = Field(23, ge=0, le=51)
    # >1 is faster per chunk but not bit-identical run to run under load (encode.x264_args)
    x264_threads: int = Field(1, ge=0, le=64)
    audio_bitrate_kbps: int = Field(128, ge=16, le=512)

    # Measure PSNR/SSIM of every frame of every rung while checking each chunk (H.264: x264
    # measures while it encodes, about 1% more CPU; other codecs: one more decode of the
    # source). Off: every segment is decoded to check it.
    quality_metrics: bool = True
    # How each written segment is checked. Every frame's decodability is established either
    # way: H.264 segments whose PSNR x264 measured were decoded by x264 itself (its
    # reconstruction is what any decoder makes of the bitstream), so by default only their
    # packets are read back (frame count, clean demuxing: 0.6 against 3.9 CPU-s for the
    # four rungs of an 8 s 1080p chunk, measured); other segments are decoded. True: decode
    # every segment again with ffmpeg's decoder as well.
    decode_segments: bool = False

    # HLS package, poster, thumbnails and player page (off: the MP4s and report only).
    streaming_outputs: bool = True
    # Lifetime of the player page's presigned links (SigV4 allows at most 7 days).
    player_link_seconds: int = Field(7 * 24 * 3600, ge=60, le=7 * 24 * 3600)

    # Process limits: every ffmpeg gets a timeout proportional to the media it handles.
    ffmpeg_timeout_per_media_second: float = 30.0
    ffmpeg_min_timeout: float = 120.0
    transcode_retries: int = Field(2, ge=0, le=10)

    # Input limits (hostile inputs).
    max_input_bytes: int = 20 * 1024**3
    max_duration_seconds: float = 6 * 3600
    max_dimension: int = 8192
    min_dimension: int = 16
    max_frames: int = 2_000_000
    allow_private_urls: bool = False
    # Networks (CIDR) that URL sources may reach although private, e.g. an internal media
    # server: `TRANSCODE_URL_ALLOWED_NETWORKS='["10.20.0.0/16"]'`. Narrower than the switch above.
    url_allowed_networks: list[str] = Field(default_factory=list)
    url_socket_timeout: float = 20.0
    # A URL download's whole time: a server that sends a byte now and then never trips the
    # socket timeout. Three hours: the size limit at about 2 MB/s.
    url_download_seconds: float = Field(3 * 3600, gt=0)

    @field_validator("range_reads", mode="before")
    @classmethod
    def _range_reads_switch(cls, value):
        switch = {"true": "ranges", "1": "ranges", "yes": "ranges", "on": "ranges",
                  "false": "download", "0": "download", "no": "download", "off": "download"}
        if isinstance(value, bool):
            return "ranges" if value else "download"
        return switch.get(str(value).strip().lower(), value)

    @property
    def results_block(self) -> str:
        """S3Bucket block (same bucket, folder prefect-results/) for stage flows' results."""
        return f"{self.storage_block}-results"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def reload_settings() -> Settings:
    """Drop the cached settings (the environment changed, e.g. in tests)."""
    get_settings.cache_clear()
    return get_settings()
