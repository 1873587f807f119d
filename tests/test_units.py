"""Pure functions: argv building, the ladder, chunk planning, the address check. No process runs."""

from __future__ import annotations

import re
import subprocess
from fractions import Fraction

import pytest

from transcoder import encode, keys, scaling
from transcoder.errors import BadInputError
from transcoder.ffmpeg import FFPROBE
from transcoder.ladder import build_ladder, parse_rungs
from transcoder.models import EncoderSettings, Probe, Rung, VideoInfo
from transcoder.plan import auto_chunk_seconds, chunk_length, make_plan
from transcoder.probe import FrameIndex, frame_index, frame_rate
from transcoder.samples import make_sample
from transcoder.settings import get_settings
from transcoder.urlfetch import address_allowed


def video(w=1920, h=1080, rotation=0, sar="1:1", interlaced=False) -> VideoInfo:
    dw, dh = (w * Fraction(*map(int, sar.split(":"))), h)
    if rotation % 180:
        dw, dh = dh, dw
    return VideoInfo(codec="h264", width=w, height=h, display_width=round(dw), display_height=round(dh),
                     rotation=rotation, sar=sar, pix_fmt="yuv420p", bit_depth=8, field_order="progressive",
                     interlaced=interlaced, fps_num=25, fps_den=1, frames=0, start_time=0, duration=60,
                     time_base="1/12800")


def probe_of(v: VideoInfo, audio=False) -> Probe:
    return Probe(format_name="mp4", format_start=0.0, duration=60, size=1, bit_rate=1, video=v, audio=None)


def names(rungs):
    return [(r.name, r.width, r.height) for r in rungs]


def test_odd_rungs_and_sources_never_upscale_by_a_pixel():
    assert names(build_ladder(video(646, 363), parse_rungs("363p"))[0]) == [("363p", 644, 362)]
    assert names(build_ladder(video(363, 646), parse_rungs("363p"))[0]) == [("363p", 362, 644)]
    assert names(build_ladder(video(1283, 721), parse_rungs("721p"))[0]) == [("721p", 1282, 720)]
    for w, h, spec in ((1281, 720, "720p"), (1920, 1080, "1079p,721p,361p"), (1279, 719, "719p,481p")):
        for rung in build_ladder(video(w, h), parse_rungs(spec))[0]:
            assert rung.width <= w and rung.height <= h and rung.width % 2 == rung.height % 2 == 0


def test_default_ladder_does_not_upscale_and_adds_source_height():
    rungs, skipped = build_ladder(video(1280, 544), None)
    assert names(rungs) == [("544p", 1280, 544), ("480p", 1130, 480), ("360p", 848, 360)]
    assert skipped == ()
    assert [r.name for r in build_ladder(video(1920, 1080), None)[0]] == ["1080p", "720p", "480p", "360p"]
    assert [r.name for r in build_ladder(video(3840, 2160), None)[0]] == ["1080p", "720p", "480p", "360p"]
    assert names(build_ladder(video(320, 240), None)[0]) == [("240p", 320, 240)]


def test_earlier_system_ladder_and_skipped_upscales():
    rungs, skipped = build_ladder(video(1920, 1080), parse_rungs("720p,480p,320p"))
    assert names(rungs) == [("720p", 1280, 720), ("480p", 854, 480), ("320p", 568, 320)]
    rungs, skipped = build_ladder(video(1280, 720), parse_rungs("1080p,720p"))
    assert [r.name for r in rungs] == ["720p"] and skipped == ("1080p",)


def test_rotation_and_non_square_pixels():
    # stored 1280x720, shown portrait: the rung is the short side, the width
    rungs, _ = build_ladder(video(1280, 720, rotation=90), None)
    assert names(rungs) == [("720p", 720, 1280), ("480p", 480, 854), ("360p", 360, 640)]
    # 720x576 with 16:15 pixels shows as 768x576
    rungs, _ = build_ladder(video(720, 576, sar="16:15"), None)
    assert names(rungs)[0] == ("576p", 768, 576)


def test_ladder_may_mix_codecs():
    rungs, skipped = build_ladder(video(1920, 1080), parse_rungs("1080p:av1,720p,720p:hevc,2160p:av1"))
    assert [(r.name, r.codec, r.width) for r in rungs] == [
        ("1080p-av1", "av1", 1920), ("720p", "h264", 1280), ("720p-hevc", "hevc", 1280)]
    assert skipped == ("2160p-av1",)
    rungs, _ = build_ladder(video(640, 360), None, codec="av1")
    assert [r.name for r in rungs] == ["360p-av1"]
    assert parse_rungs("480p", codec="hevc") == ((480, "hevc"),)


@pytest.mark.parametrize("bad", ["720", "abc", "5p", "99999p", "720p,x", "720p:vp9", "720p:"])
def test_bad_rendition_names_are_refused(bad):
    with pytest.raises(BadInputError):
        parse_rungs(bad)


def index(n, step=512, tb=Fraction(1, 12800), keyframes=None) -> FrameIndex:
    return FrameIndex(pts=[i * step for i in range(n)], keyframes=set(keyframes or [0]), time_base=tb)


