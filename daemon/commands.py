"""The commands of `engram-ff`, each a thin layer over one API call: parse nothing, call, print.

Each is registered with `@command` (daemon/options.py) and returns an exit code. Failures a user can
act on raise ConfigError, AlreadyRunning or UserError, which daemon/cli.py prints as one line. Heavy
modules (torch, the watcher) are imported inside the command that needs them, so `--help` is instant.

Conventions: a command that only reads (status, history, learned, probe, ask, generate) opens an
existing database and never creates one, so a mistyped --data is an error, not a new empty database;
numbers are rounded for people and `--json` gives scripts the stored values.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys

from engram_ff.daemon.config import Config, config_from_args, with_remembered
from engram_ff.daemon.errors import UserError, database_errors, database_problem
from engram_ff.daemon.gate import alarm, gate_line
from engram_ff.daemon.lock import AlreadyRunning, DataDirLock
from engram_ff.daemon.logs import setup_logging
from engram_ff.daemon.options import command, data_options, json_option, location_options, option
from engram_ff.daemon.output import (
    as_json,
    duration,
    moment,
    printable,
    probe_table,
    run_name,
    size,
    suggest,
    table,
)

ASK_SAMPLING_TEMPERATURE = 0.8
# An answer is one turn of a chat; 100,000,000 bytes ran for over 25 minutes (issue #20.8). `generate`
# streams longer text, and shows it as it comes.
ASK_MAX_BYTES = 10_000


def _config(args, origins: dict[str, str] | None = None) -> Config:
    """The effective configuration, with what the data directory remembers (its watch folder; the demo's
    facts) where no flag, variable or file says otherwise."""
    config = config_from_args(args, origins)
    setup_logging(config.log_level)
    if config.data_dir.is_file():  # `--data …/engram-ff.db`: nothing may be created beside it, or over it
        raise UserError(
            f"{config.data_dir} is a file: --data takes the data directory that holds engram-ff.db, "
            f"e.g. --data {config.data_dir.parent}",
            2,
        )
    return with_remembered(config, origins)


def _database(config: Config, args):
    """The data directory's database, for a command that must not create one."""
    from engram_ff.daemon.demo import demo_data_dir
    from engram_ff.state.db import NoDatabase, open_existing

    try:
        with database_errors(config.db_path):
            return open_existing(config.db_path)
    except NoDatabase:
        demo = demo_data_dir()
        if args.data is None and config.data_dir != demo and (demo / "engram-ff.db").is_file():
            raise UserError(
                f"no engram-ff database in {config.data_dir} (the default data directory); the demo's data is "
                f"in {demo}: add `--data {demo}`"
            ) from None
        raise UserError(
            f"no engram-ff database in {config.data_dir}: check --data, or start with "
            f"{suggest('ingest --watch DIR', args.data)} or {suggest('run --watch DIR', args.data)}"
        ) from None


