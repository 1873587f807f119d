"""This machine's scratch space: one fresh folder per task attempt.

Two runs of the same video (or a retry beside a straggler) never write the same file.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .settings import Settings


def scratch_dir(settings: Settings, video_id: str, name: str) -> Path:
    root = settings.work_dir / video_id / "scratch"
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=root))


def remove_scratch(settings: Settings, video_id: str) -> None:
    shutil.rmtree(settings.work_dir / video_id, ignore_errors=True)
