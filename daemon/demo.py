"""`engram-ff run --demo`: a few bundled days of Engram logs, among them facts about Victor, in a data
directory of the demo's own.

Its own, because the daemon trains on everything it has ever stored: demo days written into the real
watch folder and database would be replayed into the real model every night after the user points it
at real logs, their made-up wifi password with them.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
import shutil
import sys
from pathlib import Path

from engram_ff.daemon.config import Config, user_data_dir
from engram_ff.daemon.facts import BUNDLED_FACTS

log = logging.getLogger(__name__)

DEMO_LOGS = Path(__file__).with_name("demo_logs")
BUDGET_MINUTES = 2.0  # a newcomer waits for the first update: keep it short


def demo_data_dir() -> Path:
    """~/.local/share/engram-ff-demo, beside the real data directory and never inside it."""
    return user_data_dir().with_name("engram-ff-demo")


def demo_config(config: Config, *, data_given: bool) -> Config:
    """The demo's data directory (an explicit --data wins), its own watch folder inside it, a short update,
    and the bundled facts, which are about its made-up days (unless a facts_file is configured)."""
    return dataclasses.replace(
        config,
        data_dir=config.data_dir if data_given else demo_data_dir(),
        watch_dir=None,
        update_budget_minutes=min(config.update_budget_minutes, BUDGET_MINUTES),
        facts_file=config.facts_file or BUNDLED_FACTS,
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


def program() -> str:
    """engram-ff as the user can type it: its name where the shell finds this one, else its full path (a
    venv that was not activated: `.venv/bin/engram-ff`)."""
    me = Path(sys.argv[0])
    if me.name != "engram-ff":
        return "engram-ff"
    found = shutil.which("engram-ff")
    if found and Path(found).resolve() == me.resolve():
        return "engram-ff"
    return shlex.quote(str(me.absolute()))


def closing_lines(config: Config) -> str:
    """What the demo prints under its probe table: what the table means, that it goes on, how to stop it,
    and the exact next command, with the demo's --data (the default data directory is not the demo's)."""
    return (
        "\nbpb: bits per byte the model needs for a text, lower is better (probe_bpb: a day's held-out "
        "messages, kept out of\nthe night that first saw them and trained the next; trained_bpb: its trained ones);\n"
        "canary: the oldest held-out text, the same every night, to catch forgetting;\n"
        "answer_rank: where a fact's true answer ranks among its wrong ones (1: the model prefers the truth).\n\n"
        f"The demo keeps watching {config.watch} (a line appended there is read at once)\nand updates nightly at "
        f"{config.schedule}. Ctrl-C stops it.\nTry next, in another terminal:\n"
        f'  {program()} ask --data {shlex.quote(str(config.data_dir))} "Who is Victor?"'
    )
