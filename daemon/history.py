"""`engram-ff history`: the probe history, one row per probe pass, and a plot of it."""

from __future__ import annotations

import sqlite_utils

from engram_ff.state import runs

SUMMARY_COLUMNS = {
    "avg_probe_bpb": "held_out_bpb",
    "avg_trained_bpb": "trained_bpb",
    "avg_forgetting_probe_bpb": "forgetting",
    "bwt_probe_bpb": "bwt",
}


GATE = {"ok": "promoted", "rejected": "rejected"}  # the status of the update that wrote the probed checkpoint


def recent_history(db: sqlite_utils.Database, limit: int = 20) -> list[dict]:
    """Newest last: per probe pass, the averages over days, how many facts rank first, and whether the
    gate promoted the checkpoint probed."""
    passes = runs.probe_passes(db, limit)
    rows = []
    for p in reversed(passes):
        row = {"run": p["run_id"], "checkpoint": p["checkpoint_id"], "recorded_at": p["recorded_at"]}
        scores = {r["metric"]: r["value"] for r in runs.pass_scores(db, p["run_id"], kind="summary")}
        for metric, column in SUMMARY_COLUMNS.items():
            row[column] = f"{scores[metric]:.3f}" if metric in scores else "-"
        ranks = [r["value"] for r in runs.pass_scores(db, p["run_id"], metric="answer_rank")]
        row["facts_first"] = f"{sum(r == 1 for r in ranks)}/{len(ranks)}" if ranks else "-"
        row["gate"] = GATE.get(p["update_status"], "-")
        rows.append(row)
    return rows


def plot_history(db: sqlite_utils.Database, path: str) -> None:
    """Two panels over probe passes: held-out bits per byte of each day, and its forgetting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, metric, title in (
        (axes[0], "probe_bpb", "retention: held-out bits per byte of each day"),
        (axes[1], "forgetting_probe_bpb", "forgetting: now minus best earlier (bpb)"),
    ):
        series: dict[str, list[tuple[int, float]]] = {}
        for r in runs.metric_series(db, metric):
            series.setdefault(r["day"], []).append((r["checkpoint_id"], r["value"]))
        for day, points in sorted(series.items()):
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=3, label=day)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("checkpoint")
        if series and len(series) <= 12:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
