"""Draw the `engram-ff history --plot` pictures in docs/images/ from a database made of a real run's records.

`engram-ff bench year` ran a simulated year of Engram days through the daemon's own update, gate and probes
and kept one record a night in bench/results/year.json: the update's outcome and new text, the newest day's
held-out bits per byte, month 1's, and each fact's answer bits per byte and rank. This script writes those
records into a fresh engram-ff database with the same state/ functions the daemon records through (a night's
update at 03:00 local time, its probe pass a minute later; month 1's score stands for the older days), then
draws it with the code behind `history --plot`:

- history-first-week.png: nights 1 to 7, and an `engram-ff update` run by hand two minutes after night 1's
  update, on 101 bytes appended meanwhile (its probes score as night 1's did: 101 bytes barely move them);
- history-first-year.png: all 365 nights.

    python docs/history_plots.py            # writes both PNGs into docs/images/
"""

from __future__ import annotations

import json
import sys
import tempfile
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
YEAR = REPO / "bench" / "results" / "year.json"
IMAGES = Path(__file__).resolve().parent / "images"
BY_HAND_BYTES = 101  # the update run by hand on the first day
BY_HAND_AFTER = timedelta(minutes=2)


def nights(count: int | None = None) -> list[dict]:
    records = json.loads(YEAR.read_text())["nights"]
    return records[:count] if count else records


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def at_three(day: str) -> datetime:
    """03:00 local time on that day, where the daemon's schedule puts a night."""
    return datetime.combine(date.fromisoformat(day), time(3, 0)).astimezone()


def record_night(db, night: dict, ended: datetime, new_bytes: int, parent: int | None, first_day: str) -> int | None:
    """One update and, unless it was skipped, its probe pass; returns the checkpoint it made, if any."""
    from engram_ff.state import runs

    update = runs.start_run(db, "update")
    checkpoint = None
    if night["status"] == "skipped":
        runs.finish_run(db, update, "skipped")
    else:
        checkpoint = runs.add_checkpoint(
            db, run_id=update, path=f"n{update}.pt", sha256="-", kind="final", parent_id=parent, steps=night["steps"]
        )
        runs.finish_run(db, update, night["status"], new_bytes=new_bytes, checkpoint_id=checkpoint)
        probe = runs.start_run(db, "probe")
        score = dict(run_id=probe, checkpoint_id=checkpoint, probe="retention", kind="probe", metric="probe_bpb")
        scores = [dict(score, day=night["date"], value=night["newest_bpb"])]
        if night["night"] > 1:
            scores.append(dict(score, day=first_day, value=night["month1_bpb"]))  # a day before the newest
        for fact, values in night["facts"].items():
            for metric, value in values.items():
                scores.append(
                    dict(run_id=probe, checkpoint_id=checkpoint, probe=fact, kind="fact", metric=metric, value=value)
                )
        runs.record_scores(db, scores)
        with db.conn:
            db.execute(
                "UPDATE probe_scores SET recorded_at = ? WHERE run_id = ?", [stamp(ended + timedelta(minutes=1)), probe]
            )
    with db.conn:
        db.execute("UPDATE runs SET ended_at = ? WHERE id = ?", [stamp(ended), update])
    return checkpoint


def build(db, records: list[dict], by_hand: bool = False) -> None:
    parent, first_day = None, records[0]["date"]
    for night in records:
        if night["status"] == "off":  # the machine was off: no update that night
            continue
        ended = at_three(night["date"])
        parent = record_night(db, night, ended, night["new_bytes"], parent, first_day) or parent
        if by_hand and night["night"] == 1:
            parent = record_night(db, night, ended + BY_HAND_AFTER, BY_HAND_BYTES, parent, first_day) or parent


def draw(records: list[dict], path: Path, by_hand: bool = False) -> None:
    from engram_ff.daemon.history import plot_history
    from engram_ff.state.db import open_db

    with tempfile.TemporaryDirectory() as folder:
        db = open_db(Path(folder) / "engram-ff.db")
        build(db, records, by_hand=by_hand)
        plot_history(db, str(path))
        db.close()


def main() -> int:
    IMAGES.mkdir(exist_ok=True)
    draw(nights(7), IMAGES / "history-first-week.png", by_hand=True)
    draw(nights(), IMAGES / "history-first-year.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
