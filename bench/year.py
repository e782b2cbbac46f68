"""`engram-ff bench year`: a simulated year of Engram days through the daemon's own update, gate and probes.

Night by night (bench/year_days.py says what the days are), the day's file lands in the watched folder,
is ingested, and the daemon's nightly job (`daemon.update.run_update`: training, the probe pass,
the promotion gate) runs in this process with the daemon preset; on the nights the machine is off the
files pile up and nothing runs. After each night the benchmark measures, beside what the daemon records:

  wall time of the night (update and probe pass; the probe pass's own from its runs row), the night's
  peak RSS (VmHWM, reset before each night through /proc/self/clear_refs), the database (with its WAL)
  and checkpoint folder sizes; and its own scores of the current model, independent of the gate's: month
  1's held-out text (the probe split of days 1-30, 1 KiB a day, the same text every night) and the
  newest 30 days' (1 KiB a day), in bits per byte; the facts' answer bits per byte and rank come from the
  current model's newest probe pass.

A promoted night "regresses beyond the tolerance" when, by these independent scores, the new current
model is worse than the one before it on month 1 by more than gate_tolerance_bpb, or on the mean answer
of the facts the previous model knew by more than gate_facts_tolerance_bpb.

Per-night budgets are cut so that the year runs in at most 90 minutes on 2 cores (see BUDGET); what is cut
is written into the report.

A year outlasts a working session: with --dir the year's folder is kept, one record a night is appended
to it, and the same command again carries on after the last night recorded.

    flock /tmp/engram-bench.lock engram-ff bench year [--nights 365] [--quick] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from engram_ff.bench.common import (
    RESULTS,
    markdown_table,
    parse_args,
    peak_rss_since_reset_mib,
    reset_peak_rss,
    save_figure,
    write_result,
)
from engram_ff.bench.make_stream import daemon_facts, load_facts, write_day
from engram_ff.bench.year_days import Day, calendar, day_lines, held_out, sentences
from engram_ff.daemon.checkpoints import load_current
from engram_ff.daemon.config import Config, load_config
from engram_ff.daemon.update import run_update
from engram_ff.ingest.reader import Limits, catch_up
from engram_ff.model.lm import PRESETS
from engram_ff.model.train import evaluate_nats
from engram_ff.state import runs
from engram_ff.state.db import open_db

LN2 = math.log(2)
MIB = 1 << 20
HELD_OUT_BYTES = 1024  # per day, for the benchmark's own month-1 and newest-month scores
# The daemon's defaults train 4 passes over a night's text, at least 300 and at most 3,000 steps, in 12
# minutes: about 60 s for an ordinary day here, 6 hours for the year. Cut to one pass, 16 to 64 steps, so
# an ordinary night trains about 30 steps (a few seconds) and the burst day 64; and probes to 16 days a pass
# (32: 8 s of a 18 s night at 30 days on the shared machine, bench/results/year.md's first run).
BUDGET: dict[str, Any] = dict(
    update_epochs=1.0, update_min_steps=16, update_max_steps=64, update_budget_minutes=2.0, probe_max_days=16
)
QUICK = dict(nights=14, scale=0.05, preset="tiny", batch_size=4, seq_len=64, threads=1)


def year_config(folder: Path, args) -> Config:
    """The daemon's defaults (replay, floor, passes, gate), the year's facts and the cut budget."""
    return load_config(
        environ={},
        data_dir=str(folder / "data"),
        watch_dir=str(folder / "engram"),
        facts_file=str(daemon_facts(folder)),
        model_preset=args.preset,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        checkpoint_every_seconds=3600,
        **BUDGET,
    )


def _size_mib(*paths: Path) -> float:
    files = [p for path in paths for p in ([path] if path.is_file() else path.glob("*")) if p.is_file()]
    return sum(p.stat().st_size for p in files) / MIB


def _scores(config: Config, texts: dict[str, bytes], update_run: int) -> dict:
    """The benchmark's own scores of the current model, its facts from its newest probe pass, and the wall
    time of the probe passes the night ran (the candidate's, and the current model's if it had none)."""
    db = open_db(config.db_path)
    try:
        probe_s = db.execute(
            "SELECT coalesce(sum(wall_seconds), 0) FROM runs WHERE kind = 'probe' AND id > ?", [update_run]
        ).fetchone()[0]
        current = load_current(db, config)
        if current is None:
            return dict(probe_s=probe_s, facts={})
        facts: dict[str, dict] = {}
        assert current.checkpoint_id is not None, "loaded from a checkpoint: not a fresh model"
        for row in runs.newest_pass(db, current.checkpoint_id):
            if row["kind"] == "fact":
                facts.setdefault(row["probe"], {})[row["metric"]] = row["value"]
    finally:
        db.close()
    scored = {name: evaluate_nats(current.model, text) / LN2 for name, text in texts.items() if len(text) >= 2}
    return dict(checkpoint=current.checkpoint_id, facts=facts, probe_s=probe_s, **scored)


def run_night(config: Config, day: Day, lines: list[dict], texts: dict[str, bytes]) -> dict:
    """Ingest and update as the daemon would at night; what the benchmark records of it."""
    record = dict(night=day.night, date=day.date.isoformat(), kind=day.kind, messages=len(lines) - 1)
    if not day.machine_on:
        return dict(record, status="off")
    reset_peak_rss()
    start = time.perf_counter()
    db = open_db(config.db_path)
    try:
        catch_up(db, config.watch, limits=Limits.of(config))
    finally:
        db.close()
    ingested = time.perf_counter()
    row = run_update(config)
    wall = time.perf_counter() - ingested
    record.update(
        status=row["status"],
        ingest_s=ingested - start,
        night_s=wall,
        new_bytes=row["new_bytes"] or 0,
        replay_bytes=row["replay_bytes"] or 0,
        steps=row["steps"] or 0,
        gate=json.loads(row["gate"]) if row["gate"] else None,
        rss_mib=peak_rss_since_reset_mib(),
        db_mib=_size_mib(config.db_path, Path(f"{config.db_path}-wal")),
        checkpoints_mib=_size_mib(config.checkpoint_dir),
    )
    scores = _scores(config, texts, row["id"])
    record.update(update_s=wall - scores["probe_s"], **scores)
    return record


def texts_for(night: int, held: dict[int, bytes]) -> dict[str, bytes]:
    return {
        "month1_bpb": b"".join(held[d] for d in range(1, 31) if d in held),
        "newest_bpb": b"".join(held[d] for d in range(max(1, night - 29), night + 1) if d in held),
    }


# what a kept folder must be carried on with (--stop-after may change: it cuts a year into runs)
SETTINGS = ("nights", "scale", "preset", "batch_size", "seq_len", "seed", "threads")


def _kept(folder: Path, args, parser: argparse.ArgumentParser) -> list[dict]:
    """The nights a kept folder already ran, after checking it ran them with these settings; a first run
    writes the settings. A night cut off part-way (no record) runs again: its day's file is rewritten with
    the same lines, ingest takes only what it had not taken, and the daemon marks the killed run."""
    settings = {k: getattr(args, k) for k in SETTINGS}
    saved = folder / "settings.json"
    if not saved.exists():
        if folder.exists() and any(folder.iterdir()):
            parser.error(f"--dir {folder}: not empty and not a year's folder (no settings.json)")
        folder.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(settings))
        return []
    before = json.loads(saved.read_text())
    changed = ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in settings.items() if before.get(k) != v)
    if changed:
        parser.error(f"--dir {folder} ran with other settings ({changed}); give the same ones, or a new folder")
    log = folder / "nights.jsonl"
    lines = log.read_bytes().splitlines(keepends=True) if log.exists() else []
    if lines and not lines[-1].endswith(b"\n"):  # killed while it wrote the record: that night runs again
        log.write_bytes(b"".join(lines[:-1]))
        lines.pop()
    return [json.loads(line) for line in lines]


def run_year(args, folder: Path) -> tuple[list[dict], dict]:
    """Night by night in `folder`, appending one record a night to folder/nights.jsonl and carrying on
    after the last night recorded there, so a year cut short by the end of a session resumes."""
    torch.set_num_threads(args.threads)
    records = _kept(folder, args, args.parser)
    done = {r["night"] for r in records}
    before, start = (records[-1]["minutes"], records[-1]["start"] + 1) if records else (0.0, 1)
    days = calendar(args.nights, args.seed, args.scale)[: args.stop_after]
    last = max(done, default=0)
    pool, facts = sentences(), load_facts()
    config = year_config(folder, args)
    raw = config.watch / "raw"
    held = {  # month 1's, scored every night, and the newest month's so far
        d.night: held_out(day_lines(d, pool, facts, args.seed), config.probe_fraction, HELD_OUT_BYTES)
        for d in days
        if d.night <= 30 or last - 30 < d.night <= last
    }
    started = time.monotonic()
    with (folder / "nights.jsonl").open("a") as log:
        for day in days:
            if day.night in done:
                continue
            lines = day_lines(day, pool, facts, args.seed)
            held[day.night] = held_out(lines, config.probe_fraction, HELD_OUT_BYTES)
            write_day(raw, day.date, lines)
            record = run_night(config, day, lines, texts_for(day.night, held))
            record.update(minutes=before + (time.monotonic() - started) / 60, start=start)
            records.append(record)
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(_progress(record, record["minutes"] * 60), flush=True)
    meta = dict(
        command=" ".join(args.argv),
        nights=args.nights,
        stop_after=args.stop_after,
        preset=args.preset,
        scale=args.scale,
        seed=args.seed,
        threads=args.threads,
        budget=BUDGET,
        batch=f"{config.batch_size} x {config.seq_len}",
        tolerances={
            k: getattr(config, k)
            for k in ("gate_tolerance_bpb", "gate_facts_tolerance_bpb", "gate_canary_tolerance_bpb")
        },
        total_minutes=records[-1]["minutes"] if records else 0.0,
        starts=records[-1]["start"] if records else 0,
        load_average=os.getloadavg(),
    )
    return records, meta


def _progress(r: dict, elapsed: float) -> str:
    if r["status"] == "off":
        return f"night {r['night']:3d} {r['date']} {r['kind']}: machine off"
    return (
        f"night {r['night']:3d} {r['date']} {r['kind']:9s} {r['status']:8s} {r['new_bytes']:>9,d} new bytes "
        f"{r['steps']:3d} steps, update {r['update_s']:5.1f} s, probe {r['probe_s']:4.1f} s, "
        f"month 1 {r.get('month1_bpb', float('nan')):.3f} bpb, RSS {r['rss_mib']:.0f} MiB ({elapsed / 60:.1f} min)"
    )


def regressions(records: list[dict], tolerances: dict) -> list[dict]:
    """Promoted nights whose new current model is worse than the one before beyond the tolerance, by the
    benchmark's own scores: month 1's held-out text, and the facts the previous model knew (ranked first)."""
    found, before = [], None
    for r in records:
        if r["status"] not in ("ok", "rejected", "skipped") or "month1_bpb" not in r:
            continue
        if before is not None and r["status"] == "ok":
            month1 = r["month1_bpb"] - before["month1_bpb"]
            known = [n for n, f in before["facts"].items() if f.get("answer_rank") == 1 and n in r["facts"]]
            facts = sum(r["facts"][n]["answer_bpb"] - before["facts"][n]["answer_bpb"] for n in known) / (
                len(known) or 1
            )
            if month1 > tolerances["gate_tolerance_bpb"] or facts > tolerances["gate_facts_tolerance_bpb"]:
                found.append(dict(night=r["night"], kind=r["kind"], month1=month1, facts=facts))
        before = r
    return found


def _nights(records: list[dict], kind: str) -> list[dict]:
    return [r for r in records if r["kind"] == kind and r["status"] != "off"]


def targets(records: list[dict], meta: dict) -> list[list[str]]:
    refs = _nights(records, "reference")
    if len(refs) < 2:  # a run stopped before the last night
        rows = [
            [
                "the last night's update + probe, and its peak RSS, against the first reference night's",
                "not reached",
                "-",
            ]
        ]
    else:
        first, last = refs[0], refs[-1]
        first_s, last_s = first["update_s"] + first["probe_s"], last["update_s"] + last["probe_s"]
        rows = [
            [
                f"night {last['night']}'s update + probe within 1.5x of night {first['night']}'s (same new text)",
                f"{last_s:.1f} s against {first_s:.1f} s ({last_s / first_s:.2f}x; {last['new_bytes']:,d} and "
                f"{first['new_bytes']:,d} new bytes)",
                _met(last_s <= 1.5 * first_s),
            ],
            [
                "peak RSS flat",
                f"night {last['night']} {last['rss_mib']:.0f} MiB against night {first['night']} "
                f"{first['rss_mib']:.0f} MiB ({last['rss_mib'] / first['rss_mib']:.2f}x); the year's highest "
                f"{max(r['rss_mib'] for r in records if 'rss_mib' in r):.0f} MiB",
                _met(last["rss_mib"] <= 1.1 * first["rss_mib"]),
            ],
        ]
    end = [r for r in records if "facts" in r][-1]
    fact_cells = ", ".join(
        f"{n} {f['answer_rank']:.0f} / {f['answer_bpb']:.2f}" for n, f in sorted(end["facts"].items())
    )
    rows.append(
        [
            f"facts planted in month 1 rank first with answer bpb < 1.0 at night {end['night']}",
            f"rank / bpb: {fact_cells}",
            _met(all(f["answer_rank"] == 1 and f["answer_bpb"] < 1.0 for f in end["facts"].values())),
        ]
    )
    bad = regressions(records, meta["tolerances"])
    promoted = sum(r["status"] == "ok" for r in records)
    rows.append(
        [
            "zero promoted nights that regress beyond the tolerance (the benchmark's own month-1 and facts scores)",
            f"{len(bad)} of {promoted} promoted"
            + (": " + ", ".join(f"night {b['night']} ({b['kind']})" for b in bad) if bad else ""),
            _met(not bad),
        ]
    )
    for kind in ("junk", "quiet"):
        nights = _nights(records, kind)
        target = f"the {kind} day{'s' * (kind == 'quiet')} rejected or harmless"
        if not nights:
            rows.append([target, "not reached", "-"])
            continue
        harmful = [r for r in nights if r["status"] == "ok" and any(b["night"] == r["night"] for b in bad)]
        decisions = ", ".join(f"{s} {sum(r['status'] == s for r in nights)}" for s in ("ok", "rejected", "skipped"))
        rows.append([target, decisions, _met(not harmful)])
    return rows


def _met(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(records: list[dict], meta: dict, figure: Path) -> str:
    ran = [r for r in records if r["status"] != "off"]
    lines = [
        "# A year of nights\n",
        f"`{meta['command']}`: {len(records)} nights of bench/year_days.py's {meta['nights']}-night calendar "
        "(message counts x"
        f"{meta['scale']}), model preset `{meta['preset']}`, batch {meta['batch']}, {meta['threads']} torch "
        f"threads, seed {meta['seed']}; {meta['total_minutes']:.1f} minutes in all{_starts(meta)}; "
        "load average at the end "
        f"{', '.join(f'{x:.1f}' for x in meta['load_average'])}.\n",
        "What was cut to fit the year in 90 minutes on 2 cores: the daemon trains update_epochs = 4 passes, "
        "300 to 3,000 steps, in update_budget_minutes = 12, and probes up to probe_max_days = 32 days a pass; here "
        + ", ".join(f"{k} = {v}" for k, v in meta["budget"].items())
        + ". Everything else is the daemon's default: replay 2:1 with a 64 KiB floor, at most 8 passes, lower "
        "layers at 30 %, the promotion gate at tolerances "
        + ", ".join(f"{k} = {v}" for k, v in meta["tolerances"].items())
        + ".\n",
        "## Targets\n",
        markdown_table(["target", "measured", "met"], targets(records, meta)),
        f"![a year of nights]({figure.name})\n",
        "## The special nights\n",
        markdown_table(
            ["night", "kind", "messages", "status", "new bytes", "steps", "update s", "probe s", "RSS MiB", "gate"],
            [
                [
                    r["night"],
                    r["kind"],
                    f"{r['messages']:,d}",
                    r["status"],
                    f"{r['new_bytes']:,d}",
                    r["steps"],
                    f"{r['update_s']:.1f}",
                    f"{r['probe_s']:.1f}",
                    f"{r['rss_mib']:.0f}",
                    r["gate"]["reason"] if r["gate"] else "-",
                ]
                for r in ran
                if r["kind"] not in ("ordinary", "quiet")
            ],
        ),
        "## Month by month\n",
        markdown_table(
            [
                "month",
                "nights run",
                "promoted",
                "rejected",
                "skipped",
                "update s (mean)",
                "probe s (mean)",
                "RSS MiB (max)",
                "DB MiB",
                "checkpoints MiB",
                "month 1 bpb",
                "newest month bpb",
                "facts first",
            ],
            _months(records),
        ),
        "## Every night\n",
        f"In `{figure.with_suffix('.json').name}` beside this file, one record a night: status, "
        "bytes, steps, times, RSS, sizes, the gate's decision with its checks, and the benchmark's scores.\n",
    ]
    return "\n".join(lines)


def _starts(meta: dict) -> str:
    if meta.get("starts", 1) <= 1:
        return ""
    return (
        f", in {meta['starts']} runs carried on with --dir (a night cut off part-way ran again; "
        "the minutes it had run are not counted)"
    )


def _months(records: list[dict]) -> list[list]:
    rows = []
    for month in range(0, len(records), 30):
        chunk = [r for r in records[month : month + 30] if r["status"] != "off"]
        trained = [r for r in chunk if r["status"] in ("ok", "rejected")]
        if not chunk:
            continue
        end = chunk[-1]
        rows.append(
            [
                month // 30 + 1,
                len(chunk),
                sum(r["status"] == "ok" for r in chunk),
                sum(r["status"] == "rejected" for r in chunk),
                sum(r["status"] == "skipped" for r in chunk),
                f"{sum(r['update_s'] for r in trained) / max(1, len(trained)):.1f}",
                f"{sum(r['probe_s'] for r in trained) / max(1, len(trained)):.1f}",
                f"{max(r['rss_mib'] for r in chunk):.0f}",
                f"{end['db_mib']:.1f}",
                f"{end['checkpoints_mib']:.1f}",
                f"{end['month1_bpb']:.3f}",
                f"{end['newest_bpb']:.3f}",
                f"{sum(f.get('answer_rank') == 1 for f in end['facts'].values())}/{len(end['facts'])}",
            ]
        )
    return rows


def plot(path: Path, records: list[dict]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in records if r["status"] != "off"]
    x = [r["night"] for r in ran]
    fig, axes = plt.subplots(3, 2, figsize=(13, 11), sharex=True)
    (wall, rss), (sizes, held), (facts, gate) = axes
    wall.plot(x, [r["update_s"] for r in ran], ".", ms=3, label="update (training, checkpoint, gate)")
    wall.plot(x, [r["probe_s"] for r in ran], ".", ms=3, label="probe pass")
    wall.set(yscale="log", ylabel="wall seconds", title="a night's wall time")
    rss.plot(x, [r["rss_mib"] for r in ran], ".", ms=3)
    rss.set(ylabel="MiB", title="peak RSS of the night (VmHWM)")
    sizes.plot(x, [r["db_mib"] for r in ran], label="database + WAL")
    sizes.plot(x, [r["checkpoints_mib"] for r in ran], label="checkpoint folder")
    sizes.set(ylabel="MiB", title="on disk")
    held.plot(x, [r.get("month1_bpb") for r in ran], label="month 1")
    held.plot(x, [r.get("newest_bpb") for r in ran], label="the newest 30 days")
    held.set(ylabel="bits per byte", title="held-out text, current model")
    for name in sorted(ran[-1]["facts"]):
        facts.plot(x, [r["facts"].get(name, {}).get("answer_bpb") for r in ran], label=name)
    first = facts.twinx()
    first.step(x, [sum(f.get("answer_rank") == 1 for f in r["facts"].values()) for r in ran], "k:", lw=1)
    first.set(ylabel="facts ranked first (dotted)", ylim=(-0.2, len(ran[-1]["facts"]) + 0.2))
    facts.set(yscale="log", ylabel="answer bits per byte", title="facts planted in month 1, current model")
    colours = {"ok": "tab:green", "rejected": "tab:red", "skipped": "tab:gray", "failed": "k", "refused": "k"}
    for status, colour in colours.items():
        chosen = [r for r in ran if r["status"] == status]
        if chosen:
            gate.scatter(
                [r["night"] for r in chosen],
                [max(1, r["new_bytes"]) for r in chosen],
                s=8,
                color=colour,
                label={"ok": "promoted"}.get(status, status),
            )
    gate.set(yscale="log", ylabel="new bytes", title="the gate's decisions")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("night")
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engram-ff bench year", description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=365)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every day's message count")
    parser.add_argument(
        "--stop-after", type=int, metavar="N", help="run only the first N nights of the --nights calendar"
    )
    parser.add_argument("--preset", default="daemon", choices=list(PRESETS))
    parser.add_argument("--batch-size", type=int, default=Config.batch_size)
    parser.add_argument("--seq-len", type=int, default=Config.seq_len)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the machine's 2 cores)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: 14 nights, days at 5 %% of their size, the tiny model, batch 4 x 64, one thread",
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", help="name of the result files (default: year, or year-quick)")
    parser.add_argument(
        "--dir",
        type=Path,
        help="keep the year's folder (Engram files, database, checkpoints, one record a night) here; run again "
        "with the same DIR and settings to carry on after the last night recorded (default: a temporary folder)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parse_args(parser, argv, QUICK)
    if args.nights < 3:
        parser.error("--nights must be at least 3: the facts are planted on night 3")
    args.argv, args.parser = ["engram-ff bench year", *argv], parser
    stem = args.stem or ("year-quick" if args.quick else "year")
    if args.dir is None:
        with tempfile.TemporaryDirectory(prefix="engram-year-") as tmp:
            records, meta = run_year(args, Path(tmp) / "year")
    else:
        records, meta = run_year(args, args.dir)
    write_result(f"{stem}.json", json.dumps({"meta": meta, "nights": records}), args.results)
    figure = plot(args.results / f"{stem}.png", records)
    print(write_result(f"{stem}.md", report(records, meta, figure), args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
