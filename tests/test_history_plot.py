"""`history --plot` reads well with one night and with a year of them: dates on the x axis, units and
"lower is better" on the y axes, old and new days, a facts panel and each night's outcome.

The history is written with the same state/ functions the daemon records through, one row set per
night, then dated a night apart (the functions stamp `now`)."""

from __future__ import annotations

import importlib.util
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import matplotlib.dates as mdates
import pytest

from engram_ff.daemon.cli import main
from engram_ff.daemon.history import history_figure, recent_history
from engram_ff.state import runs
from engram_ff.state.db import open_db

FACTS = ("who-is-victor", "victor-boat", "wifi-password")
START = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[1]


def stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def history_of(db, nights: int, failed: set[int] = frozenset()) -> None:
    parent = None
    for night in range(nights):
        when = START + timedelta(days=night)
        update = runs.start_run(db, "update")
        if night in failed:
            runs.finish_run(db, update, "failed", error="MemoryError: simulated")
        else:
            checkpoint = runs.add_checkpoint(
                db, run_id=update, path=f"c{night}.pt", sha256="x", kind="final", parent_id=parent, steps=300
            )
            runs.finish_run(db, update, "ok", new_bytes=2000 + 10 * night, checkpoint_id=checkpoint)
            parent = checkpoint
            probe = runs.start_run(db, "probe")
            scores = [
                dict(
                    run_id=probe,
                    checkpoint_id=checkpoint,
                    probe="retention",
                    kind="probe",
                    day=f"d{d:04d}",
                    metric="probe_bpb",
                    value=3.0 - 0.001 * night + (0.5 if d == night else 0.0),
                )
                for d in range(night + 1)
            ]
            for i, fact in enumerate(FACTS):
                scores.append(
                    dict(
                        run_id=probe,
                        checkpoint_id=checkpoint,
                        probe=fact,
                        kind="fact",
                        metric="answer_bpb",
                        value=2.0 / (1 + night + i),
                    )
                )
                scores.append(
                    dict(
                        run_id=probe,
                        checkpoint_id=checkpoint,
                        probe=fact,
                        kind="fact",
                        metric="answer_rank",
                        value=1.0 if night > i else 2.0,
                    )
                )
            runs.record_scores(db, scores)
            with db.conn:
                db.execute(
                    "UPDATE probe_scores SET recorded_at = ? WHERE run_id = ?",
                    [stamp(when + timedelta(minutes=9)), probe],
                )
        with db.conn:
            db.execute("UPDATE runs SET ended_at = ? WHERE id = ?", [stamp(when + timedelta(minutes=8)), update])


def stems(ax) -> list[tuple[float, float, float]]:
    """Each update's stem in the nights panel: its x and top in display pixels, and its top in kB."""
    out = []
    for collection in ax.collections:
        for (x, _), (_, top) in collection.get_segments():
            px, py = ax.transData.transform((x, top))
            out.append((px, py, top))
    return sorted(out)


