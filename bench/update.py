"""`engram-ff bench update`: one nightly update over 1 MiB of new text, and the idle daemon's cost;
with --backlog-gb, instead the update after a backlog of new text (bench/backlog.py); with --compare,
instead the same update under several settings side by side: what a night affords on this machine.

Part 1 writes a day of Engram logs whose train split holds 1 MiB of text (TinyShakespeare, then the
plays), ingests it and runs exactly the daemon's update (`python -m engram_ff.daemon.child`, the child the
daemon starts at night) with the default configuration: wall time, steps, peak RSS of the update
process, then the probes.
Part 2 starts `engram-ff run` on that data (the update done, so no catch-up runs) and samples its
CPU time and RSS from /proc while it idles.

    engram-ff bench update --compare model_preset=daemon --compare model_preset=large --bytes 262144

--compare runs part 1 once per setting (configuration keys as key=value,...), each in a fresh process
and folder so that its peak RSS is its own, and tabulates train bytes/s, ranks and held-out bits per byte.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from engram_ff.bench.common import DATA, markdown_table, write_result
from engram_ff.bench.make_stream import PLAYS, day_lines, play_speeches, tiny_speeches, write_day
from engram_ff.daemon.config import ENV_PREFIX, ConfigError, load_config

MIB = 1 << 20


def make_day(watch: Path, n_bytes: int) -> int:
    """Speeches of TinyShakespeare, then of the plays, until their text reaches n_bytes (TinyShakespeare
    alone holds about 1.06 MB of speech); returns the text bytes written."""
    texts = [tiny_speeches((DATA / "tinyshakespeare.txt").read_text())]
    texts += [play_speeches((DATA / "plays" / f"{name}.txt").read_text()) for name in PLAYS]
    speeches, size = [], 0
    for speech in (s for text in texts for s in text):
        speeches.append(speech)
        size += len(speech[1]) + len(speech[2]) + 3
        if size >= n_bytes:
            break
    write_day(watch / "raw", date(2026, 1, 1), day_lines(date(2026, 1, 1), speeches, "tinyshakespeare"))
    return size


def parse_setting(text: str) -> dict[str, str]:
    """`key=value,...` over configuration keys, as the update reads them from ENGRAM_FF_* variables."""
    pairs = [item.partition("=") for item in filter(None, text.split(","))]
    if not pairs or any(not key or not sep or not value for key, sep, value in pairs):
        raise SystemExit(f"--compare: expected key=value,... over configuration keys, got {text!r}")
    return {key.strip(): value.strip() for key, _, value in pairs}


def setting_environ(settings: dict[str, str]) -> dict[str, str]:
    """The ENGRAM_FF_* variables that carry settings to the update."""
    return {ENV_PREFIX + key.upper(): value for key, value in settings.items()}


def check_setting(text: str) -> None:
    """Stop, naming the key, on a setting the update would refuse."""
    try:
        load_config(environ=setting_environ(parse_setting(text)))
    except ConfigError as exc:
        raise SystemExit(f"--compare {text}: {exc}") from None


def measure_update(tmp: Path, n_bytes: int, settings: dict[str, str]) -> tuple[dict, dict]:
    """Write a day of n_bytes of text into tmp, ingest it and run the daemon's update under settings:
    (the environment it ran with, its figures)."""
    watch, data = tmp / "engram", tmp / "data"
    text_bytes = make_day(watch, int(n_bytes / 0.85))  # about a tenth of the messages go to the probe split
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_FF_")}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the daemon's child gets it
    env.update(ENGRAM_FF_WATCH_DIR=str(watch), ENGRAM_FF_DATA_DIR=str(data))
    env.update(setting_environ(settings))
    effective = load_config(environ=env)  # a bad key or value stops here, with the config's own message
    subprocess.run([sys.executable, "-m", "engram_ff.daemon.cli", "ingest"], env=env, check=True, capture_output=True)
    wall, peak, code = run_update(env)
    import sqlite3

    db = sqlite3.connect(data / "engram-ff.db")
    db.row_factory = sqlite3.Row
    run = dict(db.execute("SELECT * FROM runs WHERE kind = 'update'").fetchone())
    probe = dict(db.execute("SELECT * FROM runs WHERE kind = 'probe'").fetchone() or {})
    scores = {
        r["metric"]: r["value"]
        for r in db.execute("SELECT metric, avg(value) AS value FROM probe_scores WHERE kind != 'fact' GROUP BY metric")
    }
    db.close()
    from engram_ff.daemon.ranks import resolve_workers

    figures = dict(
        run=run,
        probe=probe,
        scores=scores,
        text_bytes=text_bytes,
        wall=wall,
        peak_mib=peak,
        exit=code,
        step_bytes=effective.batch_size * effective.seq_len,
        ranks=resolve_workers(effective),
    )
    return env, figures


def train_bytes_per_s(figures: dict) -> float:
    """The update's trained bytes over its wall time less its probe pass (the gate's)."""
    run, probe = figures["run"], figures["probe"]
    return run["steps"] * figures["step_bytes"] / (run["wall_seconds"] - (probe.get("wall_seconds") or 0))


def run_update(env: dict) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MiB of the child, exit code)"""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "engram_ff.daemon.child"], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-3000:])
    return wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, proc.returncode


