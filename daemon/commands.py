"""The commands of `engram-ff`, each a thin layer over one API call: parse nothing, call, print.

Each is registered with `@command` (daemon/options.py) and returns an exit code. Failures a user can
act on raise ConfigError, AlreadyRunning or UserError, which daemon/cli.py prints as one line. Heavy
modules (torch, the watcher) are imported inside the command that needs them, so `--help` is instant.
"""

from __future__ import annotations

import sqlite3
import sys

from engram_ff.daemon.config import Config, config_from_args
from engram_ff.daemon.errors import UserError
from engram_ff.daemon.lock import AlreadyRunning, DataDirLock
from engram_ff.daemon.logs import setup_logging
from engram_ff.daemon.options import command, location_options, option
from engram_ff.daemon.output import probe_table, table

DEMO_BUDGET_MINUTES = 2.0


def _config(args) -> Config:
    config = config_from_args(args)
    setup_logging(config.log_level)
    return config


@command(
    "run",
    help="run the daemon: watch, ingest, update nightly, probe",
    example="engram-ff run --watch ~/engram --data /srv/engram-ff",
)
@location_options
@option("--demo", action="store_true", help="seed the folder with a bundled sample and update at once")
def run(args) -> int:
    from engram_ff.daemon.service import Service

    config = _config(args)
    if args.demo:  # a newcomer waits for the first update: keep it short
        config.update_budget_minutes = min(config.update_budget_minutes, DEMO_BUDGET_MINUTES)
    return Service(config, lambda: config_from_args(args), demo=args.demo).run()


@command("update", help="run one nightly update now", example="engram-ff update --data ~/.local/share/engram-ff")
@location_options
def update(args) -> int:
    from engram_ff.daemon.update import EXIT_CODES, update_and_probe

    config = _config(args)
    try:
        with DataDirLock(config.lock_path):
            row = update_and_probe(config)
    except AlreadyRunning as exc:
        raise UserError(f"{exc} (the running daemon does the updates)") from None
    columns = [
        "id",
        "status",
        "new_bytes",
        "replay_bytes",
        "steps",
        "wall_seconds",
        "peak_rss_mb",
        "checkpoint_id",
        "error",
    ]
    print(table([row], columns))
    return EXIT_CODES.get(row["status"], 1)


@command("probe", help="run the retention, forgetting and fact probes now", example="engram-ff probe")
@location_options
def probe(args) -> int:
    from engram_ff.daemon.update import run_probes

    rows = run_probes(_config(args))
    if not rows:
        raise UserError("no trained checkpoint yet: run `engram-ff update` first")
    print(probe_table(rows))
    return 0


@command("config", help="print the effective configuration", example="engram-ff config --config engram-ff.toml")
@location_options
def config(args) -> int:
    print(config_from_args(args).as_toml(), end="")
    return 0


@command("history", help="recent probe history as a table", example="engram-ff history --limit 30 --plot h.png")
@location_options
@option("--limit", type=int, default=20, help="how many recent runs")
@option("--plot", metavar="FILE.png", help="also draw retention and forgetting per day")
def history(args) -> int:
    from engram_ff.daemon.history import plot_history, recent_history
    from engram_ff.state.db import open_db

    db = open_db(_config(args).db_path)
    rows = recent_history(db, args.limit)
    print(table(rows, list(rows[0]) if rows else ["run", "checkpoint", "recorded_at"]))
    if args.plot:
        plot_history(db, args.plot)
        print(f"wrote {args.plot}")
    return 0


@command(
    "install-service",
    help="write the systemd unit for this installation",
    example="engram-ff install-service --user --watch ~/engram",
)
@option("--user", action="store_true", help="a unit for the user's own systemd manager")
@option("--output", metavar="PATH", help="where to write it (default: systemd's unit folder)")
@location_options
def install_service(args) -> int:
    from engram_ff.daemon.install import install_unit

    try:
        path = install_unit(
            user=args.user, output=args.output, watch=args.watch, data=args.data, config_file=args.config
        )
    except (OSError, ValueError) as exc:
        raise UserError(str(exc)) from None
    scope = "--user " if args.user else ""
    print(f"wrote {path}\nnext: systemctl {scope}daemon-reload && systemctl {scope}enable --now engram-ff")
    return 0


