"""`engram-ff history`: the probe history, one row per probe pass, and a plot of it over dates.

What a person should see at a glance, with 1 night as with 365: how well the model predicts the newest day's
held-out text, did the older days stay learned (both in bits per byte, lower is better; an older day's probe
split was trained the night after it arrived: daemon/probes.py), how well the model of the night before
predicted the night's new text before training on it (prequential), are the facts still known, and what each
night's update did (how much new text; kept, rejected by a promotion gate, failed).
"""

from __future__ import annotations

import errno
from datetime import datetime, timedelta
from pathlib import Path

import sqlite_utils

from engram_ff.state import runs

SUMMARY_COLUMNS = {
    "avg_probe_bpb": "held_out_bpb",
    "avg_forgetting_probe_bpb": "forgetting",
    "bwt_probe_bpb": "bwt",
}
MARKERS_UP_TO = 60  # points; beyond that markers only clutter a line
HOURS_UP_TO = timedelta(days=2)  # a shorter history is drawn over hours of the day, a longer one over dates
SHORTEST_WINDOW = timedelta(hours=4)  # a first night's few minutes sit in the middle of a few hours
NEWEST = "newest day: learned that night"
OLDER = "older days, mean: still known"
UPDATE_COLOURS = {  # status -> (colour, legend)
    "ok": ("tab:green", "promoted"),
    "rejected": ("tab:red", "rejected by the gate"),
    "failed": ("black", "failed"),
    "interrupted": ("tab:orange", "interrupted (resumes)"),
    "skipped": ("tab:gray", "skipped: nothing new"),
}
STEM_SPACING = 1 / 150  # of the window: stems closer than this are drawn side by side
NO_TEXT_KB = 0.01  # where a night with no new text is marked on the log scale of new text (10 bytes)


GATE = {"ok": "promoted", "rejected": "rejected"}  # the status of the update that wrote the probed checkpoint


def recent_history(db: sqlite_utils.Database, limit: int = 20) -> list[dict]:
    """Newest last: per probe pass, the held-out bits per byte of the newest day, of the older days and of all,
    forgetting and backward transfer (probes.py defines them), how many facts rank first, and whether the
    gate promoted the checkpoint probed."""
    passes = runs.probe_passes(db, limit)
    held_out = {r["run_id"]: r for r in runs.held_out_by_pass(db)}
    rows = []
    for p in reversed(passes):
        split = held_out.get(p["run_id"], {})
        row = {
            "update": p["update_number"],  # the update whose model was probed, as `status` and `learned` name it
            "run": p["run_id"],  # the probe pass's own run
            "checkpoint": p["checkpoint_id"],
            "recorded_at": p["recorded_at"],
            "new_day_bpb": split.get("new_day_bpb"),
            "old_days_bpb": split.get("old_days_bpb"),
            "prequential_bpb": p["prequential_bpb"],
        }
        scores = {r["metric"]: r["value"] for r in runs.pass_scores(db, p["run_id"], kind="summary")}
        for metric, column in SUMMARY_COLUMNS.items():
            row[column] = scores.get(metric)
        ranks = [r["value"] for r in runs.pass_scores(db, p["run_id"], metric="answer_rank")]
        row["facts_first"] = f"{sum(r == 1 for r in ranks)}/{len(ranks)}" if ranks else None
        row["gate"] = GATE.get(p["update_status"])
        rows.append(row)
    return rows


def _when(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp).astimezone()


def plot_format(path: str) -> str:
    """The picture format of `path` by its extension, PNG without one (the file is then exactly `path`:
    matplotlib would add `.png` and write beside what was said, even `/dev/full.png`, issue #20.7);
    ValueError naming the formats for an extension matplotlib does not write (issue #20.6)."""
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lower().lstrip(".")
    if not suffix:
        return "png"
    formats = FigureCanvasBase.get_supported_filetypes()
    if suffix not in formats:
        raise ValueError(f".{suffix} is not a picture format the plot can be written in ({', '.join(sorted(formats))})")
    return suffix