def test_plan_chunks_are_whole_segments_and_cover_every_frame():
    enc = EncoderSettings()
    plan = make_plan("vid", "sha", probe_of(video()), index(1500), None, enc, gop_seconds=4, chunk_seconds=8)
    assert plan.gop_frames == 100
    starts = [c.start_frame for c in plan.chunks]
    assert all(s % 100 == 0 for s in starts)
    assert plan.chunks[0].seek is None
    assert sum(c.out_frames for c in plan.chunks) == 1500 == plan.total_frames
    assert all(a.end_frame == b.start_frame for a, b in zip(plan.chunks, plan.chunks[1:]))
    assert plan.chunks[-1].end_frame == 1500
    sizes = [c.out_frames for c in plan.chunks]
    assert max(sizes) - min(sizes) <= 100  # balanced: no long tail chunk
    # the seek point lies between the chunk's first frame and the frame before it
    c = plan.chunks[1]
    assert (c.start_frame - 1) / 25 < c.seek < c.start_frame / 25


def test_chunks_weigh_their_source_bytes(tmp_path):
    """A chunk's weight is the source bytes of its frames (the index reads packet sizes
    without decoding), so a batch starts the busy chunks first."""
    sizes = [1000] * 600 + [9000] * 300 + [1000] * 600  # a busy middle
    idx = FrameIndex(pts=[i * 512 for i in range(1500)], keyframes={0}, time_base=Fraction(1, 12800), sizes=sizes)
    plan = make_plan("vid", "sha", probe_of(video()), idx, None, EncoderSettings(), gop_seconds=4, chunk_seconds=8)
    assert [c.weight for c in plan.chunks] == [sum(sizes[c.start_frame:c.end_frame]) for c in plan.chunks]
    heaviest = max(plan.chunks, key=lambda c: c.weight)
    assert 600 <= heaviest.start_frame < 900
    # read from a real file: one size per frame, in presentation order, summing to the packets' bytes
    path = make_sample("standard", tmp_path / "s.mp4", seconds=2, width=320, height=180, fps="25")
    read = frame_index(path, get_settings())
    packets = subprocess.run([FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=size",
                              "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout.split()
    assert read.sizes is not None and len(read.sizes) == len(read.pts) >= 50
    assert sum(read.sizes) == sum(int(x) for x in packets)
    # B-frames: the packets come in decode order; the index is in presentation order, each
    # frame with its own size and key flag
    path = make_sample("open_gop", tmp_path / "b.mp4", seconds=2, width=320, height=180, fps="25")
    read = frame_index(path, get_settings())
    rows = subprocess.run([FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pts,size,flags",
                           "-of", "csv=p=0", str(path)], capture_output=True, text=True, check=True).stdout.split()
    decoded = [(int(pts), int(size), "K" in flags) for pts, size, flags in (r.split(",") for r in rows)]
    assert [pts for pts, _, _ in decoded] != sorted(pts for pts, _, _ in decoded)
    shown = sorted(decoded)
    assert list(read.pts) == [pts for pts, _, _ in shown] and list(read.sizes) == [size for _, size, _ in shown]
    assert read.keyframes == {i for i, (_, _, key) in enumerate(shown) if key}


def test_chunks_are_cut_between_frames_and_seek_onto_their_keyframe():
    plan = make_plan("vid", "sha", probe_of(video()), index(1500, keyframes=[0, 200, 400]), None,
                     EncoderSettings(), gop_seconds=4, chunk_seconds=8)
    first, second, third = plan.chunks[:3]
    assert first.seek is None and first.start_time is None and first.end_time == second.start_time
    assert 199 / 25 < second.start_time < 200 / 25 < second.seek < 201 / 25  # lands on keyframe 200
    assert third.start_frame == 400 and 400 / 25 < third.seek
    assert plan.chunks[-1].end_time is None
    # no keyframe at the start: seek before it, the demuxer goes back to the GOP's keyframe
    plan = make_plan("vid", "sha", probe_of(video()), index(1500), None, EncoderSettings(), 4, 8)
    c = plan.chunks[1]
    assert c.seek == c.start_time


def test_unindexed_containers_seek_a_gop_early():
    probe = probe_of(video()).model_copy(update={"format_name": "mpegts"})
    plan = make_plan("vid", "sha", probe, index(1500, keyframes=[0, 50, 100, 150, 200, 250]), None,
                     EncoderSettings(), 4, 8)
    c = plan.chunks[1]
    assert c.start_time - c.seek >= 2.0  # longest GOP (2 s) + 1 s, as far as the start allows


def test_plan_prefers_keyframes_within_reach():
    plan = make_plan("vid", "sha", probe_of(video()), index(1500, keyframes=[0, 300, 700]), None,
                     EncoderSettings(), gop_seconds=4, chunk_seconds=8)
    assert [c.start_frame for c in plan.chunks][:4] == [0, 300, 400, 700]


def test_chunks_read_by_range_unless_they_decode_far_before_their_start(monkeypatch):
    """A worker without the source reads a chunk by range when the frames it decodes before
    its first (its lead, from the keyframe the seek lands on) are at most one chunk long."""
    from transcoder.ingest import reads_by_range
    from transcoder.settings import Settings

    # keyframes at 0, 12 s and 28 s; 8 s chunks on a 4 s GOP
    plan = make_plan("vid", "sha", probe_of(video()), index(1500, keyframes=[0, 300, 700]), None,
                     EncoderSettings(), gop_seconds=4, chunk_seconds=8)
    leads = [(c.start_frame, c.lead) for c in plan.chunks[:5]]
    assert leads[0] == (0, 0) and leads[1] == (300, 0)  # on keyframes: nothing decoded before
    assert leads[2][0] == 400 and leads[2][1] == pytest.approx(4.0)  # from keyframe 300
    auto = Settings(range_reads="auto")
    assert [reads_by_range(c, plan, auto) for c in plan.chunks[:3]] == [True, True, True]
    # one keyframe at the start: every chunk but the first would read the file from its start
    sparse = make_plan("vid", "sha", probe_of(video()), index(1500), None, EncoderSettings(), 4, 8)
    assert [reads_by_range(c, sparse, auto) for c in sparse.chunks[:3]] == [True, True, False]
    assert sparse.chunks[2].lead == pytest.approx(sparse.chunks[2].start_frame / 25, abs=0.05)
    assert all(reads_by_range(c, sparse, Settings(range_reads="ranges")) for c in sparse.chunks)
    assert not any(reads_by_range(c, plan, Settings(range_reads="download")) for c in plan.chunks)
    # the old switch still works from the environment
    for value, meaning in [("true", "ranges"), ("false", "download"), ("auto", "auto")]:
        monkeypatch.setenv("TRANSCODE_RANGE_READS", value)
        assert Settings().range_reads == meaning
    # an unindexed container's margin counts
    ts = make_plan("vid", "sha", probe_of(video()).model_copy(update={"format_name": "mpegts"}),
                   index(1500, keyframes=range(0, 1500, 50)), None, EncoderSettings(), 4, 8)
    assert ts.chunks[1].lead >= 3.0


def test_chunk_hashes_change_with_the_source():
    a = make_plan("v", "sha-a", probe_of(video()), index(600), None, EncoderSettings(), 4, 8)
    b = make_plan("v", "sha-b", probe_of(video()), index(600), None, EncoderSettings(), 4, 8)
    assert a.chunks[0].sha256 != b.chunks[0].sha256


def test_variable_frame_rate_is_detected_and_keeps_the_nominal_rate():
    pts = [i * 512 for i in range(200) if i % 7 != 3]
    idx = FrameIndex(pts=pts, keyframes={0}, time_base=Fraction(1, 12800))
    assert frame_rate(idx, Fraction(25)) == (Fraction(25), True)
    assert frame_rate(index(200), Fraction(25)) == (Fraction(25), False)
    # 29.97 in a millisecond time base: 33/34 ms steps are still constant
    ms = FrameIndex(pts=[round(i * 1001 / 30) for i in range(300)], keyframes={0}, time_base=Fraction(1, 1000))
    assert frame_rate(ms, Fraction(30000, 1001)) == (Fraction(30000, 1001), False)


def test_profile_hash_depends_on_what_changes_pictures_only():
    base = make_plan("v", "s", probe_of(video()), index(600), None, EncoderSettings(), 4, 8)
    rung = base.rungs[0]
    threads = base.model_copy(update={"encoder": EncoderSettings(threads=8)})
    crf = base.model_copy(update={"encoder": EncoderSettings(crf=20)})
    assert base.profile_hash(rung) == threads.profile_hash(rung)
    assert base.profile_hash(rung) != crf.profile_hash(rung)


def test_chunk_argv_decodes_once_and_writes_every_rung(tmp_path):
    plan = make_plan("v", "s", probe_of(video()), index(600), None, EncoderSettings(), 4, 8)
    chunk = plan.chunks[1]
    outs = [(r, tmp_path / f"{r.name}.ts") for r in plan.rungs]
    argv = encode.chunk_argv(tmp_path / "src.mp4", plan, chunk, outs, max_pixels=8192 * 8192)
    assert argv.count("-i") == 1
    i = argv.index("-i")
    assert argv[i + 1] == f"file:{tmp_path / 'src.mp4'}"
    assert argv[argv.index("-ss") + 1] == f"{chunk.seek:.6f}" and argv.index("-ss") < i
    assert argv[argv.index("-protocol_whitelist") + 1] == "file"
    graph = argv[argv.index("-filter_complex") + 1]
    # 1080p and 720p from the source; 480p (spline) and 360p (bicubic) from the 720p pictures
    assert graph.count("scale=") == 4 and "[src_r1]scale=1280:720:flags=bicubic" in graph
    assert "[r1_r2]scale=854:480:flags=spline" in graph and "[r1_r3]scale=640:360:flags=bicubic" in graph
    assert argv.count("-frames:v") == 4 and argv[argv.index("-frames:v") + 1] == str(chunk.out_frames)
    assert argv.count("-sc_threshold") == 4 and argv[argv.index("-g") + 1] == "100"
    assert [a for a in argv if a.startswith("file:")][1:] == [f"file:{p}" for _, p in outs]
    assert "trim=start=" in graph and "-noaccurate_seek" in argv and "-copyts" in argv


def test_chunk_length_gives_each_encode_slot_about_two_chunks():
    settings = get_settings().model_copy(update={"chunk_seconds": None, "parallel_chunks": None, "max_workers": 2})
    assert chunk_length(None, settings, "local", 60) == 15  # 4 chunks for 2 slots
    assert chunk_length(None, settings, "local", 20) == 8  # never under 8 s: short videos as before
    assert chunk_length(None, settings, "local", 600) == 32  # never over 32 s
    assert chunk_length(None, settings, "deployments", 600) == 600 / 32  # 16 slots unless told
    assert chunk_length(3, settings, "local", 600) == 3  # asked for
    assert chunk_length(None, settings.model_copy(update={"chunk_seconds": 10.0}), "local", 600) == 10
    assert chunk_length(None, settings.model_copy(update={"parallel_chunks": 8}), "deployments", 600) == 32
    plan = make_plan("v", "s", probe_of(video()), index(1500), None, EncoderSettings(), 2, auto_chunk_seconds(60, 2))
    assert [c.out_frames for c in plan.chunks] == [400, 350, 350, 400]  # whole GOPs of 50 frames


def test_rungs_scale_from_larger_rungs_only_in_steps_of_one_and_a_half():
    r = {h: Rung(name=f"{h}p", width=round(h * 16 / 9 / 2) * 2, height=h) for h in (2160, 1080, 720, 540, 480, 360, 240)}
    src = (3840, 2160)
    ladder = [r[1080], r[720], r[480], r[360]]
    assert scaling.steps(ladder, (1920, 1080)) == [
        scaling.Step(-1, "bicubic"), scaling.Step(-1, "bicubic"), scaling.Step(1, "spline"), scaling.Step(1, "bicubic")]
    # a rung as large as the source is not a parent: 720p is scaled from the source
    assert scaling.lineage(ladder, (1920, 1080), 1) == ["1280x720:bicubic"]
    assert scaling.lineage(ladder, src, 1) == ["1920x1080:bicubic", "1280x720:spline"]
    assert scaling.lineage(ladder, (0, 0), 3) == ["640x360:bicubic"]  # size unknown: straight from the source
    # never a step under 1.5: 360p is not scaled from 480p, but from 540p
    assert scaling.steps([r[480], r[360]], src)[1] == scaling.Step(-1, "bicubic")
    assert scaling.steps([r[540], r[360]], src)[1] == scaling.Step(0, "spline")
    # the smallest parent that is far enough: 240p from 540p, which is from the source
    assert scaling.lineage([r[2160], r[720], r[540], r[240]], src, 3) == ["960x540:bicubic", "426x240:bicubic"]
    # a cached parent is still scaled (not encoded) for the rung that needs it
    assert scaling.needed(scaling.steps(ladder, (1920, 1080)), [3]) == [1, 3]


def test_a_rungs_cache_key_follows_where_its_pictures_come_from():
    plan = make_plan("v", "s", probe_of(video()), index(600), None, EncoderSettings(), 4, 8)
    small = plan.rungs[-1]
    alone = plan.model_copy(update={"rungs": (plan.rungs[0], small)})  # no 720p to scale it from
    assert plan.lineage(small) != alone.lineage(small) and plan.profile_hash(small) != alone.profile_hash(small)
    assert plan.profile_hash(plan.rungs[0]) == alone.profile_hash(plan.rungs[0])
    # only 360p encoded: its 720p parent is scaled in the graph, not output
    graph = encode.video_filters(plan, [small])
    assert "scale=1280:720" in graph and "[o0]" in graph and "[o1]" not in graph


def test_chunk_argv_deinterlaces_and_converts_vfr():
    plan = make_plan("v", "s", probe_of(video(interlaced=True)), index(600), None, EncoderSettings(), 4, 8)
    plan = plan.model_copy(update={"vfr": True})
    graph = encode.video_filters(plan, list(plan.rungs))
    assert graph.startswith("[0:v:0]setpts=PTS-STARTPTS,yadif=") and "fps=fps=25/1" in graph


def test_audio_argv_aligns_to_the_first_frame(tmp_path):
    plan = make_plan("v", "s", probe_of(video()), index(600), None, EncoderSettings(), 4, 8)
    plan = plan.model_copy(update={"video_start": 0.5})
    argv = encode.audio_argv(tmp_path / "s.mp4", plan, 6, tmp_path / "a.m4a", format_start=1.4)
    af = argv[argv.index("-af") + 1]
    # the source's own timestamps: the first frame's is the container's start + video_start
    assert "-copyts" in argv[:argv.index("-i")]
    assert "asetpts=PTS-1.900000/TB" in af and "first_pts=0" in af
    assert argv[argv.index("-t") + 1] == f"{plan.duration:.6f}"
    assert argv[argv.index("-ac") + 1] == "2"


def test_storage_keys_follow_the_layout():
    assert keys.source("abc", "mp4") == "abc/source/source.mp4"
    assert keys.encoded("abc", "720p") == "encoded/abc_720p.mp4"
    assert keys.segment("abc", "720p", "p", "ff1", 12, "c" * 64) == \
        f"abc/outputs/720p/segments/p-ff1/seg_00012-{'c' * 16}.ts"
    assert keys.manifest("abc") == "abc/manifests/source.json"


@pytest.mark.parametrize("ip", ["127.0.0.1", "10.0.0.5", "172.16.3.4", "192.168.1.1", "169.254.169.254",
                                "::1", "fe80::1", "fd00::1", "0.0.0.0", "224.0.0.1", "::ffff:127.0.0.1",
                                "100.64.0.1",
                                # 6to4 and Teredo addresses carrying loopback, metadata, private
                                "2002:7f00:1::", "2002:a9fe:a9fe::", "2002:c0a8:101::",
                                "2001:0:4136:e378:8000:63bf:80ff:fffe"])
def test_private_and_metadata_addresses_are_refused(ip):
    assert not address_allowed(ip)


def test_public_addresses_pass_and_loopback_only_when_configured():
    assert address_allowed("93.184.216.34") and address_allowed("2606:2800:220:1::1")
    assert address_allowed("2002:5db8:d822::")  # 6to4 of a public address
    for loopback in ("127.0.0.1", "::1", "2002:7f00:1::"):
        assert address_allowed(loopback, allow_private=True)
    for never in ("169.254.169.254", "2002:a9fe:a9fe::", "fe80::1", "0.0.0.0", "::"):
        assert not address_allowed(never, allow_private=True)


def test_maxrate_scales_with_pixels():
    plan = make_plan("v", "s", probe_of(video()), index(600), None, EncoderSettings(), 4, 8)
    caps = [encode.maxrate_kbps(r, plan) for r in plan.rungs]
    assert caps == sorted(caps, reverse=True) and caps[0] == 6000


def test_source_hash_is_remembered_until_the_file_changes(tmp_path):
    import hashlib

    import os

    from transcoder.ingest import remembered_sha256, restamp, sha256_local
    from transcoder.settings import Settings

    settings = Settings(data_dir=tmp_path / "data")
    f = tmp_path / "v.bin"
    f.write_bytes(b"a" * 1000)
    assert remembered_sha256(f, settings) is None  # `transcode run` hashes it beside importing Prefect
    assert sha256_local(f, settings) == hashlib.sha256(b"a" * 1000).hexdigest() == remembered_sha256(f, settings)
    assert len(list((tmp_path / "data" / "hash-cache").iterdir())) == 1
    os.link(f, tmp_path / "copy.bin")  # the ingest's local copy: the inode's change time moves
    assert remembered_sha256(f, settings) is None
    restamp(f, settings)
    assert remembered_sha256(f, settings) == hashlib.sha256(b"a" * 1000).hexdigest()
    f.write_bytes(b"b" * 1000)  # same size, rewritten in place (a second later: clocks are coarse)
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    restamp(f, settings)  # not taken for a link: the modification time moved too
    assert remembered_sha256(f, settings) is None
    assert sha256_local(f, settings) == hashlib.sha256(b"b" * 1000).hexdigest()


X264_LOG = """[libx264 @ 0x55aa00000001] [info] profile High, level 3.0, 4:2:0, 8-bit
[libx264 @ 0x55aa00000002] [info] profile High, level 2.1, 4:2:0, 8-bit
[libx264 @ 0x55aa00000001] [info] frame I:2     Avg QP:14.86  size: 13430  PSNR Mean Y:46.65 U:46.30 V:46.07 Avg:46.45 Global:46.26
[libx264 @ 0x55aa00000001] [info] SSIM Mean Y:0.8917125 ( 9.654db)
[libx264 @ 0x55aa00000001] [info] PSNR Mean Y:38.730 U:38.145 V:38.013 Avg:38.478 Global:36.555 kb/s:1086.61
[libx264 @ 0x55aa00000002] [info] frame P:43    Avg QP:23.36  size:  1797  PSNR Mean Y:40.41 U:39.09 V:38.80 Avg:39.84 Global:39.40
[libx264 @ 0x55aa00000002] [info] SSIM Mean Y:0.9461478 (12.688db)
[libx264 @ 0x55aa00000002] [info] PSNR Mean Y:39.643 U:38.576 V:38.225 Avg:39.159 Global:38.828 kb/s:211.49
"""


def test_x264_summaries_are_read_in_output_order_and_add_up():
    from transcoder.quality import x264_stats

    first, second = x264_stats(X264_LOG, frames=150)
    assert first.summary() == {"psnr_db": 36.555, "ssim": 0.89171, "frames": 150, "method": "x264"}
    assert second.summary()["psnr_db"] == 38.828 and second.summary()["ssim"] == 0.94615
    both = first + first
    assert both.summary() == {**first.summary(), "frames": 300}


def _box(kind: bytes, body: bytes) -> bytes:
    return (8 + len(body)).to_bytes(4, "big") + kind + body


def _init_segment(entry: bytes, config_kind: bytes, config: bytes) -> bytes:
    sample_entry = _box(entry, bytes(78) + _box(config_kind, config))
    stsd = _box(b"stsd", bytes(4) + (1).to_bytes(4, "big") + sample_entry)
    tree = stsd
    for kind in (b"stbl", b"minf", b"mdia", b"trak", b"moov"):
        tree = _box(kind, tree)
    return _box(b"ftyp", b"iso6") + tree


@pytest.mark.parametrize("entry,kind,config,expected", [
    (b"avc1", b"avcC", bytes([1, 0x64, 0x00, 0x1F, 0xFF]), "avc1.64001f"),
    # ISO/IEC 14496-15 E.3 examples: Main, level 3.1, progressive+frame-only constraint
    (b"hvc1", b"hvcC", bytes([1, 0x01, 0x60, 0, 0, 0, 0xB0, 0, 0, 0, 0, 0, 93]), "hvc1.1.6.L93.B0"),
    # profile space 1 (A), high tier, Main 4:4:4 (4); compatibility bits reversed: 0x82000000 -> 41
    (b"hev1", b"hvcC", bytes([1, 0x64, 0x82, 0, 0, 0, 0xB0, 0x23, 0, 0, 0, 0, 120]), "hev1.A4.41.H120.B0.23"),
    # AV1-ISOBMFF: Main profile, level 5.1 (13), 10-bit; Main level 3.1 (05) 8-bit
    (b"av01", b"av1C", bytes([0x81, 0x0D, 0x40, 0]), "av01.0.13M.10"),
    (b"av01", b"av1C", bytes([0x81, 0x05, 0x00, 0]), "av01.0.05M.08"),
])
def test_codecs_string_from_the_sample_entry(tmp_path, entry, kind, config, expected):
    from transcoder.hls import video_codec

    path = tmp_path / "init.mp4"
    path.write_bytes(_init_segment(entry, kind, config))
    assert video_codec(path) == expected


def _frames(fps=25, seconds=10, cut_at=(3.0, 7.0), black_until=2.0):
    from transcoder.thumbnails import FrameStats

    out = []
    for n in range(int(fps * seconds)):
        t = n / fps
        black = t < black_until
        cut = any(abs(t - c) < 1e-9 for c in cut_at)
        out.append(FrameStats(n=n, time=t, scene=0.9 if cut else 0.01, luma_avg=16 if black else 120,
                              luma_low=16 if black else 30, luma_high=17 if black else 200 + (n % 7),
                              saturation=0 if black else 60 + (30 if t >= 7 else 0)))
    return out


def test_thumbnails_prefer_shot_starts_and_skip_blank_frames():
    from transcoder.thumbnails import pick_poster, pick_thumbnails, vtt

    frames = _frames()
    picks = pick_thumbnails(frames, 25.0, 10.0)
    assert [(lo, hi) for lo, hi, _ in picks] == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10.0)]
    # 2-4 s holds the cut at 3 s: its settled frame (0.4 s in); 6-8 s the cut at 7 s
    assert picks[1][2].time == pytest.approx(3.4) and picks[3][2].time == pytest.approx(7.4)
    assert not any(f.blank for _, _, f in picks[1:])  # the black opening is all the first interval has
    poster = pick_poster(frames, 25.0, 10.0)
    assert not poster.blank and poster.time == pytest.approx(3.4)  # shot starts in the first half only
    text = vtt(picks, (160, 90), lambda i: f"sprite_{i:03d}.jpg")
    assert "00:00:08.000 --> 00:00:10.000\nsprite_000.jpg#xywh=640,0,160,90" in text


