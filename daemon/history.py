"""`engram-ff history`: the probe history, one row per probe pass, and a plot of it over dates.

What a person should see at a glance, with 1 night as with 365: how well the model predicts the newest day's
held-out text, did the older days stay learned (both in bits per byte, lower is better; an older day's probe
split was trained the night after it arrived: daemon/probes.py), how well the model of the night before
predicted the night's new text before training on it (prequential), are the facts still known, and what each
night's update did (how much new text; kept, rejected by a promotion gate, failed).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlite_utils

from engram_ff.state import runs

SUMMARY_COLUMNS = {
    "avg_probe_bpb": "held_out_bpb",
    "avg_forgetting_probe_bpb": "forgetting",
    "bwt_probe_bpb": "bwt",
}
MARKERS_UP_TO = 60  # points; beyond that markers only clutter a line
SHORTEST_SPAN = timedelta(days=4)  # one night alone is drawn in a window of days, not as a lone dot
UPDATE_COLOURS = {  # status -> (colour, legend)
    "ok": ("tab:green", "kept"),
    "rejected": ("tab:red", "rejected by the gate"),
    "failed": ("tab:gray", "failed"),
    "interrupted": ("tab:orange", "interrupted (resumes)"),
    "skipped": ("lightgray", "skipped: nothing new"),
}


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
            "run": p["run_id"],
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


def plot_history(db: sqlite_utils.Database, path: str) -> None:
    import matplotlib.pyplot as plt

    fig = history_figure(db)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def history_figure(db: sqlite_utils.Database):
    """Three panels over dates: held-out text, facts, and the nightly updates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    passes = runs.held_out_by_pass(db)
    facts = runs.fact_scores(db)
    updates = runs.finished_updates(db)
    fig, (text_ax, facts_ax, nights_ax) = plt.subplots(
        3, 1, figsize=(11, 8.5), sharex=True, gridspec_kw={"height_ratios": [3, 2, 1.3]}
    )
    marker = "o" if len(passes) <= MARKERS_UP_TO else None

    dates = [_when(p["recorded_at"]) for p in passes]
    text_ax.plot(dates, [p["new_day_bpb"] for p in passes], marker=marker, ms=4, label="newest day (just learned)")
    old = [(d, p["old_days_bpb"]) for d, p in zip(dates, passes) if p["old_days_bpb"] is not None]
    text_ax.plot([d for d, _ in old], [v for _, v in old], marker=marker, ms=4, label="older days, mean (kept?)")
    text_ax.set_title(
        "probe-split text: the newest day's held out, older days' trained the night after", fontsize=10, loc="left"
    )
    text_ax.set_ylabel("bits per byte\n(lower is better)")
    text_ax.legend(fontsize=8, loc="upper right")

    by_fact: dict[str, dict[int, dict]] = {}
    for r in facts:
        by_fact.setdefault(r["fact"], {}).setdefault(r["run_id"], {"at": _when(r["recorded_at"])})[r["metric"]] = r[
            "value"
        ]
    for name, series in sorted(by_fact.items()):
        points = [s for _, s in sorted(series.items()) if "answer_bpb" in s]
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

    for status, (colour, label) in UPDATE_COLOURS.items():
        night = [u for u in updates if u["status"] == status]
        if night:
            nights_ax.bar(
                [_when(u["ended_at"]) for u in night],
                [(u["new_bytes"] or 0) / 1000 for u in night],
                width=0.6,
                color=colour,
                label=f"{label} ({len(night)})",
            )
    nights_ax.set_title("nightly updates", fontsize=10, loc="left")
    nights_ax.set_ylabel("new text\n(kB)")
    if updates:
        nights_ax.legend(fontsize=7, loc="upper left", ncol=len(UPDATE_COLOURS))

    every = dates + [_when(u["ended_at"]) for u in updates]
    if every and max(every) - min(every) < SHORTEST_SPAN:
        middle = min(every) + (max(every) - min(every)) / 2
        nights_ax.set_xlim(middle - SHORTEST_SPAN / 2, middle + SHORTEST_SPAN / 2)
    locator = mdates.AutoDateLocator()
    nights_ax.xaxis.set_major_locator(locator)
    nights_ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    nights_ax.set_xlabel("date (local time)")
    fig.tight_layout()
    return fig
