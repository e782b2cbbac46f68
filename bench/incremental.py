"""`engram-ff bench incremental`: does FF learn day by day without forgetting? FF against BP, replay against none.

Each method gets a fresh data folder. Day by day, the day's Engram file is dropped into its watched
folder, ingested, and the daemon's own nightly job (`daemon.update.run_update`) runs with that
method's configuration: a method is nothing but daemon configuration fields. After update i the
current checkpoint is scored on EVERY day's probe split (future days too, taken from one reference
database holding all days), filling R[i][j] = bits per byte on day j's probe split after update i.

From R, in loss form (bits per byte, lower is better):
  average loss      mean of R[N][j] over all days j;
  new-day loss      R[i][i], how well a day is learned the night it arrives;
  BWT (GEM, Lopez-Paz and Ranzato 2017)  mean over j < N of R[j][j] - R[N][j]: positive means later
                    days helped day j, negative means they made it worse (as daemon/probes.py records it);
  forgetting (Chaudhry et al. 2018)  mean over j < N of R[N][j] - min_{j <= k < N} R[k][j]: how far
                    day j has fallen from its best earlier score; lower is better, and negative when the
                    newest update made old days better than any earlier checkpoint had them.

    flock /tmp/engram-bench.lock python -m engram_ff.bench.incremental [--stream plays] [--days 8] [--steps-per-day 300]

Beside the Markdown it writes the measurements as JSON, so that methods run in separate processes (two
cores, two studies side by side) can be merged into one report with `--merge A.json B.json`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from engram_ff.bench.common import (
    RESULTS,
    markdown_table,
    parse_args,
    peak_rss_mib,
    plot_series,
    save_figure,
    write_result,
)
from engram_ff.bench.make_stream import PLAYS, daemon_facts, day_lines, load_facts, stream_days, write_day
from engram_ff.daemon.checkpoints import load_current
from engram_ff.daemon.config import Config, load_config
from engram_ff.daemon.update import run_update
from engram_ff.ingest.reader import Limits, catch_up
from engram_ff.model.lm import PRESETS
from engram_ff.model.train import evaluate_nats
from engram_ff.state import queries
from engram_ff.state.db import open_db

LN2 = math.log(2)

# Every method starts from plain fine-tuning, whatever the daemon's defaults are (no replay, every layer at
# full rate, no promotion gate); then its own fields. Commit 0ffcbd0 removed each method's replay_ratio=0.0
# but PLAIN never set it, so until issue 12 every "no replay" method replayed 2:1, the daemon's default.
# The replay floor does not matter to the methods with replay: 2:1 of the smallest play (82 KB of train
# text) is 163 KB, above the daemon's 64 KiB floor. The gate's checks are still computed (runs.gate), so
# the study reports what the gate would have said of each night.
NO_GATE = dict(gate_tolerance_bpb=math.inf, gate_facts_tolerance_bpb=math.inf, gate_canary_tolerance_bpb=math.inf)
PLAIN = dict(
    replay_ratio=0.0, replay_min_bytes=0, lower_lr=1.0, freeze_layers=0, replay_layers="all", lr_scale=1.0, **NO_GATE
)
# name -> daemon configuration fields over PLAIN (everything else is shared by all methods)
METHODS: dict[str, dict[str, object]] = {
    "ff": dict(trainer="ff"),
    "ff-replay0.5": dict(trainer="ff", replay_ratio=0.5),
    "ff-replay1": dict(trainer="ff", replay_ratio=1.0),
    "bp": dict(trainer="bp"),
    "bp-replay1": dict(trainer="bp", replay_ratio=1.0),
    "ff-freeze1": dict(trainer="ff", freeze_layers=1),
    "ff-freeze2": dict(trainer="ff", freeze_layers=2),
    "ff-slow0.3": dict(trainer="ff", lower_lr=0.3),
    "ff-slow0.1": dict(trainer="ff", lower_lr=0.1),
    "ff-replay1-lower": dict(trainer="ff", replay_ratio=1.0, replay_layers="lower"),
    "ff-replay1-upper": dict(trainer="ff", replay_ratio=1.0, replay_layers="upper"),
    "ff-replay2": dict(trainer="ff", replay_ratio=2.0),
    "ff-replay1-slow0.3": dict(trainer="ff", replay_ratio=1.0, lower_lr=0.3),
    "ff-replay1-slow0.1": dict(trainer="ff", replay_ratio=1.0, lower_lr=0.1),
    "ff-replay2-slow0.3": dict(trainer="ff", replay_ratio=2.0, lower_lr=0.3),
    "bp-replay2": dict(trainer="bp", replay_ratio=2.0),
    "bp-slow0.1": dict(trainer="bp", lower_lr=0.1),
    "bp-replay2-slow0.3": dict(trainer="bp", replay_ratio=2.0, lower_lr=0.3),
    # the same trainers at lower learning rates: how much forgetting each buys with how much plasticity
    "ff-lr0.5": dict(trainer="ff", lr_scale=0.5),
    "ff-lr0.25": dict(trainer="ff", lr_scale=0.25),
    "bp-lr0.5": dict(trainer="bp", lr_scale=0.5),
    "bp-lr0.25": dict(trainer="bp", lr_scale=0.25),
}
# The comparison and the daemon's default recipe: about 11 minutes a method at 300 steps a night on
# one core; split them with --methods over two processes and join them with --merge.
DEFAULT_METHODS = [
    "ff",
    "bp",
    "ff-replay1",
    "ff-replay2",
    "bp-replay1",
    "ff-slow0.1",
    "bp-slow0.1",
    "ff-replay2-slow0.3",
    "bp-replay2-slow0.3",
]
QUICK = dict(
    days=3, steps_per_day=4, methods="ff,bp,ff-freeze1", preset="tiny", batch_size=4, seq_len=64, eval_bytes=1024
)


@dataclass
class Run:
    """One method on the stream: R[i][j] and the per-update measurements, i = update, j = day."""

    method: str
    R: list[list[float]] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time of run_update
    update_seconds: list[float] = field(default_factory=list)  # wall time of the update, from its runs row
    facts: list[dict[str, tuple[float, int]]] = field(default_factory=list)  # name -> (answer bpb, rank)
    # per update from the second: what the promotion gate measured, check -> candidate minus current (bpb)
    gate: list[dict[str, float | None]] = field(default_factory=list)

    @property
    def trainer(self) -> str:
        return self.method.split("-")[0]  # every method's name starts with its trainer

    @property
    def replays(self) -> bool:
        return "replay" in self.method

    def diagonal(self) -> list[float]:
        return [self.R[i][i] for i in range(len(self.R))]

    def forgetting_after(self, i: int) -> float:
        """Average forgetting over the days before day i, after update i (0-based)."""
        return sum(self.R[i][j] - min(self.R[k][j] for k in range(j, i)) for j in range(i)) / i

    def summary(self) -> dict[str, float]:
        n = len(self.R) - 1
        last = self.R[n]
        return {
            "avg_bpb": sum(last) / len(last),
            "new_bpb": sum(self.diagonal()) / len(self.R),
            "newest_bpb": last[n],
            "bwt_bpb": sum(self.R[j][j] - last[j] for j in range(n)) / n,
            "forgetting_bpb": self.forgetting_after(n),
        }


def method_config(folder: Path, overrides: dict, args) -> Config:
    """The daemon configuration of one method: fixed steps a day, so every method sees the same data (no
    cap on passes: without replay, the daemon's 8 passes would cut a small play's night to 160 steps)."""
    return load_config(
        environ={},
        data_dir=str(folder / "data"),
        watch_dir=str(folder / "engram"),
        facts_file=str(daemon_facts(folder)),
        model_preset=args.preset,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        update_min_steps=args.steps_per_day,
        update_max_steps=args.steps_per_day,
        update_max_passes=math.inf,
        update_budget_minutes=600,
        checkpoint_every_seconds=3600,
        workers=1,  # one process a method, on --threads threads: studies run side by side, a core each
        **{**PLAIN, **overrides},
    )


def write_days(out: Path, stream: str, n_days: int, repeat: int) -> list[Path]:
    """The stream's day files in `out`, the facts planted on day 1."""
    facts = load_facts()
    return [
        write_day(out, day, day_lines(day, speeches, source, facts if i == 0 else None, repeat if i == 0 else 0))
        for i, (day, source, speeches) in enumerate(stream_days(stream, n_days))
    ]


