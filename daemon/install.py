"""`engram-ff install-service` and `uninstall-service`: the unit from systemd/, with this installation's
paths written in, and a sandbox that can still see them.

A unit's sandbox can hide its own program. The system unit has ProtectHome=yes (/home, /root and
/run/user are empty to it) and both units have PrivateTmp=yes (a private, empty /tmp and /var/tmp), so
a virtual environment under /home, a pyenv interpreter under /root or a checkout in /tmp would vanish
at start, and so would a watched folder in a home directory, where Engram writes. So the paths the
service must reach (its command, its environment, the interpreter and the packages it imports, the
watched folder, the configuration file) are checked against the unit's own settings:
- under a home directory, the system unit binds exactly those paths read-only and hides the rest of
  the home directories behind an empty tmpfs (ProtectHome=tmpfs, which systemd documents for this);
- under /tmp or /var/tmp, installation is refused with the fix: /tmp is private to the unit, emptied
  at boot, and no place for a service to run from.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

UNITS = Path(__file__).resolve().parents[1] / "systemd"  # installed beside daemon/ as package data
MARKER = "# Written by `engram-ff install-service`; `engram-ff uninstall-service` removes it."
HOMES = ("/home", "/root", "/run/user")  # hidden by ProtectHome=yes, read-only under ProtectHome=read-only
TEMPORARY = ("/tmp", "/var/tmp")  # private to the unit under PrivateTmp=yes
# the modules the daemon and its update child import, wherever pip put them
IMPORTS = ("engram_ff.daemon", "torch", "numpy", "watchdog", "apscheduler", "orjson", "sqlite_utils", "matplotlib")
SYSTEM_STATE = Path("/var/lib")  # StateDirectory= is relative to it


class Unreachable(ValueError):
    """A path the service needs would be hidden by its own sandbox, and binding it is not the fix."""


class BadPath(ValueError):
    """A path no unit file can hold: it has a control character (a newline would start a line of its own)."""


class NotOurs(ValueError):
    """The file at --output was not written by install-service: not overwritten without --force."""


class StillEnabled(ValueError):
    """The unit is still enabled: removing its file would leave systemd's links dangling."""


@dataclass
class Unit:
    text: str
    bound: list[str] = field(default_factory=list)  # read-only binds added for paths under a home directory
    notes: list[str] = field(default_factory=list)  # what the user must still do


def executable() -> str:
    """The engram-ff of this installation (its venv's bin), else the interpreter running the module."""
    found = Path(sys.executable).with_name("engram-ff")
    if found.exists():
        return str(found)
    which = shutil.which("engram-ff")
    return which or f"{sys.executable} -m engram_ff.daemon.cli"


@dataclass
class Installation:
    """What ExecStart= runs, and every path running it reads."""

    command: str
    paths: dict[str, Path]


def this_installation() -> Installation:
    command = executable()
    return Installation(command, program_paths(command))


def program_paths(command: str) -> dict[str, Path]:
    """What running `command` reads: the command, the environment, the interpreter and its library, and
    the directory each imported package lives in (an editable install lives in its checkout)."""
    paths = {
        "the engram-ff command": Path(command.split()[0]),
        "its Python environment": Path(sys.prefix),
        "the Python interpreter": Path(os.path.realpath(sys.executable)),
        "the interpreter's library": Path(sys.base_prefix),
    }
    for name in IMPORTS:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            package = Path(spec.origin).parent  # .../site-packages/torch
            paths[f"the {name.split('.')[0]} package"] = package.parent if name == "engram_ff.daemon" else package
    return paths


def _under(path: Path, roots: tuple[str, ...]) -> bool:
    return any(path == Path(root) or Path(root) in path.parents for root in roots)


def _covering(paths: list[Path]) -> list[Path]:
    """The fewest of `paths` whose subtrees hold them all."""
    kept: list[Path] = []
    for path in sorted(set(paths)):
        if not any(path == k or k in path.parents for k in kept):
            kept.append(path)
    return kept


