"""What the pipeline must know of a source before it plans: the probe and the packet index.

Both are read from the bytes of the whole file. The worker that ingested the source reads
them from its own copy while the upload runs, and keeps them in a small record beside the
manifest; the metadata and split stages (other containers, other machines in mode
"deployments") read that record instead of each downloading the source again: for a
10-minute 1080p source (4.6 GB) that was two downloads of about 18 s each, one after the
other, before any chunk could start.

The record is keyed on the video id (a content address) and names the input limits it was
checked against: a worker with other limits reads the source itself, so it refuses what
its limits refuse.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from . import keys
from .ingest import ensure_local
from .models import Probe, SourceObject
from .probe import FrameIndex, frame_index, probe
from .settings import INPUT_LIMITS, Settings
from .storage import Storage

FORMAT = 2  # bump when the probe or the index would read a source differently


def _limits(settings: Settings) -> dict:
    return settings.model_dump(include=set(INPUT_LIMITS), mode="json")


@dataclass(frozen=True)
class SourceFacts:
    probe: Probe
    index: FrameIndex


def read_facts(source: SourceObject, storage: Storage, settings: Settings) -> SourceFacts:
    """Probe and index the source (from this machine's copy, downloaded if it has none)."""
    return facts_of(ensure_local(source, storage, settings), settings)


def facts_of(path: Path, settings: Settings) -> SourceFacts:
    """Probe and index a file (a `BadInputError` if it is not a usable video)."""
    return SourceFacts(probe=probe(path, settings), index=frame_index(path, settings))


def keep_facts(source: SourceObject, facts: SourceFacts, storage: Storage, settings: Settings) -> None:
    storage.put_json(keys.facts(source.video_id), {
        "format": FORMAT,
        "sha256": source.sha256,
        "limits": _limits(settings),
        "probe": facts.probe.model_dump(mode="json"),
        "index": {"time_base": str(facts.index.time_base), "pts": list(facts.index.pts),
                  "keyframes": sorted(facts.index.keyframes),
                  "sizes": None if facts.index.sizes is None else list(facts.index.sizes)},
    })


def source_facts(source: SourceObject, storage: Storage, settings: Settings) -> SourceFacts:
    """The kept record when it is this source's and was checked against these limits; else
    read from the source, and kept for the stages after this one."""
    record = storage.get_json(keys.facts(source.video_id))
    if (record and record.get("format") == FORMAT and record.get("sha256") == source.sha256
            and record.get("limits") == _limits(settings)):
        index = record["index"]  # its lists held as flat arrays, 8 bytes a frame (FrameIndex)
        return SourceFacts(probe=Probe.model_validate(record["probe"]),
                           index=FrameIndex(pts=array("q", index["pts"]), keyframes=set(index["keyframes"]),
                                            time_base=Fraction(index["time_base"]),
                                            sizes=None if index["sizes"] is None else array("q", index["sizes"])))
    facts = read_facts(source, storage, settings)
    keep_facts(source, facts, storage, settings)
    return facts
