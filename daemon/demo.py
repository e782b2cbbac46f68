"""`engram-ff run --demo`: a few bundled days of Engram logs, among them facts about Victor, in a data
directory of the demo's own.

Its own, because the daemon trains on everything it has ever stored: demo days written into the real
watch folder and database would be replayed into the real model every night after the user points it
at real logs, their made-up wifi password with them.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

from engram_ff.daemon.config import Config, user_data_dir

log = logging.getLogger(__name__)

DEMO_LOGS = Path(__file__).with_name("demo_logs")
BUDGET_MINUTES = 2.0  # a newcomer waits for the first update: keep it short


def demo_data_dir() -> Path:
    """~/.local/share/engram-ff-demo, beside the real data directory and never inside it."""
    return user_data_dir().with_name("engram-ff-demo")


def demo_config(config: Config, *, data_given: bool) -> Config:
    """The demo's data directory (an explicit --data wins), its own watch folder inside it, a short update."""
    return dataclasses.replace(
        config,
        data_dir=config.data_dir if data_given else demo_data_dir(),
        watch_dir=None,
        update_budget_minutes=min(config.update_budget_minutes, BUDGET_MINUTES),
    )


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
