"""The stages hand each other small records, not the source: in mode "deployments" the
metadata and split stages run in containers that do not have the ingest's copy."""

from __future__ import annotations

import pytest

from transcoder.errors import BadInputError
from transcoder.models import EncoderSettings

CHUNKING = {"gop_seconds": 1.0, "chunk_seconds": 2.0}


def test_later_stages_read_the_kept_facts_not_the_source(engine, media):
    from flows.stages import download_source, probe_video, split_video
    from transcoder import keys
    from transcoder.ingest import local_source_path
    from transcoder.plan import make_plan
    from transcoder.probe import frame_index, probe

    path = media("standard", seconds=6)
    src = download_source(str(path))  # a flow run of its own, as on the download queue
    assert keys.facts(src.video_id) in engine.keys(src.video_id)
    local = local_source_path(engine.settings, src.video_id, src.ext)
    local.unlink()  # the next stages run where there is no copy of the source

    found = probe_video(src)
    plan = split_video(src, found, None, EncoderSettings(), **CHUNKING)
    assert not local.exists(), "a later stage downloaded the source"
    # what they were handed is what reading the file gives
    assert found == probe(path, engine.settings)
    assert plan == make_plan(src.video_id, src.sha256, found, frame_index(path, engine.settings), None,
                             EncoderSettings(), **CHUNKING)
    assert sum(c.out_frames for c in plan.chunks) == plan.total_frames == 150


def test_facts_kept_under_other_limits_are_not_trusted(engine, media, monkeypatch):
    """A worker whose limits are stricter reads the source itself, and refuses it."""
    from flows.stages import download_source, probe_video
    from transcoder.ingest import local_source_path
    from transcoder.settings import reload_settings

    src = download_source(str(media("standard", seconds=6)))
    local = local_source_path(engine.settings, src.video_id, src.ext)
    local.unlink()
    monkeypatch.setenv("TRANSCODE_MAX_DURATION_SECONDS", "3")
    reload_settings()
    with pytest.raises(BadInputError, match="over the limit of 3 s"):
        probe_video(src)
    assert local.exists()  # read from the stored original, downloaded once