def test_each_chunk_keeps_every_frame_a_thumbnail_can_be():
    """The merge picks among the pictures the chunks' scans kept (tasks/thumbnails.py): each
    chunk, knowing only its own frames, keeps every frame the picks over the whole video
    can choose. A shot's settled frame stays in the chunk of its cut."""
    from transcoder.thumbnails import chunk_candidates, pick_poster, pick_thumbnails

    frames = _frames(seconds=30, cut_at=(3.0, 7.0, 9.96, 12.0, 19.92))
    bounds = [0, 50, 100, 250, 300, 500, 740]  # cuts on a joint (12.0 s) and a frame before one (9.96 s)
    kept = set()
    for start, end in zip(bounds, bounds[1:] + [len(frames)]):
        kept |= set(chunk_candidates(frames[start:end], 25.0, 30.0))
    picks = pick_thumbnails(frames, 25.0, 30.0, bounds)
    assert {f.n for _, _, f in picks} <= kept
    chosen = {lo: f.n for lo, _, f in picks}
    assert chosen[8] == 249 and chosen[12] == 310 and chosen[18] == 499  # 249 and 499 end their chunks
    assert pick_poster(frames, 25.0, 30.0, bounds).n in kept
    assert len(kept) < len(frames) / 5


@pytest.mark.parametrize("kind", ["cuts", "one shot", "all black"])
def test_the_merge_picks_from_the_scans_digests_as_from_every_frame(kind):
    """The merge keeps of each chunk's scan only the frames a pick can land on
    (`digest_scan`), so its memory does not grow with the video's length; the picks and the
    poster are the same as from every frame of the video."""
    from transcoder.thumbnails import (SCAN_VERSION, chunk_candidates, digest_scan, pick_poster,
                                       pick_thumbnails)

    frames = _frames(seconds=30, cut_at=(3.0, 7.0, 9.96, 12.0, 19.92) if kind == "cuts" else (),
                     black_until=30.0 if kind == "all black" else 0.5)
    bounds = [0, 50, 100, 250, 300, 500, 740]
    digests = []
    for start, end in zip(bounds, bounds[1:] + [len(frames)]):
        chunk = frames[start:end]
        scan = {"version": SCAN_VERSION, "out_start": start,
                "frames": [[f.scene, f.luma_avg, f.luma_low, f.luma_high, f.saturation] for f in chunk],
                "pictures": {str(n): "" for n in chunk_candidates(chunk, 25.0, 30.0)}}
        digests.append(digest_scan(scan, 25.0, 30.0, len(frames) // 2))
    sparse = [f for d in digests for f in d.frames]
    assert len(sparse) < len(frames) / 5
    args = (25.0, 30.0, bounds)
    assert pick_thumbnails(sparse, *args, len(frames)) == pick_thumbnails(frames, *args)
    assert pick_poster(sparse, *args, len(frames)) == pick_poster(frames, *args)


def test_demo_gets_every_run_option():
    from transcoder.cli import build_parser

    run = vars(build_parser().parse_args(["run", "x.mp4"]))
    demo_like = vars(build_parser().parse_args(["run", "x.mp4", "--output-dir", "out", "--verbose"]))
    assert set(run) == set(demo_like) and {"codec", "renditions", "crf", "preset"} <= set(run)


@pytest.mark.parametrize("url, problem", [("s3://", "not an object address"), ("s3://bucket", "not an object address"),
                                          ("s3://b/in/../x.mp4", "'..' segment"), ("s3://b/./x.mp4", "'..' segment")])
def test_s3_addresses_are_checked(url, problem):
    from transcoder.errors import BadInputError
    from transcoder.ingest import parse_s3_url

    with pytest.raises(BadInputError, match=re.escape(problem)):
        parse_s3_url(url)
    assert parse_s3_url("s3://b/in/a b;$(x).mp4") == ("b", "in/a b;$(x).mp4")


def test_probe_messages_keep_the_error_line_only():
    from transcoder.probe import _first_line

    text = ("[mov,mp4 @ 0x55d] [warning] stream 0: start time not set\n"
            "[IMGUTILS @ 0x7ffd915ca730] [error] Picture size 30000x30000 is invalid\n")
    assert _first_line(text) == "Picture size 30000x30000 is invalid"
    assert _first_line("moov atom not found\n") == "moov atom not found"


def test_status_answers_in_budget_then_from_what_is_known():
    """A slow Prefect answer: the poll gets the quick (storage) view in time, the full answer
    is still fetched and kept, and the next poll gets it (or the last one, marked stale)."""
    import asyncio
    import uuid

    from ingest_api.status import Answers

    async def scenario():
        answers, rid, calls = Answers(budget=0.05), uuid.uuid4(), []

        def full(delay: float, state: str):
            async def fetch():
                calls.append(state)
                await asyncio.sleep(delay)
                return {"state": state}
            return fetch

        async def quick():
            return {"state": "queued", "stale": True}

        assert await answers.get(rid, full(0.0, "Scheduled"), quick) == {"state": "Scheduled"}
        # slow: the last full answer, marked stale; the fetch goes on and is kept
        assert await answers.get(rid, full(0.2, "Running"), quick) == {"state": "Scheduled", "stale": True}
        await asyncio.sleep(0.3)
        assert answers.last[rid] == {"state": "Running"}
        # a poll while a fetch is under way joins it (no second fetch)
        first = asyncio.ensure_future(answers.get(rid, full(0.2, "Completed"), quick))
        await asyncio.sleep(0.01)
        second = await answers.get(rid, full(0.2, "Other"), quick)
        assert second == {"state": "Running", "stale": True} and "Other" not in calls
        await first
        # nothing known yet: the storage view, in time
        other = uuid.uuid4()
        assert await answers.get(other, full(0.2, "Running"), quick) == {"state": "queued", "stale": True}

        # a completed answer (with outputs) is given again without a fetch
        done = uuid.uuid4()
        assert await answers.get(done, full(0.0, "Completed"), quick) == {"state": "Completed"}
        assert calls.count("Completed") == 2  # no outputs: not kept as done

        async def completed():
            calls.append("completed-with-outputs")
            return {"state": "Completed", "outputs": {"renditions": []}}
        assert (await answers.get(done, completed, quick))["outputs"] == {"renditions": []}
        assert (await answers.get(done, completed, quick))["outputs"] == {"renditions": []}
        assert calls.count("completed-with-outputs") == 1

        async def nothing():
            return None
        # nothing anywhere: wait for the full answer
        assert await answers.get(uuid.uuid4(), full(0.1, "Failed"), nothing) == {"state": "Failed"}

    asyncio.run(scenario())


def test_bd_rate_and_the_scaling_model():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_ladder import bd_rate
    from bench_scaling import RANGE_READ_FACTOR, makespan, model, regroup

    ref = [(1000.0, 34.0), (1600.0, 36.5), (2600.0, 39.0)]
    assert abs(bd_rate(ref, ref)) < 1e-9
    assert bd_rate(ref, [(r * 1.1, q) for r, q in ref]) == pytest.approx(10.0, abs=1e-6)  # 10% more bits, same quality
    assert bd_rate(ref, [(r, q + 0.5) for r, q in ref]) < 0  # better pictures at the same rate: fewer bits needed
    assert makespan([4, 3, 3, 2, 2, 2], 2) == 8 and makespan([5, 1], 4) == 5
    # 8 s encodes measured (4 s and 8 s of work, repeated) regrouped into 12 s chunks of a 48 s video
    longer = regroup([4.0, 8.0], 8.0, 48.0, 12.0)
    assert len(longer) == 4 and sum(longer) == pytest.approx(36.0)  # 3 x (4 + 8): the work is kept
    assert longer == pytest.approx([8.0, 8.0, 10.0, 10.0])  # 4 + half of 8, half of 8 + 4, 8 + half of 4, ...
    rows = model(pre=2, post=3, encodes=[10.0] * 8, per_task=0.0, tasks_per_chunk=4, source_mb=100, s3_mb_s=100,
                 counts=(1, 2, 8, 16), fetch="whole")
    assert [r["transcode"] for r in rows] == [80, 40, 10, 10]  # more workers than chunks: no faster
    assert rows[0]["storage"] == 0 and rows[2]["storage"] == 8  # 8 workers fetch the source once each
    assert rows[1]["speedup"] == pytest.approx(85 / 47)  # 2 + 2 (two whole fetches) + 40 + 3
    assert rows[3]["efficiency"] < rows[2]["efficiency"]
    # range reads: the source crosses the server once, during the encodes; only a slow server shows
    ranged = model(pre=2, post=3, encodes=[10.0] * 8, per_task=0.0, tasks_per_chunk=4, source_mb=100, s3_mb_s=100,
                   counts=(8,)) + model(pre=2, post=3, encodes=[10.0] * 8, per_task=0.0, tasks_per_chunk=4,
                                        source_mb=100, s3_mb_s=5, counts=(8,))
    # 20 s to read at 5 MB/s, 1.07x for what the connections buffer, 10 s of it hidden by the encodes
    assert ranged[0]["storage"] == 0 and ranged[1]["storage"] == pytest.approx(20 * RANGE_READ_FACTOR - 10)


def test_the_limited_workers_check_builds_its_model_from_the_one_worker_run():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_limited import in_order, predict

    assert in_order([4, 1, 1, 1, 1], 2) == 4 and in_order([1, 1, 1, 1, 4], 2) == 6  # longest last costs more
    # one worker: batches submitted from 10 s on, run back to back in the order it took them
    base = {"pre": 10.0, "post": 3.0, "batches": [
        {"submitted": 10.1, "ended": 25.0}, {"submitted": 10.0, "ended": 20.0}, {"submitted": 10.2, "ended": 31.0}]}
    rows = predict(base, [1, 2, 4], source_mb=100.0, s3_mb_s=1000.0)
    assert rows[0]["batch_durations"] == pytest.approx([10.0, 5.0, 6.0])  # from the first submission, end to end
    assert rows[0]["model_longest_first"] == pytest.approx(10 + 21 + 3)  # the 1-worker run itself
    assert rows[1]["model_longest_first"] == pytest.approx(10 + 11 + 3)  # 10 | 6 + 5
    assert rows[1]["model_in_order"] == pytest.approx(10 + 11 + 3)  # 10 | 5 + 6
    assert rows[2]["model_in_order"] == pytest.approx(10 + 10 + 3)  # more workers than batches


def test_sprites_of_120_thumbnails(tmp_path, media):
    """A video over ~200 s asks for up to 120 thumbnails: one select expression of 120 terms is
    more than ffmpeg's parser takes (found by the 10-minute memory benchmark)."""
    import functools
    import subprocess
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from transcoder import thumbnails

    # 150 frames, `moov` first like a rendition (this plain server cannot answer range requests)
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(media("standard", seconds=6, width=320, height=180)), "-c", "copy",
                    "-movflags", "+faststart", str(clip)], check=True, timeout=120)
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        argv = thumbnails.sprite_argv(f"http://127.0.0.1:{server.server_port}/{clip.name}", list(range(0, 120)),
                                      (80, 44), tmp_path / "sprite_%03d.jpg")
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert sorted(p.name for p in tmp_path.glob("sprite_*.jpg")) == ["sprite_001.jpg", "sprite_002.jpg"]