def probe_texts(day_files: list[Path], folder: Path, max_bytes: int) -> list[bytes]:
    """Every day's probe split, from a reference database that holds all days."""
    config = load_config(environ={}, data_dir=str(folder / "data"), watch_dir=str(folder / "engram"))
    raw = config.watch / "raw"
    raw.mkdir(parents=True)
    for path in day_files:
        shutil.copy(path, raw / path.name)
    db = open_db(config.db_path)
    try:
        catch_up(db, config.watch, limits=Limits.of(config))
        return [queries.day_text(db, day, "probe", max_bytes=max_bytes) for day in queries.days(db)]
    finally:
        db.close()


def fact_scores(config, checkpoint_id: int) -> dict[str, tuple[float, int]]:
    """The fact probes the daemon recorded for this checkpoint."""
    db = open_db(config.db_path)
    try:
        rows = db.query(
            "SELECT probe, metric, value FROM probe_scores WHERE kind = 'fact' AND checkpoint_id = ?", [checkpoint_id]
        )
        scores: dict[str, dict] = {}
        for row in rows:
            scores.setdefault(row["probe"], {})[row["metric"]] = row["value"]
        return {name: (s["answer_bpb"], int(s["answer_rank"])) for name, s in scores.items()}
    finally:
        db.close()