def _fix_for_tmp(label: str, path: Path, user: bool) -> str:
    if label == "the watched folder":
        return f"watch a folder outside /tmp and /var/tmp (the unit has PrivateTmp=yes, so {path} would be empty to it)"
    home = "~/.local/share/engram-ff-venv" if user else "/opt/engram-ff"
    return (
        f"{label} is {path}, in a temporary folder, which the unit's PrivateTmp=yes hides (and systemd-tmpfiles "
        f"cleans): install engram-ff where a service can run from, e.g. python3 -m venv {home}, then {home}/bin/pip "
        f"install torch and {home}/bin/pip install YOUR-CLONE (not -e), and run {home}/bin/engram-ff "
        f"install-service{' --user' if user else ''} again"
    )


def reachable_paths(*, user: bool, needed: dict[str, Path]) -> list[Path]:
    """The paths the unit must bind read-only for the service to see them; raises Unreachable for a path
    in /tmp, naming the fix."""
    resolved = {label: Path(os.path.realpath(path)) for label, path in needed.items()}
    for label, path in resolved.items():
        if _under(path, TEMPORARY):
            raise Unreachable(_fix_for_tmp(label, path, user))
    if user:  # ProtectHome=read-only: every home directory stays readable
        return []
    return _covering([path for path in resolved.values() if _under(path, HOMES)])


SAFE = re.compile(r"[A-Za-z0-9/._,+@=-]+")  # needs no quotes in a unit file, and means itself


def systemd_word(text: str, *, exec_line: bool = False, bind: bool = False) -> str:
    r"""One word of a unit's setting, written so that systemd reads back exactly `text` (systemd.syntax(7),
    "Quoting"; systemd.service(5), "Command lines"): backslashes and double quotes escaped inside double
    quotes, `%` as `%%` (else a specifier: `%h` is the home folder), `$` as `$$` on a command line (else a
    variable), `:` as `\:` in a bind (else the source:destination separator). A control character is
    refused: a newline would write a line of its own into the unit (issue #20.4)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise BadPath(f"{text!r} holds a control character, which a unit file cannot take: rename it")
    word = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    if exec_line:
        word = word.replace("$", "$$")
    if bind:
        word = word.replace(":", "\\:")
    return word if SAFE.fullmatch(text) else f'"{word}"'


def _set(text: str, key: str, value: str) -> str:
    """Replace the unit's `key=` line, or add it after the line that anchors its section of settings."""
    if re.search(rf"^{key}=", text, flags=re.M):
        return re.sub(rf"^{key}=.*$", lambda m: f"{key}={value}", text, count=1, flags=re.M)
    return re.sub(r"^(UMask=.*)$", lambda m: f"{m.group(1)}\n{key}={value}", text, count=1, flags=re.M)


def render_unit(
    *,
    user: bool,
    watch: str | None = None,
    data: str | None = None,
    config_file: str | None = None,
    facts_file: str | None = None,
    installation: Installation | None = None,
) -> Unit:
    """The unit for `installation` (default: the one running this), or Unreachable with the fix."""
    template = (UNITS / ("engram-ff.user.service" if user else "engram-ff.service")).read_text()
    installation = installation or this_installation()
    command = [*command_argv(installation.command), "run"]
    needed = dict(installation.paths)
    if config_file:
        command += ["--config", str(Path(config_file).resolve())]
        needed["the configuration file"] = Path(config_file).resolve()
    if facts_file:
        needed["the facts file"] = Path(facts_file).resolve()
    unit = Unit(template)
    if data:
        data_dir = Path(data).resolve()
        command += ["--data", str(data_dir)]
        unit.text = _data_dir(unit, data_dir, user=user)
    if watch or not user:
        watch_dir = Path(watch).resolve() if watch else Path("/var/lib/engram")
        command += ["--watch", str(watch_dir)]
        needed["the watched folder"] = watch_dir
    binds = reachable_paths(user=user, needed=needed)
    if not user:
        # Outside the home directories the watched folder is bound with `-`: the unit starts without it and
        # the daemon waits for it to appear. Under ProtectHome=tmpfs a folder must exist to be bound.
        watched = [] if _under(Path(os.path.realpath(watch_dir)), HOMES) else [f"-{watch_dir}"]
        words = [systemd_word(p, bind=True) for p in [*watched, *map(str, binds)]]
        unit.text = _set(unit.text, "BindReadOnlyPaths", " ".join(words))
        if binds:
            unit.text = _set(unit.text, "ProtectHome", "tmpfs")
            unit.bound = [str(b) for b in binds]
            if not watched and not watch_dir.is_dir():
                unit.notes.append(
                    f"create {watch_dir} before starting the service: the unit binds it, so it must exist"
                )
    line = "ExecStart=" + " ".join(systemd_word(word, exec_line=True) for word in command)
    unit.text = re.sub(r"^ExecStart=.*$", lambda m: line, unit.text, count=1, flags=re.M)
    unit.text = re.sub(r"^\[Unit\]$", lambda m: f"{MARKER}\n[Unit]", unit.text, count=1, flags=re.M)
    return unit