def test_cached_results_from_before_a_new_field_unpickle_with_its_default():
    """Segments cached before `etag` existed broke every later rerun (AttributeError)."""
    import pickle

    from transcoder.models import Segment

    seg = Segment(rung="720p", index=3, key="k", frames=25, size=10, sha256="a" * 64, etag='"x"')
    state = seg.__getstate__()
    state = {**state, "__dict__": {k: v for k, v in state["__dict__"].items() if k != "etag"}}  # as pickled before
    old = Segment.__new__(Segment)
    old.__setstate__(state)
    assert old.etag is None and old.sha256 == "a" * 64
    assert pickle.loads(pickle.dumps(seg)).etag == '"x"'


def test_worker_processes_cap_their_malloc_arenas():
    """The CLI and the warm worker cap glibc's arenas before any thread starts (the worker's
    RSS grew with the threads that ever allocated together: transcoder/malloc.py)."""
    import sys

    code = "from transcoder.malloc import limit_arenas; print(limit_arenas())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"


def test_a_full_storage_server_is_named_and_not_retried():
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    from transcoder.errors import RetryableError, StorageFullError, storage_full_code

    minio = ClientError({"Error": {"Code": "XMinioStorageFull", "Message": "Storage backend has reached its minimum "
                                   "free drive threshold."}, "ResponseMetadata": {"HTTPStatusCode": 507}}, "PutObject")
    assert storage_full_code(minio) == "XMinioStorageFull"
    # boto3's managed upload re-raises the server's answer as text
    try:
        try:
            raise minio
        except ClientError as exc:
            raise S3UploadFailedError(f"Failed to upload a to videos/k: {exc}") from None
    except S3UploadFailedError as wrapped:
        assert storage_full_code(wrapped) == "XMinioStorageFull"
    other = ClientError({"Error": {"Code": "InsufficientStorage"}, "ResponseMetadata": {"HTTPStatusCode": 507}}, "PutObject")
    assert storage_full_code(other) == "InsufficientStorage"
    # a server error that says nothing about space stays a retryable hiccup
    assert storage_full_code(ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                                         "PutObject")) is None
    err = StorageFullError("upload of v/outputs/720p.mp4", "XMinioStorageFull")
    assert not isinstance(err, RetryableError)
    assert "out of space" in err.summary and "finished chunks are kept" in err.summary and "720p.mp4" in err.summary


def test_a_storage_block_with_a_folder_is_refused_by_name():
    """A folder on the storage block would put uploads under it while lookups, records,
    locks and links name keys from the bucket's root: refused with a message that says so,
    before anything is written."""
    from prefect_aws import AwsCredentials, S3Bucket

    from transcoder.errors import ConfigurationError, RetryableError
    from transcoder.storage import DirectBucket, Storage

    block = S3Bucket(bucket_name="videos", bucket_folder="team-a", credentials=AwsCredentials())
    with pytest.raises(ConfigurationError) as refused:
        Storage(block)
    assert "bucket_folder 'team-a'" in refused.value.summary and "without a folder" in refused.value.summary
    assert not isinstance(refused.value, RetryableError)  # a retry would fail the same way
    # without a folder (the stack's own block, or a plain boto3 bucket) nothing is refused
    assert Storage(S3Bucket(bucket_name="videos", credentials=AwsCredentials())).name == "videos"
    assert Storage(DirectBucket("http://127.0.0.1:9", "k", "s", "videos", "us-east-1")).name == "videos"