def _temperature(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 (greedy) or more, not {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


@command(
    "run",
    help="run the daemon: watch, ingest, update nightly, probe",
    example="engram-ff run --watch ~/engram --data /srv/engram-ff",
)
@location_options
@option(
    "--demo",
    action="store_true",
    help="a demo in its own data directory (~/.local/share/engram-ff-demo unless --data): three bundled days "
    "of logs, one short update at once",
)
def run(args) -> int:
    from engram_ff.daemon.demo import demo_config
    from engram_ff.daemon.service import Service

    config = _config(args)
    if not args.demo:
        return Service(config, lambda: with_remembered(config_from_args(args))).run()
    if args.watch:
        raise UserError("the demo watches a folder of its own: run it without --watch", 2)
    given = args.data is not None
    return Service(
        demo_config(config, data_given=given), lambda: demo_config(config_from_args(args), data_given=given), demo=True
    ).run()


class _StopOnSignal:
    """Ctrl-C (SIGINT) or SIGTERM asks the update to stop at its next step and save a partial checkpoint;
    a second one gives up at once (KeyboardInterrupt), and any after it is ignored while the update marks
    its run interrupted and ends its helper ranks, which takes a few seconds at most."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def _on_signal(self, signum, frame) -> None:
        if not self.requested:
            self.requested = True
            return
        for sig in self._previous:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _catch_up(config: Config):
    """One pass over the watch folder into the database (the caller holds the data directory's lock), and
    the folder remembered for the next command. Returns catch_up's counts."""
    from engram_ff.ingest.reader import Limits, catch_up
    from engram_ff.state.db import open_db
    from engram_ff.state.queries import remember

    try:
        db = open_db(config.db_path)
        try:
            remember(db, "watch_dir", str(config.watch))
            return catch_up(db, config.watch, limits=Limits.of(config))
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:  # a full disk (ENOSPC, or EFBIG past a size limit), a lock held too long
        said = str(exc)
        if not any(word in said for word in ("full", "I/O error")):  # read-only, locked: errors.py says what to do
            raise UserError(f"ingest stopped: {database_problem(exc, config.db_path)}") from None
        raise UserError(
            f"ingest stopped: the database refused a write ({exc}; is the disk full?). Every line "
            "stored before is kept: run it again once there is space"
        ) from None


def _ingest_sentence(config: Config, stats) -> str:
    return (
        f"{printable(str(config.watch))}: {stats.files} files, {stats.lines} lines read: {stats.messages} new "
        f"messages, {stats.events} events, {stats.skipped} skipped, {stats.duplicates} already stored, "
        f"{stats.quarantined} quarantined, {stats.errors} files unreadable"
    )


@command(
    "update",
    help="read what the watch folder holds, then run one nightly update now",
    example="engram-ff update --data ~/.local/share/engram-ff",
)
@location_options
@option(
    "--from-scratch",
    action="store_true",
    help="where no checkpoint of the trained model loads: start a new model on every message stored",
)
@json_option
def update(args) -> int:
    from engram_ff.daemon import ranks
    from engram_ff.daemon.progress import for_this_process
    from engram_ff.daemon.update import EXIT_CODES, run_update

    team = ranks.Team.torchrun()  # None unless torchrun started this process as one of several ranks
    if team is not None and team.rank > 0:
        try:
            return team.follow()
        except ranks.RankFailed as exc:
            raise UserError(str(exc)) from None
    config = _config(args)
    if args.watch and not config.watch.is_dir():
        raise UserError(f"watch folder {config.watch} does not exist: check --watch")
    if not (args.watch or config.db_path.is_file()):
        _database(config, args)  # says which directory has no database: nothing is created by a mistyped --data
    notes = sys.stderr if args.json else sys.stdout
    try:
        with DataDirLock(config.lock_path), _StopOnSignal() as stop:
            # no daemon runs (this holds its lock), so nothing ingests as files change: read the folder first
            if config.watch.is_dir():
                print(f"ingested {_ingest_sentence(config, _catch_up(config))}", file=notes, flush=True)
            else:
                print(f"watch folder {printable(str(config.watch))} does not exist: nothing read", file=notes)
            if stop.requested:
                raise UserError("stopped after reading the watch folder: nothing was trained", 130)
            with database_errors(config.db_path):
                row = run_update(
                    config,
                    should_stop=lambda: stop.requested,
                    progress=for_this_process(),
                    from_scratch=args.from_scratch,
                    team=team,
                )
    except KeyboardInterrupt:  # a second Ctrl-C: run_update marked its run interrupted on the way out
        raise UserError(
            "update given up at once (a second Ctrl-C): the next update resumes from its last partial checkpoint, "
            "if it wrote one",
            130,
        ) from None
    except AlreadyRunning as exc:
        raise UserError(f"{exc} (the running daemon ingests and does the updates)") from None
    finally:
        if team is not None:
            team.finish()
    if args.json:
        from engram_ff.state.runs import decoded

        print(as_json(decoded(row)))
    elif row["status"] == "interrupted":
        print(
            f"engram-ff: {run_name(row)} interrupted at step {row['steps'] or 0}: its partial checkpoint is "
            "saved and the next update resumes from it",
            file=sys.stderr,
        )
    else:
        print(_update_sentence(row))
        if stop.requested:  # the update itself finished; Ctrl-C came during its probes
            print(f"engram-ff: the probes were stopped; {suggest('probe', args.data)} runs them", file=sys.stderr)
    if not args.json:
        if row.get("gate"):
            print(f"gate: {gate_line(row)}")
        if row["status"] == "rejected":
            print(f"engram-ff: update {gate_line(row)}", file=sys.stderr)
        elif row["status"] == "refused":
            print(f"engram-ff: update refused: {row['error']}", file=sys.stderr)
    if row["status"] == "ok":  # over the new checkpoint: the night's held-out slice, as the daemon does after it
        _learn_by_day(config, notes)
    return EXIT_CODES.get(row["status"], 1)


def _learn_by_day(config: Config, out) -> None:
    """What the daemon's by-day child does (daemon/today.py), for a data directory no daemon runs on: one line
    of what the memory learned, or why it could not (the messages are stored; the next call learns them)."""
    from engram_ff.daemon.today import NOT_LEARNED, learn_now

    try:
        learned = learn_now(config)
    except NOT_LEARNED as exc:
        print(
            f"engram-ff: not learned by day ({exc}); the messages are stored, and the next call learns them",
            file=sys.stderr,
        )
        return
    if learned is not None and learned.refused:
        print(
            f"not kept by day: {size(learned.new_bytes)}, {learned.refused}; the night learns it, under the gate",
            file=out,
        )
    elif learned is not None and learned.new_bytes:
        print(
            f"learned by day: {size(learned.new_bytes)} at {learned.bpb:.3f} bits per byte before learning it",
            file=out,
        )


def _update_sentence(row: dict) -> str:
    words = f"{run_name(row)} {row['status']}"
    if row["status"] in ("ok", "rejected"):
        words += (
            f": {size(row['new_bytes'])} new and {size(row['replay_bytes'])} replayed, {row['steps']:,} steps in "
            f"{duration(row['wall_seconds'])}, peak memory {row['peak_rss_mb']:,.0f} MiB, "
            f"checkpoint {row['checkpoint_id']}"
        )
    if row["error"]:
        words += f": {row['error']}"
    return printable(words)


@command("probe", help="run the retention, forgetting and fact probes now", example="engram-ff probe")
@data_options
@json_option
def probe(args) -> int:
    from engram_ff.daemon.update import run_probes

    config = _config(args)
    _database(config, args).close()
    with database_errors(config.db_path):
        rows = run_probes(config)
    if not rows:
        raise UserError(f"no trained checkpoint yet: run {suggest('update', args.data)} first")
    print(as_json(rows) if args.json else probe_table(rows))
    return 0


@command("config", help="print the effective configuration", example="engram-ff config --show-origin")
@location_options
@option("--show-origin", action="store_true", help="say where each value came from, as `git config --show-origin`")
def config(args) -> int:
    origins: dict[str, str] = {}
    effective = _config(args, origins)
    print(effective.as_toml(origins if args.show_origin else None), end="")
    return 0


@command(
    "history", help="recent probe history as a table, and a plot", example="engram-ff history --limit 30 --plot h.png"
)
@data_options
@option("--limit", type=_positive, default=20, metavar="N", help="how many recent probe passes (default 20)")
@option("--plot", metavar="FILE.png", help="also draw held-out text, facts and nightly updates over dates")
@json_option
def history(args) -> int:
    from pathlib import Path

    from engram_ff.daemon.history import plot_format, plot_history, recent_history

    config = _config(args)
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        raise UserError(f"cannot write {args.plot}: the folder {Path(args.plot).resolve().parent} does not exist")
    if args.plot:
        try:
            plot_format(args.plot)
        except ValueError as exc:
            raise UserError(f"cannot write {args.plot}: {exc}", 2) from None
    db = _database(config, args)
    rows = recent_history(db, args.limit)
    if args.json:
        print(as_json(rows))
    elif rows:
        print("bits per byte, lower is better; forgetting > 0: older days got worse; bwt > 0: later nights helped them")
        shown = [{"when": moment(r["recorded_at"]), **r} for r in rows]
        print(table(shown, ["when", *(c for c in rows[0] if c != "recorded_at")]))
    else:
        print(f"no probe passes yet: {suggest('update', args.data)} trains and probes")
    if not args.json and (loud := alarm(db)):
        print(f"WARNING: {loud}")
    if args.plot:
        if not rows:
            raise UserError("nothing to plot yet: no probe pass")
        try:
            plot_history(db, args.plot)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot write {args.plot}: {getattr(exc, 'strerror', None) or exc}") from None
        if not args.json:
            print(f"wrote {args.plot}" + ("" if Path(args.plot).suffix else " (a PNG picture)"))
    return 0


@command("learned", help="what the last night's update learned", example="engram-ff learned")
@data_options
@json_option
def learned(args) -> int:
    from engram_ff.daemon import learned as last_night

    facts = last_night.gather(_database(_config(args), args))
    print(as_json(facts) if args.json else last_night.render(facts, data=args.data))
    return 0


@command(
    "ask",
    help="ask the current model a question and print its answer",
    example='engram-ff ask "Who is Victor?"',
)
@option("question", help="what to ask, as you would write it in the chat")
@data_options
@option(
    "--sample",
    action="store_true",
    help=f"sample the answer at temperature {ASK_SAMPLING_TEMPERATURE} (default: greedy, the likeliest byte each time)",
)
@option("--temperature", type=_temperature, metavar="T", help="sample at this temperature (0: greedy)")
@option("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
@option(
    "--bytes",
    type=_positive,
    default=400,
    metavar="N",
    help=f"the longest answer, in bytes (default 400, at most {ASK_MAX_BYTES:,})",
)
@option("--show-prompt", action="store_true", help="print the text the model is given before its answer")
@option("--checkpoint", metavar="PATH", help="ask this checkpoint file instead of the current model")
def ask(args) -> int:
    import torch

    from engram_ff.daemon import ask as asking

    if args.bytes > ASK_MAX_BYTES:
        raise UserError(
            f"--bytes {args.bytes:,}: an answer is at most {ASK_MAX_BYTES:,} bytes; `engram-ff generate` streams "
            "longer text",
            2,
        )
    config = _config(args)
    db = _database(config, args)
    model = _model(db, args.checkpoint, config, args)
    who = asking.voices(db)
    prompt = asking.prompt(args.question, who)
    temperature = (
        args.temperature if args.temperature is not None else (ASK_SAMPLING_TEMPERATURE if args.sample else 0.0)
    )
    noise = torch.Generator().manual_seed(args.seed)
    answer = asking.answer(model, prompt, who, max_bytes=args.bytes, temperature=temperature, generator=noise)
    shown = (prompt if args.show_prompt else b"") + answer
    for line in shown.decode("utf-8", "replace").split("\n"):
        print(printable(line))
    return 0


def _model(db, checkpoint: str | None, config: Config | None, args):
    """The model of a checkpoint file, or the current model of the data directory (db and config are
    read only then: `generate --checkpoint` has neither)."""
    from engram_ff.daemon.today import model_for_answers
    from engram_ff.model.checkpoint import CheckpointError, load_model

    if checkpoint:
        try:
            return load_model(checkpoint).model
        except CheckpointError as exc:
            raise UserError(str(exc)) from None
    assert config is not None, "a caller without a checkpoint passes its configuration"
    found = model_for_answers(db, config)  # the checkpoint, and what its memory has learned by day since
    if found is None:
        raise UserError(f"no trained model in {config.data_dir} yet: run {suggest('update', args.data)} first")
    return found[0]


@command(
    "generate",
    help="stream raw text from the current model (or a checkpoint), byte by byte",
    example="engram-ff generate --prompt 'user: Who is Victor?' --bytes 200",
)
@data_options
@option("--checkpoint", metavar="PATH", help="the checkpoint file to read (default: the current model of --data)")
@option("--prompt", default="", metavar="TEXT", help="text the model continues (default: none, a new line)")
@option("--bytes", type=int, default=300, metavar="N", help="how many bytes to generate (default 300)")
@option(
    "--temperature", type=_temperature, default=0.8, metavar="T", help="sampling temperature; 0 is greedy (default 0.8)"
)
@option("--seed", type=int, default=0, help="seed of the sampling noise (default 0)")
def generate(args) -> int:
    import torch

    from engram_ff.model.generate import generate as stream

    if args.bytes < 0:
        raise UserError(f"--bytes must be >= 0, not {args.bytes}", 2)
    if args.checkpoint:
        model = _model(None, args.checkpoint, None, args)
    else:
        config = _config(args)
        model = _model(_database(config, args), None, config, args)
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
    config = _config(args)
    if not config.watch.is_dir():
        raise UserError(f"watch folder {config.watch} does not exist: check --watch")
    try:
        with DataDirLock(config.lock_path):
            stats = _catch_up(config)
            print(_ingest_sentence(config, stats), flush=True)
            _learn_by_day(config, sys.stdout)
    except AlreadyRunning as exc:
        raise UserError(f"{exc} (the running daemon ingests as files change)") from None
    return 1 if stats.errors else 0


@command("status", help="is a daemon running, what was read, the model, the next update", example="engram-ff status")
@location_options
@option("--verbose", "-v", action="store_true", help="list every file, day and event, not only the newest")
@json_option
def status(args) -> int:
    from engram_ff.daemon import status as report

    config = _config(args)
    facts = report.gather(_database(config, args), config, verbose=args.verbose)
    print(as_json(facts) if args.json else report.render(facts, verbose=args.verbose, data=args.data))
    return 0


@command(
    "reset",
    help="remove a data directory's database and checkpoints (asks first)",
    example="engram-ff reset --data ~/.local/share/engram-ff-demo",
)
@location_options
@option("--yes", action="store_true", help="do not ask (for scripts)")
def reset(args) -> int:
    from engram_ff.daemon import reset as resetting

    config = _config(args)
    found = resetting.plan(config)
    if not found.ours:
        raise UserError(
            f"{config.data_dir} is not an engram-ff data directory (no engram-ff database, no checkpoint folder "
            "engram-ff made): nothing removed; check --data"
        )
    if not found.files:
        raise UserError(f"nothing to reset in {config.data_dir}: no engram-ff database or checkpoints there")
    try:
        with DataDirLock(config.lock_path):
            found = resetting.plan(config)  # again, now that no daemon can change it
            print(resetting.question(config, found))
            if not args.yes:
                if not sys.stdin.isatty():
                    raise UserError("reset asks before it removes anything; without a terminal, pass --yes", 2)
                if _answer("Type yes to remove them: ") != "yes":
                    print("nothing removed")
                    return 1
            resetting.remove(config, found)
    except AlreadyRunning as exc:
        raise UserError(f"{exc}; reset only a data directory no daemon uses") from None
    print(f"removed {len(found.files)} files from {config.data_dir}")
    return 0


def _answer(question: str) -> str:
    try:
        return input(question).strip().lower()
    except EOFError:  # stdin closed: no answer is no
        return ""


@command(
    "install-service",
    help="write the systemd unit for this installation",
    example="engram-ff install-service --user --watch ~/engram",
)
@option("--user", action="store_true", help="a unit for the user's own systemd manager")
@option("--output", metavar="PATH", help="where to write it; - for standard output (default: systemd's unit folder)")
@option("--force", action="store_true", help="replace a file at --output that engram-ff did not write")
@location_options
def install_service(args) -> int:
    from engram_ff.daemon.config import load_config
    from engram_ff.daemon.install import BadPath, NotOurs, Unreachable, install_unit, render_unit, unit_path

    # the configuration file's own watch folder and facts file must be reachable too; the installing
    # shell's environment is not the service's, so it is left out
    settings = load_config(args.config, environ={}, watch_dir=args.watch, data_dir=args.data)
    watch = args.watch or (str(settings.watch_dir) if settings.watch_dir else None)
    try:
        unit = render_unit(
            user=args.user,
            watch=watch,
            data=args.data,
            config_file=args.config,
            facts_file=str(settings.facts_file) if settings.facts_file else None,
        )
        if args.output == "-":
            sys.stdout.write(unit.text)
        else:
            path = unit_path(user=args.user, output=args.output)
            install_unit(unit, path, force=args.force)
    except (OSError, Unreachable, BadPath, NotOurs) as exc:
        raise UserError(str(exc)) from None
    notes = sys.stderr if args.output == "-" else sys.stdout
    if unit.bound:
        print(
            "bound read-only into the unit's sandbox (the rest of the home folders stays hidden): "
            + ", ".join(unit.bound),
            file=notes,
        )
    for note in unit.notes:
        print(f"note: {note}", file=notes)
    if args.output != "-":
        scope = "--user " if args.user else ""
        print(f"wrote {path}\nnext: systemctl {scope}daemon-reload && systemctl {scope}enable --now engram-ff")
    return 0


@command(
    "uninstall-service",
    help="remove the systemd unit install-service wrote (once disabled); the data stays",
    example="engram-ff uninstall-service --user",
)
@option("--user", action="store_true", help="the unit of the user's own systemd manager")
@option("--output", metavar="PATH", help="the unit file, if install-service wrote it elsewhere")
def uninstall_service(args) -> int:
    from engram_ff.daemon.install import StillEnabled, uninstall_unit, unit_path

    path = unit_path(user=args.user, output=args.output)
    scope = "--user " if args.user else ""
    try:
        uninstall_unit(path)
    except StillEnabled as exc:
        raise UserError(
            f"the service is still enabled ({exc}): first run systemctl {scope}disable --now engram-ff"
        ) from None
    except (OSError, ValueError) as exc:
        raise UserError(str(exc)) from None
    print(
        f"removed {path}\nnext: systemctl {scope}daemon-reload. The database and checkpoints stay where they are; "
        "`engram-ff reset` removes them"
    )
    return 0