@command(
    "generate",
    help="stream text from a checkpoint in recurrent mode",
    example="engram-ff generate --checkpoint model.pt --prompt 'user: Who is Victor?'",
)
@option("--checkpoint", required=True, metavar="PATH", help="the checkpoint file to read")
@option("--prompt", default="", metavar="TEXT", help="text the model continues")
@option("--bytes", type=int, default=300, metavar="N", help="how many bytes to generate")
@option("--temperature", type=float, default=0.8, metavar="T", help="sampling temperature; 0 is greedy")
@option("--seed", type=int, default=0, help="seed of the sampling noise")
def generate(args) -> int:
    import torch

    from engram_ff.model.checkpoint import CheckpointError, load_model
    from engram_ff.model.generate import generate as stream

    if args.bytes < 0:
        raise UserError(f"--bytes must be >= 0, not {args.bytes}", 2)
    try:
        model = load_model(args.checkpoint).model
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    out = sys.stdout.buffer
    out.write(args.prompt.encode())
    noise = torch.Generator().manual_seed(args.seed)
    for byte in stream(model, args.prompt.encode(), args.bytes, args.temperature, noise):
        out.write(byte)
        out.flush()
    out.write(b"\n")
    out.flush()
    return 0


@command("ingest", help="one catch-up pass over the watched folder", example="engram-ff ingest --watch ~/engram")
@location_options
def ingest(args) -> int:
    from engram_ff.ingest.reader import Limits, catch_up
    from engram_ff.state.db import open_db

    config = _config(args)
    try:
        with DataDirLock(config.lock_path):
            if not config.watch.is_dir():
                raise UserError(f"watch folder {config.watch} does not exist")
            stats = catch_up(open_db(config.db_path), config.watch, limits=Limits.of(config))
    except sqlite3.DatabaseError as exc:  # a full disk (ENOSPC, or EFBIG past a size limit), a lock held too long
        raise UserError(
            f"ingest stopped: the database refused a write ({exc}; is the disk full?). Every line "
            "stored before is kept: run it again once there is space"
        ) from None
    except AlreadyRunning as exc:
        raise UserError(f"{exc} (the running daemon ingests as files change)") from None
    print(
        f"{config.watch}: {stats.files} files, {stats.lines} lines read: {stats.messages} new messages, "
        f"{stats.events} events, {stats.skipped} skipped, {stats.duplicates} already stored, "
        f"{stats.quarantined} quarantined, {stats.errors} files unreadable"
    )
    return 1 if stats.errors else 0


@command("status", help="files, messages, quarantine, last update and checkpoint", example="engram-ff status")
@location_options
def status(args) -> int:
    from engram_ff.state import queries, runs
    from engram_ff.state.db import open_db

    config = _config(args)
    if not config.db_path.exists():
        raise UserError(f"no database at {config.db_path} yet: run `engram-ff ingest` or `engram-ff run`")
    db = open_db(config.db_path)
    print(f"database {config.db_path}, watching {config.watch}\n")
    columns = ["path", "size", "committed_offset", "pending", "generation", "messages", "last_seen", "error"]
    print(table(queries.files(db, queries.FILES_SHOWN), columns))
    totals = queries.file_totals(db)
    if totals["files"] > queries.FILES_SHOWN:
        print(
            f"(the {queries.FILES_SHOWN} most recently read of {totals['files']} files: {totals['messages']} "
            f"messages, {totals['pending']} bytes waiting for a newline, {totals['errors']} with errors)"
        )
    print()
    print(table(queries.day_splits(db), ["day", "split", "messages", "bytes"]))
    events = queries.event_counts(db)
    if events:
        print()
        print(table(events, ["day", "type", "action", "count"]))
    counts = queries.counts(db)
    print(f"\n{counts['quarantine']} quarantined lines" + (", the latest:" if counts["quarantine"] else ""))
    if counts["quarantine"]:
        print(table(queries.quarantine(db, 5), ["path", "line_offset", "length", "reason"]))
    if last := runs.last_update(db):
        print("\nlast update:")
        print(table([last], ["id", "status", "started_at", "ended_at", "new_bytes", "steps", "error"]))
    if current := runs.current_checkpoint(db):
        print("\ncurrent checkpoint:")
        print(table([current], ["id", "run_id", "path", "steps", "created_at"]))
    return 0
