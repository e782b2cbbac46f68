"""How commands declare themselves: `@command` registers a function under a name with its help and an
example, `@option` adds a flag, and the shared flags are decorators of their own (`@location_options`,
`@json_option`), so a flag means the same in every command that takes it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Command:
    name: str
    run: Callable[..., int | None]
    help: str
    example: str
    options: list[tuple[tuple[str, ...], dict]] = field(default_factory=list)


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, example: str):
    """Register the decorated function as `engram-ff NAME`; it takes the parsed arguments."""

    def register(run):
        COMMANDS[name] = Command(name, run, help, example, getattr(run, "cli_options", []))
        return run

    return register


def option(*flags: str, **kwargs):
    """An argparse argument of the decorated command, listed in the order the decorators are written."""

    def add(run):
        run.__dict__.setdefault("cli_options", []).insert(0, (flags, kwargs))
        return run

    return add


def data_options(run):
    """--config and --data: which configuration and data directory, for the commands that never read the
    Engram folder (ask, generate, history, learned, probe), so their --help offers no --watch."""
    run = option("--data", metavar="DIR", help="the data directory: where the database, checkpoints and lock live")(run)
    return option("--config", metavar="FILE", help="TOML configuration file")(run)


def location_options(run):
    """--config, --watch and --data: which configuration, Engram folder and data directory."""
    run = option("--data", metavar="DIR", help="the data directory: where the database, checkpoints and lock live")(run)
    run = option(
        "--watch",
        metavar="DIR",
        help="the Engram folder (its raw/ holds the daily files); default: the one this data directory last used",
    )(run)
    return option("--config", metavar="FILE", help="TOML configuration file")(run)


def json_option(run):
    """--json: the same facts as the table, as JSON for scripts."""
    return option("--json", action="store_true", help="print JSON instead of tables")(run)