def _data_dir(unit: Unit, data_dir: Path, *, user: bool) -> str:
    """The data directory must be writable under ProtectSystem=strict. Under /var/lib the system unit
    asks systemd for it (StateDirectory=, created and owned by the unit's dynamic user); anywhere else a
    ReadWritePaths= opens it, its `-` letting the unit start while it does not exist yet."""
    text = unit.text
    if not user and SYSTEM_STATE in data_dir.parents:
        return _set(text, "StateDirectory", systemd_word(str(data_dir.relative_to(SYSTEM_STATE))))
    if _under(data_dir, TEMPORARY):
        raise Unreachable(f"the data directory {data_dir} is in a temporary folder, private to the unit: pick another")
    if not user and _under(data_dir, HOMES):
        raise Unreachable(
            f"the system unit hides home directories (ProtectHome=), so it cannot keep its data in {data_dir}: "
            "use --data /var/lib/NAME, or the user unit (--user)"
        )
    if not user:
        unit.notes.append(
            f"the service runs as a dynamic user, which can write {data_dir} only if its permissions let it "
            "(systemd creates and owns a data directory for it only under /var/lib: --data /var/lib/NAME)"
        )
    return _set(text, "ReadWritePaths", systemd_word(f"-{data_dir}"))


def command_argv(command: str) -> list[str]:
    """executable()'s command as words: a path (spaces and all), or an interpreter running the module."""
    interpreter, module, rest = command.rpartition(" -m ")
    return [interpreter, "-m", rest] if module and rest == "engram_ff.daemon.cli" else [command]


def unit_path(*, user: bool, output: str | None = None) -> Path:
    if output:
        return Path(output)
    if user:
        config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        return config_home / "systemd" / "user" / "engram-ff.service"
    return Path("/etc/systemd/system/engram-ff.service")


def install_unit(unit: Unit, path: Path, *, force: bool = False) -> None:
    """Write the unit, atomically; a file already there is replaced only if install-service wrote it (its
    marker line), or with `force` (issue #20.5: uninstall-service already refused such files)."""
    if not force and (path.exists() or path.is_symlink()):
        try:
            ours = MARKER in path.read_text(errors="replace")
        except OSError:
            ours = False
        if not ours:
            raise NotOurs(
                f"{path} exists and was not written by engram-ff install-service: not overwriting it "
                "(--force to replace it)"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(unit.text)
    tmp.replace(path)


def uninstall_unit(path: Path) -> None:
    """Remove a unit this command wrote, once it is no longer enabled; anything else is refused."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"no unit at {path}: nothing to remove") from None
    if MARKER not in text:
        raise ValueError(f"{path} was not written by engram-ff install-service: not removing it")
    for target in re.findall(r"^WantedBy=(.+)$", text, flags=re.M):
        link = path.parent / f"{target.strip()}.wants" / path.name
        if link.is_symlink() or link.exists():
            raise StillEnabled(str(link))
    path.unlink()
