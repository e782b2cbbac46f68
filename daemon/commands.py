"""The command handlers behind daemon/cli.py: each turns parsed flags into one API call and prints.

Every handler returns an exit code; an expected failure (bad configuration, a second daemon, a bad
checkpoint) prints one clear line on stderr and returns 1 or 2, never a traceback.
"""
from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

from daemon.config import Config, ConfigError, config_from_args
from daemon.lock import AlreadyRunning, DataDirLock
from daemon.logs import setup_logging


def _fail(message: str, code: int = 1) -> int:
    print(f"engram-ff: {message}", file=sys.stderr)
    return code


def _config(args) -> Config:
    config = config_from_args(args)
    setup_logging(config.log_level)
    return config


def _table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def run(args) -> int:
    from daemon.service import Service

    try:
        config = _config(args)
        service = Service(config, lambda: config_from_args(args), demo=args.demo)
        return service.run()
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    except AlreadyRunning as exc:
        return _fail(str(exc))


def update(args) -> int:
    from daemon.update import EXIT_CODES, update_and_probe

    try:
        config = _config(args)
        with DataDirLock(config.lock_path):
            row = update_and_probe(config)
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    except AlreadyRunning as exc:
        return _fail(f"{exc} (the running daemon does the updates)")
    print(_table([row], ["id", "status", "new_bytes", "replay_bytes", "steps", "wall_seconds",
                         "peak_rss_mb", "checkpoint_id", "error"]))
    return EXIT_CODES.get(row["status"], 1)


def probe(args) -> int:
    from daemon.update import run_probes

    try:
        config = _config(args)
        rows = run_probes(config)
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    if not rows:
        return _fail("no trained checkpoint yet: run `engram-ff update` first")
    print(_table([{**r, "value": f"{r['value']:.4f}"} for r in rows], ["probe", "kind", "day", "metric", "value"]))
    return 0


def config(args) -> int:
    try:
        print(config_from_args(args).as_toml(), end="")
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    return 0


def history(args) -> int:
    from daemon.history import plot_history, recent_history
    from state.db import open_db

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
    from daemon.install import install_unit

    try:
        path = install_unit(user=args.user, output=args.output, watch=args.watch, data=args.data,
                            config_file=args.config)
    except (OSError, ValueError) as exc:
        return _fail(str(exc))
    scope = "--user " if args.user else ""
    print(f"wrote {path}\nnext: systemctl {scope}daemon-reload && systemctl {scope}enable --now engram-ff")
    return 0
