"""`engram-ff`: the command line. It builds one argparse parser from the commands registered in
daemon/commands.py, runs the one asked for, and turns the failures a user can act on into one line
on stderr and an exit code (2 for bad configuration or usage, 1 otherwise), never a traceback."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from engram_ff.daemon.commands import AlreadyRunning
from engram_ff.daemon.config import ConfigError
from engram_ff.daemon.errors import UserError
from engram_ff.daemon.options import COMMANDS

BENCHMARKS = {
    "images": "engram_ff.bench.images",
    "text": "engram_ff.bench.text",
    "ingest": "engram_ff.bench.ingest",
    "update": "engram_ff.bench.update",
    "incremental": "engram_ff.bench.incremental",
    "chaos": "engram_ff.bench.chaos",
    "parallel": "engram_ff.bench.parallel",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engram-ff",
        description="Keep a byte-level SSM language model learning every night from Engram logs, "
        "with Forward-Forward training on the CPU.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    p = sub.add_parser(
        "bench",
        help="run a benchmark; `engram-ff bench NAME --help` for its flags",
        epilog="example:\n  engram-ff bench ingest --quick",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting burn the CPU they wait for when anything else runs (the
    # daemon trains at idle priority beside the user's work): measured here, a training step took 4.1 s
    # with spinning and 0.34 s without on 2 busy cores. Must be set before torch loads OpenMP.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "bench":
        return importlib.import_module(BENCHMARKS[args.name]).main(args.bench_args) or 0
    try:
        return args.run(args) or 0
    except ConfigError as exc:
        return _fail(f"bad configuration: {exc}", 2)
    except (AlreadyRunning, UserError) as exc:
        return _fail(str(exc), getattr(exc, "code", 1))


def _fail(message: str, code: int) -> int:
    print(f"engram-ff: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