def proc_sample(pid: int) -> tuple[float, float]:
    """(CPU seconds used so far, RSS MiB) of pid and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss_kib = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS")
    )
    return cpu, rss_kib / 1024


def measure_idle(env: dict, seconds: float) -> tuple[float, float]:
    """(CPU percent, peak RSS MiB) of the running daemon over `seconds` after it is ready."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "engram_ff.daemon.cli", "run"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(10)  # start-up scan and imports done
        cpu0, _ = proc_sample(proc.pid)
        peak, start = 0.0, time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(1)
            peak = max(peak, proc_sample(proc.pid)[1])
        cpu1, _ = proc_sample(proc.pid)
        return 100 * (cpu1 - cpu0) / (time.monotonic() - start), peak
    finally:
        proc.terminate()
        proc.wait(60)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engram-ff bench update", description=__doc__.split("\n")[0])
    parser.add_argument("--bytes", type=int, default=MIB, help="new text in the update (default 1 MiB)")
    parser.add_argument("--idle-seconds", type=float, default=120)
    parser.add_argument("--quick", action="store_true", help="64 KiB, a one-minute budget, 20 s idle")
    parser.add_argument(
        "--out", type=Path, default=None, help="results file (default bench/results/update.md, or update-compare.md)"
    )
    parser.add_argument(
        "--compare",
        action="append",
        metavar="KEY=VALUE,...",
        help="instead: part 1 under each setting (repeatable), e.g. --compare model_preset=large,workers=1",
    )
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)  # --compare's child writes its figures here
    parser.add_argument("--compare-one", help=argparse.SUPPRESS)  # and runs under this setting
    backlog = parser.add_argument_group("backlog", "instead: the update after a backlog (bench/backlog.py)")
    backlog.add_argument("--backlog-gb", metavar="SIZES", help="comma-separated backlogs of new text, e.g. 0.1,1")
    backlog.add_argument("--budget-minutes", type=float, default=2.0, help="the update's training budget")
    backlog.add_argument("--fact-prompt-mb", type=float, default=5.0, help="the prompt of a fourth fact probe")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.backlog_gb:
        return _backlog(args)
    if args.compare:
        return _compare(args)
    n_bytes, idle = (64 * 1024, 20.0) if args.quick else (args.bytes, args.idle_seconds)
    settings = {"update_budget_minutes": "1"} if args.quick else {}
    if args.json:  # a --compare child: part 1 under one setting
        settings.update(parse_setting(args.compare_one))
    with tempfile.TemporaryDirectory() as tmp:
        env, figures = measure_update(Path(tmp), n_bytes, settings)
        if args.json:
            args.json.write_text(json.dumps(figures))
            return 0
        idle_cpu, idle_rss = measure_idle(env, idle)
    run, probe, scores, text_bytes = figures["run"], figures["probe"], figures["scores"], figures["text_bytes"]
    wall, peak, code = figures["wall"], figures["peak_mib"], figures["exit"]

    config = "defaults" if not args.quick else "defaults, budget 1 min (--quick)"
    rows = [
        [
            "new text",
            f"{run['new_bytes'] / MIB:.2f} MiB of train split ({text_bytes:,} bytes of speeches ingested)",
            "1 MiB",
        ],
        ["update wall time, with probes", f"{wall / 60:.1f} min (exit {code})", "<= 15 min"],
        ["training steps", f"{run['steps']}", ""],
        ["trained bytes per second", f"{train_bytes_per_s(figures):,.0f}", ""],
        ["update peak RSS", f"{peak:,.0f} MiB", "<= 2048 MiB"],
        ["held-out bits per byte after the update", f"{scores.get('probe_bpb', float('nan')):.3f}", ""],
        ["idle daemon CPU", f"{idle_cpu:.2f} % over {idle:.0f} s", "< 1 %"],
        ["idle daemon RSS", f"{idle_rss:,.0f} MiB", "< 300 MiB"],
    ]
    table = markdown_table(["measure", "value", "target"], rows)
    print(table)
    header = (
        f"# Nightly update benchmark\n\n`engram-ff bench update{' --quick' if args.quick else ''}` on "
        f"{os.cpu_count()} cores, configuration: {config}; final per-layer losses "
        f"{run['layer_losses']}; probe pass {probe.get('wall_seconds') or '-'} s.\n\n"
    )
    path = args.out or Path(__file__).resolve().parent / "results" / ("update-quick.md" if args.quick else "update.md")
    write_result(path.name, header + table, path.parent)
    print(f"wrote {path}")
    return 0


