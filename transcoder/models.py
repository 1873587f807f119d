"""Typed values passed between stages. Small, immutable, no video bytes."""

from __future__ import annotations

import hashlib
import json
import math
from fractions import Fraction

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)

    def __setstate__(self, state: dict) -> None:
        # Task results are pickled into the cache: a record written before a field with a
        # default was added unpickles without it (an AttributeError on first use). Defaults fill it.
        super().__setstate__(state)
        for name, field in type(self).model_fields.items():
            if name not in self.__dict__ and not field.is_required():
                self.__dict__[name] = field.get_default(call_default_factory=True)


class SourceObject(Frozen):
    """The original, stored whole at `key`; `video_id` derives from `sha256`."""

    video_id: str
    key: str
    sha256: str
    size: int
    ext: str
    origin: str  # what the user handed in (path, s3:// URI or URL), for the report


class VideoInfo(Frozen):
    codec: str
    width: int  # coded size
    height: int
    display_width: int  # after rotation and sample aspect ratio
    display_height: int
    rotation: int  # degrees, as the display matrix says (applied by the decoder)
    sar: str
    pix_fmt: str
    bit_depth: int
    field_order: str
    interlaced: bool
    fps_num: int
    fps_den: int
    frames: int  # packets in the stream (one per frame for the codecs we accept)
    start_time: float  # seconds, the stream's first presentation time
    duration: float
    time_base: str

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)


class AudioInfo(Frozen):
    codec: str
    channels: int
    sample_rate: int
    start_time: float
    duration: float


class Probe(Frozen):
    format_name: str
    format_start: float  # the container's start_time: `-ss` on input is relative to it
    duration: float
    size: int
    bit_rate: int
    video: VideoInfo
    audio: AudioInfo | None


Codec = Literal["h264", "hevc", "av1"]


class Rung(Frozen):
    name: str  # "720p": the short side of the displayed picture; "720p-av1" for codecs other than H.264
    width: int
    height: int
    codec: Codec = "h264"


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow",
                "placebo")


class EncoderSettings(Frozen):
    codec: Codec = "h264"  # of the rungs that name none
    preset: Literal[X264_PRESETS] = "veryfast"  # type: ignore[valid-type]
    crf: int = Field(23, ge=0, le=51)
    profile: str = "high"
    pix_fmt: str = "yuv420p"
    threads: int = 1  # per encoder instance: 1 is bit-identical run to run (encode.x264_args); parallelism comes from chunks
    audio_bitrate_kbps: int = 128

    def version_fields(self) -> dict:
        # threads change speed, not the picture enough to matter: not part of the key
        return self.model_dump(exclude={"threads"})


class Chunk(Frozen):
    """Frames [start_frame, end_frame) of the source; `out_frames` frames of output.

    `seek` is the input `-ss` (seconds from the container start): the demuxer goes to
    the keyframe at or before it and decoding starts there. `start_time` and `end_time`
    (source timestamps, seconds) lie between frames: `trim` keeps exactly the frames
    presented between them, so the chunk is its frames whatever the seek did, and a
    seek that landed late shows as frames missing, never as frames borrowed from the
    next chunk.
    """

    index: int
    start_frame: int
    end_frame: int
    seek: float | None  # None: the first chunk, decoded from the start
    start_time: float | None  # None: from the first frame
    end_time: float | None  # None: to the last frame
    out_start: int
    out_frames: int
    sha256: str
    # Seconds of source decoded before the chunk's first frame: from the keyframe the seek
    # lands on (for demuxers without an index, from where its margin puts it). What a chunk
    # reads is its own bytes plus this much (ingest.chunk_source).
    lead: float = 0.0
    # Source bytes of the chunk's frames: its share of the work, roughly (busy pictures
    # cost the source bits and the encoder time). Batches start the heaviest first.
    weight: int = 0

    @property
    def name(self) -> str:
        return f"{self.index:05d}"


class Plan(Frozen):
    video_id: str
    source_sha256: str
    rungs: tuple[Rung, ...]
    chunks: tuple[Chunk, ...]
    fps_num: int
    fps_den: int
    vfr: bool  # source timestamps are irregular: output is converted to fps_num/fps_den
    deinterlace: bool
    gop_frames: int
    total_frames: int  # output frames per rung
    has_audio: bool
    video_start: float  # first frame's time, seconds from the container start (A/V sync)
    encoder: EncoderSettings
    skipped_rungs: tuple[str, ...] = ()  # asked for, but would upscale
    source_width: int = 0  # displayed size; 0: unknown (every rung scaled from the source)
    source_height: int = 0

    @property
    def fps(self) -> Fraction:
        return Fraction(self.fps_num, self.fps_den)

    @property
    def duration(self) -> float:
        return float(self.total_frames / self.fps)

    def filters_fingerprint(self) -> dict:
        return {"vfr": self.vfr, "fps": f"{self.fps_num}/{self.fps_den}", "deinterlace": self.deinterlace}

    def lineage(self, rung: Rung) -> list[str]:
        """The scaling steps from the source to this rung's pictures."""
        from .scaling import lineage  # scaling imports Rung from here

        return lineage(self.rungs, (self.source_width, self.source_height), self.rungs.index(rung))

    def profile_hash(self, rung: Rung) -> str:
        """Everything that decides a rung's pictures, hashed: the cache key's profile part."""
        return stable_hash(
            {
                "rung": rung.model_dump(),
                "encoder": self.encoder.version_fields(),
                "gop": self.gop_frames,
                **self.filters_fingerprint(),
                "scaled": self.lineage(rung),
            }
        )[:16]


