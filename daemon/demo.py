"""`engram-ff run --demo`: a few bundled days of Engram logs, among them facts about Victor."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

DEMO_LOGS = Path(__file__).with_name("demo_logs")


def seed(watch_dir: Path) -> list[Path]:
    """Copy the sample days into `watch_dir/raw/`, never over a file that is already there."""
    raw = Path(watch_dir) / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sorted(DEMO_LOGS.glob("*.jsonl")):
        target = raw / source.name
        if not target.exists():
            shutil.copyfile(source, target)
            written.append(target)
    log.info("demo: %d sample days written to %s", len(written), raw)
    return written