def _compare(args) -> int:
    """--compare: part 1 once per setting, each in a child process of its own (its own peak RSS)."""
    import torch

    rows = []
    for text in args.compare:
        check_setting(text)  # a typo stops the run before any update starts
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "figures.json"
            argv = ["--bytes", str(args.bytes), "--json", str(out), "--compare-one", text]
            child = subprocess.run([sys.executable, "-m", "engram_ff.bench.update", *argv])
            if child.returncode != 0 or not out.exists():
                print(f"{text}: the update failed (exit {child.returncode})", file=sys.stderr)
                return 1
            figures = json.loads(out.read_text())
        run = figures["run"]
        speed = train_bytes_per_s(figures)
        rows.append(
            [
                text,
                figures["ranks"],
                run["steps"],
                f"{figures['wall']:.0f}",
                f"{speed:,.0f}",
                f"{speed * 7 * 3600 / 1e6:,.0f}",
                f"{figures['peak_mib']:,.0f}",
                f"{figures['scores'].get('probe_bpb', float('nan')):.3f}",
            ]
        )
        print(f"  {text}: {rows[-1][4]} bytes/s on {figures['ranks']} ranks, {rows[-1][3]} s", flush=True)
    headers = ["setting", "ranks", "steps", "update wall s", "train bytes/s", "MB a 7-hour window trains"]
    table = markdown_table([*headers, "peak RSS MiB", "held-out bpb after"], rows)
    print(table)
    compared = " ".join(f"--compare {c}" for c in args.compare)
    command = f"engram-ff bench update --bytes {args.bytes} {compared}"
    header = (
        f"# What a night affords: one update under several settings\n\n`{command}` on "
        f"{os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), torch {torch.__version__}. Each row is the "
        "daemon's own update (`python -m engram_ff.daemon.child`) over the same day of text, in a fresh folder; "
        "train bytes/s leaves out the gate's probe pass.\n\n"
    )
    path = args.out or Path(__file__).resolve().parent / "results" / "update-compare.md"
    write_result(path.name, header + table, path.parent)
    print(f"wrote {path}")
    return 0


def _backlog(args) -> int:
    """--backlog-gb: with --quick, a half-minute budget and a 0.5 MB fact prompt, into update-backlog-quick.md."""
    from engram_ff.bench import backlog

    sizes = [float(size) for size in args.backlog_gb.split(",")]
    budget, prompt_mb = (0.5, 0.5) if args.quick else (args.budget_minutes, args.fact_prompt_mb)
    name = "update-backlog-quick.md" if args.quick else "update-backlog.md"
    return backlog.run(sizes, budget, prompt_mb, args.out or Path(__file__).resolve().parent / "results" / name)


if __name__ == "__main__":
    raise SystemExit(main())