def plot_history(db: sqlite_utils.Database, path: str) -> None:
    """Write the plot to exactly `path`, in its format; a path that is there and is not a regular file (a
    device, a FIFO) is refused, not written into."""
    import matplotlib.pyplot as plt

    target = Path(path)
    if target.exists() and not target.is_file():
        raise OSError(errno.EINVAL, "not a regular file", path)
    fig = history_figure(db)
    try:
        fig.savefig(path, dpi=110, format=plot_format(path))
    finally:
        plt.close(fig)


def history_figure(db: sqlite_utils.Database):
    """Three panels over time: held-out text, facts, and the nightly updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    passes = runs.held_out_by_pass(db)
    facts = runs.fact_scores(db)
    updates = runs.finished_updates(db)
    fig, (text_ax, facts_ax, nights_ax) = plt.subplots(
        3, 1, figsize=(11, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.5]}
    )
    marker = "o" if len(passes) <= MARKERS_UP_TO else None

    dates = [_when(p["recorded_at"]) for p in passes]
    newest = [(d, p["new_day_bpb"]) for d, p in zip(dates, passes) if p["new_day_bpb"] is not None]
    old = [(d, p["old_days_bpb"]) for d, p in zip(dates, passes) if p["old_days_bpb"] is not None]
    for series, label, colour in ((newest, NEWEST, "tab:blue"), (old, OLDER, "tab:orange")):
        if series:  # none on a first night that brought a single day
            days, values = zip(*series)
            (line,) = text_ax.plot(days, values, marker=marker, ms=4, label=label, color=colour)
            # the latest value, in figures: what a person looks for first
            text_ax.annotate(
                f"{series[-1][1]:.3f}",
                series[-1],
                xytext=(6, 0),
                textcoords="offset points",
                va="center",
                fontsize=8,
                color=line.get_color(),
            )
    text_ax.set_title(
        "probe-split text: the newest day's held out, older days' trained the night after", fontsize=10, loc="left"
    )
    text_ax.set_ylabel("bits per byte\n(lower is better)")
    if text_ax.get_lines():
        text_ax.legend(fontsize=8, loc="upper right")

    by_fact: dict[str, dict[int, dict]] = {}
    for r in facts:
        by_fact.setdefault(r["fact"], {}).setdefault(r["run_id"], {"at": _when(r["recorded_at"])})[r["metric"]] = r[
            "value"
        ]
    for name, by_run in sorted(by_fact.items()):
        points = [s for _, s in sorted(by_run.items()) if "answer_bpb" in s]
        rank = points[-1].get("answer_rank") if points else None
        label = name if rank is None else f"{name} ({'ranked first' if rank == 1 else f'rank {rank:.0f}'} now)"
        (line,) = facts_ax.plot([p["at"] for p in points], [p["answer_bpb"] for p in points], label=label)
        if len(points) <= MARKERS_UP_TO:  # filled: the true answer ranked first among its distractors
            first = [p for p in points if p.get("answer_rank") == 1]
            other = [p for p in points if p.get("answer_rank") != 1]
            facts_ax.scatter([p["at"] for p in first], [p["answer_bpb"] for p in first], color=line.get_color(), s=18)
            facts_ax.scatter(
                [p["at"] for p in other],
                [p["answer_bpb"] for p in other],
                s=18,
                facecolors="none",
                edgecolors=line.get_color(),
            )
    dots = " (filled dot: ranked first among its distractors)" if marker else ""
    facts_ax.set_title(f"facts: the true answer after its question{dots}", fontsize=10, loc="left")
    facts_ax.set_ylabel("bits per byte\n(lower is better)")
    if by_fact and len(by_fact) <= 10:
        facts_ax.legend(fontsize=7, loc="upper right")
    elif not by_fact:
        facts_ax.text(0.5, 0.5, "no fact probes", transform=facts_ax.transAxes, ha="center", color="gray")

    every = dates + [_when(u["ended_at"]) for u in updates]
    window = _time_axis(nights_ax, min(every), max(every)) if every else timedelta(days=1)
    _draw_updates(nights_ax, updates, window)
    nights_ax.set_title("nightly updates: new text each one trained on", fontsize=10, loc="left")
    nights_ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    nights_ax.set_ylabel("new text\n(kB, log scale)")
    fig.tight_layout()
    return fig


def _draw_updates(ax, updates: list[dict], window: timedelta) -> None:
    """Each update a stem up to its new text on a log scale, so a 101-byte night shows beside a 1 MB one.
    Updates closer than a stem's width (two minutes apart, in a week) are drawn side by side, each a stem's
    width after the one before, and never more than half the usual gap between updates apart."""
    from matplotlib.lines import Line2D

    width = 3.0 if len(updates) <= MARKERS_UP_TO else 1.0  # points
    ends = [_when(u["ended_at"]) for u in updates]
    gaps = sorted(b - a for a, b in zip(ends, ends[1:]) if b > a)
    apart = window * STEM_SPACING
    if gaps:
        apart = min(apart, gaps[len(gaps) // 2] / 2)
    ax.set_yscale("log")
    drawn: list[datetime] = []
    for when in ends:
        drawn.append(max(when, drawn[-1] + apart) if drawn else when)
    most = max([(u["new_bytes"] or 0) / 1000 for u in updates] + [NO_TEXT_KB])
    for when, u in zip(drawn, updates):
        colour = UPDATE_COLOURS.get(u["status"], ("black", u["status"]))[0]
        kb = (u["new_bytes"] or 0) / 1000
        if kb > 0:
            ax.vlines(when, NO_TEXT_KB / 2, kb, colors=colour, lw=width)
        if len(updates) <= MARKERS_UP_TO or kb <= 0:  # a night with no new text: a cross on the floor
            ax.plot([when], [max(kb, NO_TEXT_KB)], marker="o" if kb > 0 else "x", ms=5, color=colour)
    ax.set_ylim(NO_TEXT_KB / 2, most * 5)
    handles = [
        Line2D(
            [], [], color=colour, lw=width, marker="x" if status == "skipped" else "o", ms=5, label=f"{label} ({count})"
        )
        for status, (colour, label) in UPDATE_COLOURS.items()
        if (count := sum(u["status"] == status for u in updates))
    ]
    if handles:  # above the panel, right of its title: no stem is hidden behind it
        ax.legend(
            handles=handles, fontsize=7, loc="lower right", bbox_to_anchor=(1, 1), ncol=len(handles), frameon=False
        )


def _time_axis(ax, first: datetime, last: datetime) -> timedelta:
    """Hours of the day for a history of a day or two, dates beyond, in local time, with the dates it covers
    written out in the axis label (no corner label to mistake for a data point's date)."""
    import matplotlib.dates as mdates

    zone = first.tzinfo
    span = last - first
    if span < HOURS_UP_TO:
        pad = max(span * 0.1, (SHORTEST_WINDOW - span) / 2)
        locator = mdates.AutoDateLocator(tz=zone, minticks=4, maxticks=10)
        formatter: mdates.DateFormatter | mdates.ConciseDateFormatter = mdates.DateFormatter("%H:%M", tz=zone)
        days = f"{first:%a %d %b %Y}" if first.date() == last.date() else f"{first:%a %d %b} to {last:%a %d %b %Y}"
        ax.set_xlabel(f"local time on {days}")
    else:
        pad = max(span * 0.03, timedelta(hours=12))
        locator = mdates.AutoDateLocator(tz=zone, minticks=4, maxticks=12)
        formatter = mdates.ConciseDateFormatter(
            locator,
            tz=zone,
            formats=["%Y", "%b", "%a %d", "%H:%M", "%H:%M", "%S"],
            zero_formats=["", "%b\n%Y", "%a %d\n%b", "%a %d", "%H:%M", "%H:%M"],
            show_offset=False,
        )
        ax.set_xlabel(f"local date, {first:%d %b %Y} to {last:%d %b %Y}")
    ax.set_xlim(first - pad, last + pad)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(formatter)
    return last - first + 2 * pad
