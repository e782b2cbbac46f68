"""`engram-ff install-service`: the unit from systemd/, with this installation's paths written in."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

UNITS = Path(__file__).resolve().parents[1] / "systemd"  # installed beside daemon/ as package data


def executable() -> str:
    """The engram-ff of this installation (its venv's bin), else the interpreter running the module."""
    found = Path(sys.executable).with_name("engram-ff")
    if found.exists():
        return str(found)
    which = shutil.which("engram-ff")
    return which or f"{sys.executable} -m engram_ff.daemon.cli"


def render_unit(
    *, user: bool, watch: str | None = None, data: str | None = None, config_file: str | None = None
) -> str:
    template = (UNITS / ("engram-ff.user.service" if user else "engram-ff.service")).read_text()
    command = [executable(), "run"]
    if config_file:
        command += ["--config", str(Path(config_file).resolve())]
    if data:
        command += ["--data", str(Path(data).resolve())]
    if watch or not user:
        watch_dir = str(Path(watch).resolve()) if watch else "/var/lib/engram"
        command += ["--watch", watch_dir]
        if not user:
            template = re.sub(r"^BindReadOnlyPaths=.*$", f"BindReadOnlyPaths=-{watch_dir}", template, flags=re.M)
    if data and user:
        template = re.sub(r"^ReadWritePaths=.*$", f"ReadWritePaths={Path(data).resolve()}", template, flags=re.M)
    if any(c.isspace() for c in command[0]):
        raise ValueError(f"the path {command[0]!r} holds a space, which ExecStart= cannot take unquoted")
    return re.sub(r"^ExecStart=.*$", "ExecStart=" + " ".join(command), template, count=1, flags=re.M)


def install_unit(
    *,
    user: bool,
    output: str | None = None,
    watch: str | None = None,
    data: str | None = None,
    config_file: str | None = None,
) -> Path:
    if output:
        path = Path(output)
    elif user:
        config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        path = config_home / "systemd" / "user" / "engram-ff.service"
    else:
        path = Path("/etc/systemd/system/engram-ff.service")
    text = render_unit(user=user, watch=watch, data=data, config_file=config_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