@pytest.mark.parametrize("nights", [1, 7, 365])
def test_the_plot_reads_well_on_day_one_in_the_first_week_and_after_a_year(tmp_path, nights):
    db = open_db(tmp_path / "engram-ff.db")
    history_of(db, nights, failed={nights // 2} if nights > 1 else set())
    fig = history_figure(db)
    fig.canvas.draw()
    text_ax, facts_ax, nights_ax = fig.axes
    for ax in (text_ax, facts_ax):
        assert ax.get_ylabel() == "bits per byte\n(lower is better)"
    assert nights_ax.get_ylabel() == "new text\n(kB, log scale)" and nights_ax.get_yscale() == "log"
    left, right = (mdates.num2date(x) for x in nights_ax.get_xlim())
    first, last = START.astimezone(), (START + timedelta(days=nights - 1, minutes=9)).astimezone()
    assert left < first and last < right  # every point inside, none on the edge
    ticks = [t.get_text() for t in nights_ax.get_xticklabels() if t.get_text()]
    assert len(ticks) >= 3
    formatter = nights_ax.xaxis.get_major_formatter()
    if nights == 1:  # a few minutes: hours of the day, the date written out once, in the axis label
        assert right - left <= timedelta(hours=6)
        assert all(re.fullmatch(r"\d\d:\d\d", t) for t in ticks), ticks
        assert nights_ax.get_xlabel() == f"local time on {first:%a %d %b %Y}"
    else:  # dates, with the span in the axis label and no corner label to mistake for a date
        assert nights_ax.get_xlabel() == f"local date, {first:%d %b %Y} to {last:%d %b %Y}"
        assert formatter.get_offset() == ""
        if nights == 7:
            assert all(re.match(r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun) \d\d", t) for t in ticks), ticks
        else:
            assert {"Mar", "May", "Jul", "Sep", "Nov"} <= set(ticks), ticks
    labels = [line.get_label() for line in text_ax.get_lines()]
    assert labels == ["newest day: learned that night", "older days, mean: still known"][: 1 if nights == 1 else 2]
    assert len(text_ax.get_lines()[0].get_xdata()) == nights - (1 if nights > 1 else 0)
    assert sorted(line.get_label().split()[0] for line in facts_ax.get_lines()) == sorted(FACTS)
    outcomes = [t.get_text() for t in nights_ax.get_legend().get_texts()]
    assert outcomes == ([f"promoted ({nights - 1})", "failed (1)"] if nights > 1 else ["promoted (1)"])
    assert len(stems(nights_ax)) == nights - (1 if nights > 1 else 0)  # a failed night read no new text
    fig.clf()


def updates_minutes_apart(db, sizes: list[int], minutes: int = 2) -> None:
    for i, size in enumerate(sizes):
        update = runs.start_run(db, "update")
        runs.finish_run(db, update, "ok", new_bytes=size)
        with db.conn:
            db.execute(
                "UPDATE runs SET ended_at = ? WHERE id = ?", [stamp(START + timedelta(minutes=minutes * i)), update]
            )


@pytest.mark.parametrize("nights_before", [0, 6])
def test_two_updates_two_minutes_apart_both_show(tmp_path, nights_before):
    """The 101-byte update two minutes after a 60 kB one is its own stem beside it, on day one and in a week."""
    db = open_db(tmp_path / "engram-ff.db")
    for night in range(nights_before):
        updates_minutes_apart(db, [30_000])
        with db.conn:
            db.execute(
                "UPDATE runs SET ended_at = ? WHERE id = ?", [stamp(START - timedelta(days=night + 1)), night + 1]
            )
    updates_minutes_apart(db, [60_000, 101])
    fig = history_figure(db)
    fig.canvas.draw()
    drawn = stems(fig.axes[2])
    (big_x, big_y, big), (small_x, small_y, small) = drawn[-2:]
    assert (big, small) == (60.0, 0.101)
    bottom, top = fig.axes[2].get_ylim()
    assert bottom < small < big < top
    assert small_x - big_x >= 5  # pixels: wider than a stem, so neither hides the other
    assert big_y - small_y > 50  # the log scale: 101 bytes is not a sliver at the foot of 60 kB
    fig.clf()


def test_the_docs_pictures_come_from_the_year_benchmarks_records(tmp_path):
    """docs/history_plots.py builds its database from bench/results/year.json, as the docs say."""
    spec = importlib.util.spec_from_file_location("history_plots", ROOT / "docs" / "history_plots.py")
    history_plots = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(history_plots)
    db = open_db(tmp_path / "engram-ff.db")
    week = history_plots.nights(7)
    history_plots.build(db, week, by_hand=True)
    updates = runs.finished_updates(db)
    assert [u["new_bytes"] for u in updates] == [week[0]["new_bytes"], 101] + [n["new_bytes"] for n in week[1:]]
    held_out = runs.held_out_by_pass(db)
    assert held_out[-1]["new_day_bpb"] == pytest.approx(week[-1]["newest_bpb"])
    fig = history_figure(db)
    assert len(stems(fig.axes[2])) == 8
    fig.clf()
    for name in ("history-first-week.png", "history-first-year.png"):
        assert (ROOT / "docs" / "images" / name).stat().st_size > 50_000


def test_the_table_has_the_newest_and_older_days(tmp_path, capsys):
    db = open_db(tmp_path / "engram-ff.db")
    history_of(db, 3)
    rows = recent_history(db, 2)
    assert [r["run"] for r in rows] == [4, 6]  # the newest two passes, oldest first
    assert rows[-1]["new_day_bpb"] == pytest.approx(3.498) and rows[-1]["old_days_bpb"] == pytest.approx(2.998)
    assert rows[-1]["facts_first"] == "2/3"
    assert main(["history", "--data", str(tmp_path), "--plot", str(tmp_path / "h.png")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bits per byte, lower is better") and "2026-01-0" in out  # local time
    assert (tmp_path / "h.png").stat().st_size > 10_000