class Quality(Frozen):
    """PSNR and SSIM over some frames of one rung, against the source scaled to it.

    Sums, not means, so that chunks add up to the rung exactly whatever their lengths.
    """

    frames: int
    mse_sum: float  # per-frame MSE over Y, U and V weighted by plane size
    ssim_y_sum: float  # per-frame luma SSIM
    method: str  # "x264" (the encoder's own measurement) or "ffmpeg" (psnr/ssim filters)

    def __add__(self, other: "Quality") -> "Quality":
        method = self.method if self.method == other.method else "mixed"
        return Quality(frames=self.frames + other.frames, mse_sum=self.mse_sum + other.mse_sum,
                       ssim_y_sum=self.ssim_y_sum + other.ssim_y_sum, method=method)

    def summary(self) -> dict:
        """PSNR from the mean MSE (global PSNR, as x264 and ffmpeg's psnr filter sum up), mean luma SSIM."""
        n = max(self.frames, 1)
        return {"psnr_db": psnr_db(self.mse_sum / n), "ssim": round(self.ssim_y_sum / n, 5),
                "frames": self.frames, "method": self.method}


PSNR_CAP = 100.0  # identical pictures: infinite PSNR, reported as this


def psnr_db(mse: float, peak: int = 255) -> float:
    return PSNR_CAP if mse <= 0 else round(min(PSNR_CAP, 10 * math.log10(peak * peak / mse)), 3)


def mse_of(psnr: float, peak: int = 255) -> float:
    return peak * peak / 10 ** (psnr / 10)


class Segment(Frozen):
    """One transcoded chunk of one rung, stored at `key` (MPEG-TS, video only)."""

    rung: str
    index: int
    key: str
    frames: int
    size: int
    sha256: str
    quality: Quality | None = None  # None when measuring was switched off
    etag: str | None = None  # the object's ETag after upload: any later overwrite changes it


class AudioTrack(Frozen):
    key: str
    sha256: str
    duration: float


class HlsMedia(Frozen):
    """One packaged HLS stream, as the master playlist needs it."""

    uri: str  # media playlist, relative to the master playlist
    codecs: str  # RFC 6381, e.g. avc1.64001f or mp4a.40.2
    peak_bps: int  # RFC 8216 peak segment bit rate
    average_bps: int
    segments: int
    target_duration: float
    stored: str | None = None  # Storage.stamp of its folder as written (None: an older result)


class Rendition(Frozen):
    name: str
    key: str
    path: str | None
    width: int
    height: int
    frames: int
    duration: float
    audio_duration: float | None
    bitrate: int
    size: int
    sha256: str
    # the server's ETag of the MP4 as published: bytes written over it since, even with its
    # metadata copied, no longer pass Storage.holds (None: a result from before it was kept)
    etag: str | None = None
    hls: HlsMedia | None = None
    quality: dict | None = None  # Quality.summary() of every frame; None if any chunk lacks it
    cached_chunks: int = 0  # of this rung's chunks, answered from the cache in this run
    ready_seconds: float | None = None  # from the run's start until this MP4 was published


class Thumbnails(Frozen):
    """Poster and seek-bar thumbnails of one video (`{video_id}/thumbnails/`)."""

    poster_key: str
    poster_time: float  # seconds into the video
    vtt_key: str  # WebVTT thumbnails track; cues point into the sprites
    sprite_keys: tuple[str, ...]
    count: int
    interval: float  # seconds of video per thumbnail
    width: int
    height: int
    stored: str | None = None  # Storage.stamp of the sprites and the track as written


class EncoderReport(Frozen):
    codec: str
    preset: str
    crf: int
    gop_frames: int
    profile: str
    pix_fmt: str
    audio_bitrate_kbps: int


class BatchResult(Frozen):
    """What one transcode batch hands back to the parent: small values, no media."""

    segments: tuple[Segment, ...]
    cached: tuple[str, ...] = ()  # "rung/chunk index" of the tasks answered from the cache
    audio: AudioTrack | None = None


class TranscodeResult(Frozen):
    video_id: str
    source_key: str
    chunks: int
    transcoded: int  # chunk x rung tasks that ran in this run
    cached: int  # chunk x rung tasks answered from the cache
    renditions: tuple[Rendition, ...]
    encoder: EncoderReport
    fps: str
    duration: float
    skipped_rungs: tuple[str, ...]
    report_key: str
    manifest_key: str
    hls_master_key: str | None
    thumbnails: Thumbnails | None = None
    player_url: str | None = None  # the player page in storage (presigned; expires)
    wall_seconds: float
    # answered from the finished outputs of an earlier run with the same settings, no flow run
    # (transcoder/reuse.py)
    reused: bool = False


def stable_hash(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()