def run_method(method: str, day_files: list[Path], probes: list[bytes], folder: Path, args) -> Run:
    config = method_config(folder, METHODS[method], args)
    raw = config.watch / "raw"
    raw.mkdir(parents=True)
    run = Run(method)
    for i, path in enumerate(day_files):
        shutil.copy(path, raw / path.name)  # the day's log lands in the watched folder
        db = open_db(config.db_path)
        try:
            catch_up(db, config.watch, limits=Limits.of(config))
        finally:
            db.close()
        cpu = time.process_time()
        row = run_update(config)
        run.cpu_seconds.append(time.process_time() - cpu)
        if row["status"] != "ok":
            raise RuntimeError(f"{method}: update of day {i + 1} ended {row['status']}: {row['error']}")
        run.update_seconds.append(row["wall_seconds"])
        db = open_db(config.db_path)
        try:
            current = load_current(db, config)
            assert current is not None, "the update just ended ok, with a final checkpoint"
            model = current.model
        finally:
            db.close()
        run.R.append([evaluate_nats(model, text) / LN2 for text in probes])
        run.facts.append(fact_scores(config, row["checkpoint_id"]))
        if i:
            checks = json.loads(row["gate"])["checks"]
            run.gate.append({name: check.get("delta") for name, check in checks.items()})
        print(
            f"{method} day {i + 1}: new {run.R[-1][i]:.3f} bpb, all days {sum(run.R[-1]) / len(probes):.3f}, "
            f"{run.cpu_seconds[-1]:.0f} CPU s",
            flush=True,
        )
    return run


