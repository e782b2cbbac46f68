"""The command handlers behind daemon/cli.py: each turns parsed flags into one API call and prints.

Every handler returns an exit code; an expected failure (bad configuration, a second daemon, a bad
checkpoint) prints one clear line on stderr and returns 1 or 2, never a traceback.
"""

from __future__ import annotations

import sqlite3
import sys

from engram_ff.daemon.config import Config, ConfigError, config_from_args
from engram_ff.daemon.lock import AlreadyRunning, DataDirLock
from engram_ff.daemon.logs import setup_logging

DEMO_BUDGET_MINUTES = 2.0


def _fail(message: str, code: int = 1) -> int:
    print(f"engram-ff: {message}", file=sys.stderr)
    return code


def _config(args) -> Config:
    config = config_from_args(args)
    setup_logging(config.log_level)
    return config


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def run(args) -> int:
    from engram_ff.daemon.service import Service

    try:
        config = _config(args)
        if args.demo:  # a newcomer waits for the first update: keep it short
            config.update_budget_minutes = min(config.update_budget_minutes, DEMO_BUDGET_MINUTES)
        service = Service(config, lambda: config_from_args(args), demo=args.demo)
        return service.run()
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    except AlreadyRunning as exc:
        return _fail(str(exc))


def update(args) -> int:
    from engram_ff.daemon.update import EXIT_CODES, update_and_probe

    try:
        config = _config(args)
        with DataDirLock(config.lock_path):
            row = update_and_probe(config)
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    except AlreadyRunning as exc:
        return _fail(f"{exc} (the running daemon does the updates)")
    print(
        _table(
            [row],
            [
                "id",
                "status",
                "new_bytes",
                "replay_bytes",
                "steps",
                "wall_seconds",
                "peak_rss_mb",
                "checkpoint_id",
                "error",
            ],
        )
    )
    return EXIT_CODES.get(row["status"], 1)


def probe(args) -> int:
    from engram_ff.daemon.update import run_probes

    try:
        config = _config(args)
        rows = run_probes(config)
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    if not rows:
        return _fail("no trained checkpoint yet: run `engram-ff update` first")
    print(probe_table(rows))
    return 0


def probe_table(rows: list[dict]) -> str:
    return _table([{**r, "value": f"{r['value']:.4f}"} for r in rows], ["probe", "kind", "day", "metric", "value"])


def config(args) -> int:
    try:
        print(config_from_args(args).as_toml(), end="")
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    return 0


def history(args) -> int:
    from engram_ff.daemon.history import plot_history, recent_history
    from engram_ff.state.db import open_db

    try:
        config = _config(args)
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    db = open_db(config.db_path)
    rows = recent_history(db, args.limit)
    print(_table(rows, list(rows[0]) if rows else ["run", "checkpoint", "recorded_at"]))
    if args.plot:
        plot_history(db, args.plot)
        print(f"wrote {args.plot}")
    return 0


def install_service(args) -> int:
    from engram_ff.daemon.install import install_unit

    try:
        path = install_unit(
            user=args.user, output=args.output, watch=args.watch, data=args.data, config_file=args.config
        )
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    scope = "--user " if args.user else ""
    print(f"wrote {path}\nnext: systemctl {scope}daemon-reload && systemctl {scope}enable --now engram-ff")
    return 0


def generate(args) -> int:
    import torch

    from engram_ff.model.checkpoint import CheckpointError, load_model
    from engram_ff.model.generate import generate as stream

    try:
        model, _ = load_model(args.checkpoint)
    except CheckpointError as exc:
        return _fail(str(exc))
    if args.bytes < 0:
        return _fail(f"--bytes must be >= 0, not {args.bytes}", 2)
    out = sys.stdout.buffer
    out.write(args.prompt.encode())
    for byte in stream(
        model, args.prompt.encode(), args.bytes, args.temperature, torch.Generator().manual_seed(args.seed)
    ):
        out.write(byte)
        out.flush()
    out.write(b"\n")
    out.flush()
    return 0


def ingest(args) -> int:
    from engram_ff.ingest.reader import Limits, catch_up
    from engram_ff.state.db import open_db

    try:
        config = _config(args)
        with DataDirLock(config.lock_path):
            if not config.watch.is_dir():
                return _fail(f"watch folder {config.watch} does not exist")
            stats = catch_up(
                open_db(config.db_path),
                config.watch,
                limits=Limits.of(config),
            )
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    except sqlite3.DatabaseError as exc:  # a full disk (ENOSPC, or EFBIG past a size limit), a lock held too long
        return _fail(
            f"ingest stopped: the database refused a write ({exc}; is the disk full?). Every line "
            "stored before is kept: run it again once there is space"
        )
    except AlreadyRunning as exc:
        return _fail(f"{exc} (the running daemon ingests as files change)")
    print(
        f"{config.watch}: {stats.files} files, {stats.lines} lines read: {stats.messages} new messages, "
        f"{stats.events} events, {stats.skipped} skipped, {stats.duplicates} already stored, "
        f"{stats.quarantined} quarantined, {stats.errors} files unreadable"
    )
    return 1 if stats.errors else 0


def status(args) -> int:
    from engram_ff.state import queries
    from engram_ff.state.db import open_db

    try:
        config = _config(args)
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    if not config.db_path.exists():
        return _fail(f"no database at {config.db_path} yet: run `engram-ff ingest` or `engram-ff run`")
    db = open_db(config.db_path)
    print(f"database {config.db_path}, watching {config.watch}\n")
    print(
        _table(
            queries.files(db),
            ["path", "size", "committed_offset", "pending", "generation", "messages", "last_seen", "error"],
        )
    )
    print()
    print(_table(queries.day_splits(db), ["day", "split", "messages", "bytes"]))
    events = queries.event_counts(db)
    if events:
        print()
        print(_table(events, ["day", "type", "action", "count"]))
    counts = queries.counts(db)
    print(f"\n{counts['quarantine']} quarantined lines" + (", the latest:" if counts["quarantine"] else ""))
    if counts["quarantine"]:
        print(_table(queries.quarantine(db, 5), ["path", "line_offset", "length", "reason"]))
    if db["runs"].exists():
        print("\nlast update:")
        print(
            _table(
                queries.latest(db, "runs", "kind = 'update'"),
                ["id", "status", "started_at", "ended_at", "new_bytes", "steps", "error"],
            )
        )
    if db["checkpoints"].exists():
        print("\ncurrent checkpoint:")
        print(
            _table(
                queries.latest(db, "checkpoints", "kind = 'final' AND status = 'good'"),
                ["id", "run_id", "path", "steps", "created_at"],
            )
        )
    return 0
