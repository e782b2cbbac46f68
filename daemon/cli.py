"""`engram-ff`: the command line. It builds one argparse parser from the commands registered in
daemon/commands.py, runs the one asked for, and turns the failures a user can act on into one line
on stderr and an exit code (2 for bad configuration or usage, 1 otherwise, 130 for Ctrl-C), never a
traceback. A misused command answers with its own usage, not the top-level one; a mistyped command gets
a "did you mean"; `engram-ff help [COMMAND]` and `-V` work as in git, and so does `--data DIR` written
before the command (as git's -C)."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sqlite3
import sys
from importlib.metadata import PackageNotFoundError, version

from engram_ff.daemon.commands import AlreadyRunning
from engram_ff.daemon.config import ConfigError
from engram_ff.daemon.errors import UserError, database_problem
from engram_ff.daemon.options import COMMANDS

BENCHMARKS = {  # name -> what it measures; its module is engram_ff.bench.<name>
    "images": "Forward-Forward against backprop on Fashion-MNIST",
    "text": "the FF-SSM language model against backprop and baselines on TinyShakespeare",
    "ingest": "lines per second, latency and memory of ingest",
    "update": "one nightly update's time and memory, and the idle daemon",
    "incremental": "day-by-day learning and forgetting, method by method",
    "chaos": "SIGKILL trials, load and the units' security",
    "year": "a simulated year of nights through the daemon's update, gate and probes",
    "learning": "facts said k times asked the next morning and a month later; each day predicted before training",
    "parallel": "data-parallel ranks and FF's layer pipeline against one process, FF and BP",
}
INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
BROKEN_PIPE = 141  # and by SIGPIPE, which is how `git log | head` ends git


def bench_module(name: str):
    return importlib.import_module(f"engram_ff.bench.{name}")


def installed_version() -> str:
    try:
        return version("engram-ff")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engram-ff",
        description="Keep a byte-level SSM language model learning every night from Engram logs, "
        "with Forward-Forward training on the CPU.",
    )
    parser.add_argument("-V", "--version", action="version", version=f"engram-ff {installed_version()}")
    parser.add_argument(
        "--data",
        dest="data_before",
        metavar="DIR",
        help="the data directory, for the command that follows (the same as its own --data)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("help", help="show the help of a command, or this list", description="Show a command's help.")
    p.add_argument("topic", nargs="?", metavar="COMMAND", help="the command (default: the list of commands)")
    for cmd in COMMANDS.values():
        p = sub.add_parser(
            cmd.name,
            help=cmd.help,
            description=cmd.help[0].upper() + cmd.help[1:] + ".",
            epilog=f"example:\n  {cmd.example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        for flags, kwargs in cmd.options:
            p.add_argument(*flags, **kwargs)
        p.set_defaults(run=cmd.run)
    listing = "\n".join(f"  {name:<12} {BENCHMARKS[name]}" for name in sorted(BENCHMARKS))
    p = sub.add_parser(
        "bench",
        help="run a benchmark; `engram-ff bench NAME --help` for its flags",
        description="Run a benchmark; its results go to bench/results/.",
        epilog=f"benchmarks:\n{listing}\n\nexample:\n  engram-ff bench ingest --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", choices=sorted(BENCHMARKS), metavar="NAME", help="which benchmark (below)")
    p.add_argument(
        "bench_args", nargs=argparse.REMAINDER, metavar="FLAGS", help="its flags (`--quick` for a short run)"
    )
    p.set_defaults(help=p.print_help)
    return parser


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting burn the CPU they wait for when anything else runs (the
    # daemon trains at idle priority beside the user's work): measured here, a training step took 4.1 s
    # with spinning and 0.34 s without on 2 busy cores. Must be set before torch loads OpenMP.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = _parse(parser, argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "help":
        return _help(parser, args.topic)
    try:
        if args.command == "bench":
            if args.name is None:  # bare `engram-ff bench`: which benchmarks there are
                args.help()
                return 2
            return bench_module(args.name).main(args.bench_args) or 0
        return args.run(args) or 0
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    except (AlreadyRunning, UserError) as exc:
        return _fail(str(exc), getattr(exc, "code", 1))
    except KeyboardInterrupt:  # a command that saves its own work on Ctrl-C (update) never gets here
        return _fail("interrupted", INTERRUPTED)
    except BrokenPipeError:  # `engram-ff status | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
        return BROKEN_PIPE
    except sqlite3.Error as exc:  # a command that did not say which database: SQLite's words and the remedy
        return _fail(database_problem(exc), 1)
    except OSError as exc:  # a read-only or full file system, a permission: the OS's words name the file
        return _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc), 1)


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parse_args, except that an unknown flag of a command is reported with that command's usage, a
    mistyped command with the nearest one, and a --data before the command is the command's."""
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = _commands(parser)
    word = _command_word(argv)
    if word is not None and word not in commands:
        near = difflib.get_close_matches(word, list(commands), n=1, cutoff=0.6)
        parser.error(
            f"unknown command {word!r}: " + (f"did you mean {near[0]!r}?" if near else "`engram-ff help` lists them")
        )
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        (commands.get(args.command) or parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.data_before is not None and args.command is not None:
        if not hasattr(args, "data"):
            commands[args.command].error(f"{args.command} takes no --data")
        if args.data is not None and args.data != args.data_before:
            commands[args.command].error(f"--data given twice: {args.data_before} and {args.data}")
        args.data = args.data_before
    return args


def _command_word(argv: list[str]) -> str | None:
    """The first word that is not a top-level option or its value: the command the user typed."""
    words = iter(argv)
    for word in words:
        if word == "--data":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def _help(parser: argparse.ArgumentParser, topic: str | None) -> int:
    """`engram-ff help [COMMAND]`: the same text as `--help`."""
    commands = _commands(parser)
    if topic is None:
        parser.print_help()
        return 0
    if topic not in commands:
        near = difflib.get_close_matches(topic, list(commands), n=1, cutoff=0.6)
        return _fail(f"no command {topic!r}" + (f": did you mean {near[0]!r}?" if near else ""), 2)
    commands[topic].print_help()
    return 0


def _fail(message: str, code: int) -> int:
    print(f"engram-ff: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