def plot_heatmaps(path: Path, runs: list[Run]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(runs))
    rows = math.ceil(len(runs) / cols)
    lo = min(min(map(min, r.R)) for r in runs)
    hi = max(max(map(max, r.R)) for r in runs)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(runs) :]:
        ax.axis("off")
    for ax, run in zip(axes.flat, runs):
        n = len(run.R)
        image = ax.imshow(run.R, vmin=lo, vmax=hi, cmap="viridis_r")
        ax.set(
            title=run.method,
            xlabel="probe day j",
            ylabel="after update i",
            xticks=range(n),
            xticklabels=range(1, n + 1),
            yticks=range(n),
            yticklabels=range(1, n + 1),
        )
    fig.colorbar(image, ax=axes, shrink=0.8, label="bits per byte (lower is better)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(path: Path, runs: list[Run]) -> Path:
    """Each method as a point: how well it learns the newest day against how much it forgets the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for run in runs:
        s = run.summary()
        x, y = s["newest_bpb"], s["forgetting_bpb"] * LN2
        ax.scatter(
            x,
            y,
            marker="o" if run.trainer == "ff" else "s",
            s=36,
            color="tab:blue" if run.trainer == "ff" else "tab:orange",
            alpha=0.5 if run.replays else 1.0,
        )
        ax.annotate(run.method, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set(
        xlabel="newest day after its update, bits/byte (lower: more plastic)",
        ylabel="average forgetting, nats/byte (lower: more stable)",
        title="Plasticity against stability (FF circles, BP squares, faded: replay)",
    )
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def verdicts(text: str) -> list[str]:
    """The target lines of a results file: its "## Targets" table as bullets, else its `- ` bullets."""
    lines = text.splitlines()
    if "## Targets" in lines:
        section = lines[lines.index("## Targets") + 1 :]
        table = list(itertools.takewhile(lambda line: line.startswith("|") or not line.strip(), section))
        rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table if line.startswith("|")]
        if len(rows) > 2:
            return [f"- {target}: {measured} (met: {met})" for target, measured, met, *_ in rows[2:]]
    return [line for line in lines if line.startswith("- ")]


def answers_section() -> str:
    """The plan's four questions: the first three quote the target lines of the other benchmarks'
    committed results when they exist, the fourth points at this study."""

    def cite(name: str, command: str) -> str:
        path = RESULTS / name
        if not path.exists():
            return f"not measured yet: `{command}` writes bench/results/{name}.\n"
        found = verdicts(path.read_text())
        if not found:
            return f"see bench/results/{name} (`{command}`).\n"
        return f"from bench/results/{name}, `{command}`:\n" + "".join(f"  {line}\n" for line in found)

    return (
        "## The plan's four questions\n\n"
        f"1. Does FF work on a CPU with 16 GB? Images {cite('images.md', 'engram-ff bench images')}"
        f"   A nightly update's memory: {cite('update.md', 'engram-ff bench update')}"
        "   This study's updates: the CPU seconds column above (one thread).\n"
        f"2. Can it learn text? {cite('text.md', 'engram-ff bench text')}"
        "   Here: the new-day column, a play learned the night it arrives.\n"
        f"3. Can SSM layers replace linear ones? {cite('text.md', 'engram-ff bench text')}"
        "4. Does it enable incremental learning? The summary, targets and matrices above "
        "(`flock /tmp/engram-bench.lock python -m engram_ff.bench.incremental`).\n"
    )


def report(runs: list[Run], meta: dict, results: Path, stem: str) -> str:
    heatmap = plot_heatmaps(results / f"{stem}_R.png", runs)
    frontier = plot_frontier(results / f"{stem}_frontier.png", runs)
    chart = plot_series(
        results / f"{stem}_forgetting.png",
        {r.method: [r.forgetting_after(i) * LN2 for i in range(1, len(r.R))] for r in runs},
        xlabel="update i - 1 (days learned before the newest)",
        ylabel="average forgetting (nats/byte)",
        title="Forgetting of earlier days, update by update",
    )
    n = len(meta["day_names"])
    commands = "".join(
        f"\n    flock /tmp/engram-bench.lock python -m engram_ff.bench.incremental {c}" for c in meta["commands"]
    )
    lines = [
        "# Incremental learning: FF against BP, replay against none\n",
        f"Stream `{meta['stream']}`, {n} days ({', '.join(meta['day_names'])}), facts planted on day 1 "
        f"(x{meta['repeat']}); model preset `{meta['preset']}`, batch {meta['batch_size']} x {meta['seq_len']}, "
        f"{meta['steps_per_day']} steps a day for every method; R evaluated on each day's probe split (first "
        f"{meta['eval_bytes']} bytes; {min(meta['probe_bytes'])}-{max(meta['probe_bytes'])} bytes a day); torch "
        f"threads {meta['threads']}; peak RSS of a study process {max(meta['peak_rss_mib']):.0f} MiB.\n",
        f"Commands, one study process each:\n{commands}\n",
        "Loss form, bits per byte unless marked: avg = mean of R[N][j] over all days; new = mean of R[i][i] "
        "(a day learned the night it arrives); newest = R[N][N]; BWT = mean_{j<N} (R[j][j] - R[N][j]) "
        "(positive: later days helped); forgetting = mean_{j<N} (R[N][j] - min_{j<=k<N} R[k][j]) (lower "
        "is better; negative: the newest update left old days better than any earlier checkpoint), also in "
        "nats/byte.\n",
    ]
    headers = [
        "method",
        "avg bpb",
        "new bpb",
        "newest bpb",
        "BWT bpb",
        "forgetting bpb",
        "forgetting nats/B",
        "CPU s/day",
        "update wall s/day",
        "facts rank 1 after day N",
    ]
    rows = []
    for r in runs:
        s = r.summary()
        top = sum(rank == 1 for _, rank in r.facts[-1].values())
        rows.append(
            [
                r.method,
                f"{s['avg_bpb']:.3f}",
                f"{s['new_bpb']:.3f}",
                f"{s['newest_bpb']:.3f}",
                f"{s['bwt_bpb']:+.3f}",
                f"{s['forgetting_bpb']:.3f}",
                f"{s['forgetting_bpb'] * LN2:.3f}",
                f"{sum(r.cpu_seconds) / n:.1f}",
                f"{sum(r.update_seconds) / n:.1f}",
                f"{top}/{len(r.facts[-1])}",
            ]
        )
    lines += ["## Summary\n", markdown_table(headers, rows)]
    lines.append(targets_section(runs, n))
    lines += [
        "## Plasticity against stability\n",
        f"![frontier]({frontier.name})\n",
        "A method lower and further left than another learns the newest day better and forgets less; "
        "the learning-rate variants (`-lr0.5`, `-lr0.25`) trace each trainer's own trade-off.\n",
    ]
    lines += [
        "## Forgetting over days (nats/byte)\n",
        f"![forgetting]({chart.name})\n",
        markdown_table(
            ["method"] + [f"after {i + 1}" for i in range(1, n)],
            [[r.method] + [f"{r.forgetting_after(i) * LN2:.3f}" for i in range(1, n)] for r in runs],
        ),
    ]
    lines += ["## Fact probes (planted on day 1): rank among distractors / answer bpb, per fact, after each update\n"]
    names = sorted(runs[0].facts[0])
    for r in runs:
        lines.append(f"**{r.method}**\n")
        lines.append(
            markdown_table(
                ["fact"] + [f"day {i + 1}" for i in range(n)],
                [[name] + [f"{r.facts[i][name][1]} / {r.facts[i][name][0]:.2f}" for i in range(n)] for name in names],
            )
        )
    lines.append(gate_section(runs, n))
    lines += [
        "## Accuracy matrices R[i][j] (bits per byte on day j's probe split after update i)\n",
        f"![R heatmaps]({heatmap.name})\n",
    ]
    for r in runs:
        lines.append(f"**{r.method}** (CPU s per update: {', '.join(f'{c:.0f}' for c in r.cpu_seconds)})\n")
        lines.append(
            markdown_table(
                ["after \\ day"] + [str(j + 1) for j in range(n)],
                [[str(i + 1)] + [f"{v:.3f}" for v in row] for i, row in enumerate(r.R)],
            )
        )
    lines.append(answers_section())
    return "\n".join(lines)


def gate_section(runs: list[Run], n: int) -> str:
    """What the promotion gate measured of each night (daemon/gate.py; off in the study, so every night is
    kept): its checks, candidate minus current model, and the largest of each over the nights, which the
    daemon's tolerances must exceed for such nights to be promoted."""
    measured = [r for r in runs if r.gate]
    if not measured:
        return ""
    checks = list(measured[0].gate[0])

    def cell(value):
        return "-" if value is None else f"{value:+.3f}"

    rows = []
    for r in measured:
        for check in checks:
            values = [night.get(check) for night in r.gate]
            known = [v for v in values if v is not None]
            rows.append([r.method, check, *map(cell, values), cell(max(known)) if known else "-"])
    return (
        "## The promotion gate's checks, night by night (candidate minus current, bits per byte)\n\n"
        "Off in the study (every night is kept); held_out: mean held-out bits per byte of the days both models "
        "were probed on; facts: mean answer bits per byte of the facts the current model knew; canary: the "
        "oldest held-out text. '-': nothing to compare.\n\n"
        + markdown_table(["method", "check"] + [f"night {i + 1}" for i in range(1, n)] + ["largest"], rows)
    )


def targets_section(runs: list[Run], n: int) -> str:
    """The issue's targets, checked against whichever methods were run."""
    by = {r.method: r.summary() for r in runs}
    out = ["## Targets\n"]
    fine_tuned = [m for m in by if m.startswith("bp") and "replay" not in m]
    own = [m for m in by if m.startswith("ff") and "replay" not in m]
    if "bp" in by and own:
        if by["bp"]["forgetting_bpb"] <= 0:
            out.append(
                "- FF forgetting <= 0.5 x BP's: BP does not forget on this stream at this budget, so the "
                "ratio says nothing."
            )
        else:
            both = [m for m in own if _both_targets(by[m], by["bp"])]
            out.append(
                "- FF forgetting <= 0.5 x that of BP fine-tuning (`bp`, its tuned rate, no replay) while the "
                "newest day stays within 5% of BP's: "
                + (f"met by {', '.join(both)}." if both else "missed by every FF method without replay.")
            )
        out.append(
            "\nEach FF method without replay against each BP one: forgetting ratio (FF / BP), newest-day "
            "loss (FF against BP), and whether both targets hold.\n"
        )
        out.append(
            markdown_table(
                ["FF method"] + [f"vs {m}" for m in fine_tuned],
                [[m] + [_against(by[m], by[b]) for b in fine_tuned] for m in own],
            )
        )
    replayed = {m: s for m, s in by.items() if m.startswith("ff") and "replay" in m}
    if replayed:
        best = min(replayed, key=lambda m: replayed[m]["forgetting_bpb"])
        value = replayed[best]["forgetting_bpb"] * LN2
        out.append(
            f"- FF with replay, forgetting <= 0.02 nats/byte: best {best} {value:.3f}: "
            f"{'met' if value <= 0.02 else 'missed'}."
        )
    for r in runs:
        if r.method.startswith("ff") and n >= 8:
            top = [name for name, (_, rank) in r.facts[-1].items() if rank == 1]
            kept = [name for name in top if r.facts[0][name][1] == 1]
            out.append(
                f"- {r.method}: facts planted on day 1 ranking first after {n - 1} more days: "
                f"{len(top)}/{len(r.facts[-1])} ({', '.join(top) or 'none'}); of those, first already "
                f"right after day 1 (retained, not found later): {', '.join(kept) or 'none'}."
            )
    return "\n".join(out) + "\n"


def _both_targets(ff: dict, bp: dict) -> bool:
    return ff["forgetting_bpb"] <= 0.5 * bp["forgetting_bpb"] and ff["newest_bpb"] <= 1.05 * bp["newest_bpb"]


def _against(ff: dict, bp: dict) -> str:
    if bp["forgetting_bpb"] <= 0:
        return "BP does not forget"
    ratio, gap = ff["forgetting_bpb"] / bp["forgetting_bpb"], ff["newest_bpb"] / bp["newest_bpb"] - 1
    return f"{ratio:.2f}, {gap:+.1%}{': both met' if _both_targets(ff, bp) else ''}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engram-ff bench incremental", description=__doc__.split("\n")[0])
    parser.add_argument("--stream", choices=["plays", "tiny"], default="plays")
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument(
        "--steps-per-day",
        type=int,
        default=Config().update_min_steps,
        help="training steps of every update (default: the daemon's own minimum a night)",
    )
    parser.add_argument(
        "--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, of: {', '.join(METHODS)}"
    )
    parser.add_argument("--preset", default="daemon", choices=list(PRESETS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-bytes", type=int, default=8192, help="bytes of each day's probe split scored in R")
    parser.add_argument("--repeat", type=int, default=8, help="times the fact conversation occurs on day 1")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (on 2 shared cores one thread ran a step 2.5x faster than two)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="defaults for a smoke test: 3 days, 4 steps, tiny model, 3 methods"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", help="name of the result files (default: incremental, or incremental-quick)")
    parser.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="write one report from studies' JSON files instead of running one",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parse_args(parser, argv, QUICK)
    stem = args.stem or ("incremental-quick" if args.quick else "incremental")
    if args.merge:
        meta, runs = merge(args.merge)
        print(save_study(meta, runs, args.results, stem))
        return 0
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(METHODS)}")
    if args.days < 2:
        parser.error("--days must be at least 2: forgetting needs a day before the newest")
    if args.stream == "plays" and args.days > len(PLAYS):
        parser.error(f"--days: the plays stream has {len(PLAYS)} days (one play a day), not {args.days}")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="engram-incremental-") as tmp:
        work = Path(tmp)
        day_files = write_days(work / "stream", args.stream, args.days, args.repeat)
        probes = probe_texts(day_files, work / "reference", args.eval_bytes)
        meta = {key: getattr(args, key) for key in SHARED}
        meta.update(
            threads=args.threads,
            commands=[" ".join(argv)],
            day_names=[p.stem for p in day_files],
            probe_bytes=[len(p) for p in probes],
        )
        runs = []
        for method in methods:  # the report is rewritten after each method, so a long study shows progress
            runs.append(run_method(method, day_files, probes, work / method, args))
            meta["peak_rss_mib"] = [peak_rss_mib()]
            path = save_study(meta, runs, args.results, stem)
    print(path)
    return 0


def save_study(meta: dict, runs: list[Run], results: Path, stem: str) -> Path:
    """The measurements as JSON, for a later --merge, and the report made from them; the report's path."""
    write_result(f"{stem}.json", json.dumps({"meta": meta, "runs": [asdict(r) for r in runs]}), results)
    return write_result(f"{stem}.md", report(runs, meta, results, stem), results)


SHARED = ("stream", "days", "steps_per_day", "preset", "batch_size", "seq_len", "eval_bytes", "repeat")


def merge(paths: list[Path]) -> tuple[dict, list[Run]]:
    """One study from several: their settings must agree, and their methods are listed in order."""
    meta, runs = None, []
    for path in paths:
        study = json.loads(path.read_text())
        if meta is None:
            meta = dict(study["meta"], commands=[], peak_rss_mib=[])
        differ = [key for key in (*SHARED, "day_names") if study["meta"][key] != meta[key]]
        if differ:
            raise SystemExit(f"{path}: cannot merge a study with another {', '.join(differ)}")
        meta["commands"] += study["meta"]["commands"]
        meta["peak_rss_mib"] += study["meta"]["peak_rss_mib"]
        meta["threads"] = max(meta["threads"], study["meta"]["threads"])
        runs += [Run(**r) for r in study["runs"]]
    assert meta is not None, "main merges only a non-empty --merge list"
    return meta, runs


if __name__ == "__main__":
    raise SystemExit(main())
