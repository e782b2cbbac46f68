"""install-service writes units whose sandbox can still see their own program and watched folder.

The units are read back and checked against an independent reading of systemd.exec(5): a path under
/home, /root or /run/user is hidden by ProtectHome=yes and, under ProtectHome=tmpfs, visible only if a
BindPaths=/BindReadOnlyPaths= entry holds it; a path under /tmp or /var/tmp is private under
PrivateTmp=yes. Where systemd-analyze is installed, the units also verify.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from engram_ff.daemon import install
from engram_ff.daemon.cli import main
from tests.daemon_helpers import installation_outside_tmp

HOMES = ("/home", "/root", "/run/user")
TEMPORARY = ("/tmp", "/var/tmp")
RUNNING = install.this_installation  # the installation running these tests, wherever its checkout is


@pytest.fixture(autouse=True)
def outside_tmp(monkeypatch):
    """Units for an installation outside /tmp, unless a test asks for another: .ci/run tests a copy of the
    checkout in /tmp, which install-service (rightly) refuses to install."""
    monkeypatch.setattr(install, "this_installation", installation_outside_tmp)


def settings(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def under(path: str, roots) -> bool:
    return any(path == root or path.startswith(root + "/") for root in roots)


def visible(path: str | Path, unit: dict[str, list[str]]) -> bool:
    """Whether the unit's own processes see `path` (read access is all the program needs)."""
    real = os.path.realpath(path)
    binds = [
        b.lstrip("-").split(":")[0]
        for key in ("BindPaths", "BindReadOnlyPaths")
        for v in unit.get(key, [])
        for b in v.split()
    ]
    bound = any(under(real, [b]) for b in binds)
    if unit.get("PrivateTmp", ["no"])[-1] in ("yes", "true") and under(real, TEMPORARY):
        return bound
    if under(real, HOMES):
        protect = unit.get("ProtectHome", ["no"])[-1]
        if protect in ("yes", "true"):
            return False
        if protect == "tmpfs":
            return bound
    return True


def what_the_service_reads(unit: dict[str, list[str]], *, packages: bool) -> dict[str, str]:
    """Read from the unit itself: its ExecStart program, the interpreter in that program's #! line, the
    watched folder it is given, the standard library, and (for this very installation) where it finds
    engram_ff and torch."""
    argv = unit["ExecStart"][0].split()
    paths = {"program": argv[0], "standard library": os.path.dirname(os.__file__)}
    with open(argv[0], "rb") as program:
        first = program.readline()
    if first.startswith(b"#!"):
        paths["interpreter"] = first[2:].split()[0].decode()
    if "--watch" in argv:
        paths["watched folder"] = argv[argv.index("--watch") + 1]
    for module in ("engram_ff.daemon", "torch") if packages else ():
        paths[module] = str(Path(importlib.util.find_spec(module).origin).parent)
    return paths


def render(*args: str, capsys) -> str:
    assert main(["install-service", "--output", "-", *args]) == 0
    return capsys.readouterr().out


def test_the_system_unit_sees_its_own_program_and_watched_folder(capsys):
    unit = settings(render("--watch", "/home/someone/engram", capsys=capsys))
    reads = what_the_service_reads(unit, packages=False)
    hidden = [f"{what}: {path}" for what, path in reads.items() if not visible(path, unit)]
    assert hidden == []
    assert unit["ProtectHome"] == ["tmpfs"]  # the rest of the home folders stays out of sight
    assert "/home/someone/engram" in unit["BindReadOnlyPaths"][0].split()


def test_the_installation_running_these_tests_is_visible_to_its_unit_or_refused(monkeypatch, capsys):
    monkeypatch.setattr(install, "this_installation", RUNNING)
    in_tmp = [p for p in RUNNING().paths.values() if under(os.path.realpath(p), TEMPORARY)]
    code = main(["install-service", "--output", "-", "--watch", "/home/someone/engram"])
    out, err = capsys.readouterr()
    if in_tmp:  # e.g. .ci/run's copy of the checkout: refused, with the fix
        assert code == 1 and "PrivateTmp=yes hides" in err and "install-service again" in err
        return
    assert code == 0
    unit = settings(out)
    reads = what_the_service_reads(unit, packages=True)
    assert [f"{what}: {path}" for what, path in reads.items() if not visible(path, unit)] == []


def test_a_venv_and_a_watched_folder_under_home_are_bound_read_only(monkeypatch, capsys):
    venv = Path("/home/me/venvs/engram-ff")
    installed = install.Installation(
        str(venv / "bin" / "engram-ff"),
        {"the engram-ff command": venv / "bin" / "engram-ff", "its Python environment": venv, "lib": Path("/usr/lib")},
    )
    monkeypatch.setattr(install, "this_installation", lambda: installed)
    assert main(["install-service", "--output", "-", "--watch", "/home/me/engram"]) == 0
    out, err = capsys.readouterr()
    unit = settings(out)
    assert unit["ExecStart"][0].startswith("/home/me/venvs/engram-ff/bin/engram-ff run")
    for path in ("/home/me/venvs/engram-ff/bin/engram-ff", "/home/me/venvs/engram-ff/lib", "/home/me/engram"):
        assert visible(path, unit), path
    assert not visible("/home/me/.ssh", unit)  # exactly those paths, not the home folder
    assert "bound read-only" in err and "/home/me/venvs/engram-ff" in err  # said on stderr, the unit on stdout


def test_a_program_or_watched_folder_in_tmp_is_refused_with_the_fix(capsys, tmp_path):
    assert main(["install-service", "--output", str(tmp_path / "u.service"), "--watch", "/tmp/engram"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "PrivateTmp" in err and "outside /tmp" in err
    assert not (tmp_path / "u.service").exists()
    with pytest.raises(install.Unreachable, match=r"python3 -m venv /opt/engram-ff"):
        install.reachable_paths(user=False, needed={"its Python environment": Path("/tmp/venv")})
    with pytest.raises(install.Unreachable, match=r"~/.local/share/engram-ff-venv"):
        install.reachable_paths(user=True, needed={"its Python environment": Path("/var/tmp/venv")})


def test_the_user_unit_reads_home_and_writes_only_its_data_dir(capsys):
    template = settings((Path(install.UNITS) / "engram-ff.user.service").read_text())
    assert template["ReadWritePaths"] == ["-%h/.local/share/engram-ff"]  # `-`: starts before the folder exists
    unit = settings(render("--user", "--data", "/home/me/engram-data", "--watch", "/home/me/engram", capsys=capsys))
    assert unit["ProtectHome"] == ["read-only"] and unit["ReadWritePaths"] == ["-/home/me/engram-data"]
    assert all(visible(path, unit) for path in what_the_service_reads(unit, packages=False).values())


def test_the_system_units_data_dir_is_writable(capsys):
    elsewhere = settings(render("--data", "/srv/engram-ff", capsys=capsys))
    assert elsewhere["ReadWritePaths"] == ["-/srv/engram-ff"]
    assert "--data /srv/engram-ff" in elsewhere["ExecStart"][0]
    state = settings(render("--data", "/var/lib/engram-ff-2", capsys=capsys))
    assert state["StateDirectory"] == ["engram-ff-2"] and "ReadWritePaths" not in state
    assert main(["install-service", "--output", "-", "--data", "/home/me/data"]) == 1
    assert "use --data /var/lib/NAME, or the user unit" in capsys.readouterr().err


def test_output_dash_is_standard_output(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = render("--watch", "/var/lib/engram", capsys=capsys)
    assert text.startswith("# engram-ff as a system service") and "ExecStart=" in text
    assert list(tmp_path.iterdir()) == []  # no file named "-"


def test_uninstall_removes_only_its_own_disabled_unit(tmp_path, capsys):
    unit = tmp_path / "engram-ff.service"
    assert main(["install-service", "--user", "--output", str(unit)]) == 0
    wants = tmp_path / "default.target.wants"
    wants.mkdir()
    (wants / "engram-ff.service").symlink_to(unit)
    assert main(["uninstall-service", "--user", "--output", str(unit)]) == 1
    assert "disable --now engram-ff" in capsys.readouterr().err and unit.exists()
    (wants / "engram-ff.service").unlink()
    assert main(["uninstall-service", "--user", "--output", str(unit)]) == 0
    assert not unit.exists()
    foreign = tmp_path / "other.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")
    assert main(["uninstall-service", "--output", str(foreign)]) == 1
    assert "not written by engram-ff" in capsys.readouterr().err and foreign.exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize(
    "args", [["--data", "/srv/engram-ff"], ["--data", "/var/lib/engram-ff-2"], ["--watch", "/home/me/e"]]
)
def test_every_variant_verifies(tmp_path, args):
    unit = tmp_path / "engram-ff.service"
    assert main(["install-service", "--output", str(unit), *args]) == 0
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


def systemd_argv(line: str, exec_line: bool = True) -> list[str]:
    """ExecStart='s words as systemd reads them, by an independent reading of systemd.syntax(7) "Quoting"
    and systemd.service(5) "Command lines": whitespace splits words; "..." or '...' wrap one; a backslash
    takes the next character (C escapes: \\n, \\t); then `%%` is `%` and `$$` is `$` (any other `%x` is
    a specifier, any other `$` on a command line a variable: neither may be left in a path)."""
    words, i = [], 0
    while i < len(line):
        if line[i] in " \t":
            i += 1
            continue
        word, quote = "", line[i] if line[i] in "\"'" else None
        i += 1 if quote else 0
        while i < len(line) and (line[i] != quote if quote else line[i] not in " \t"):
            if line[i] == "\\":
                i += 1
                word += {"n": "\n", "t": "\t"}.get(line[i], line[i])
            else:
                word += line[i]
            i += 1
        i += 1 if quote else 0
        for mark in "%$" if exec_line else "%":
            assert re.fullmatch(rf"(?:[^{re.escape(mark)}]|{re.escape(mark * 2)})*", word), f"unescaped {mark}: {word}"
            word = word.replace(mark * 2, mark)
        words.append(word)
    return words


ODD_PATHS = ["/srv/my logs", "/srv/%h/engram", "/srv/a$HOME b", '/srv/say "hi"', "/srv/back\\slash", "/srv/a:b"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("path", ODD_PATHS)
@pytest.mark.parametrize("user", [False, True])
def test_odd_paths_are_quoted_so_that_systemd_reads_back_the_argv_meant(tmp_path, path, user):
    """Issue #20.4: a space gave a unit that could not start, `%h` was expanded by systemd."""
    unit = tmp_path / "engram-ff.service"
    scope = ["--user"] if user else []
    assert main(["install-service", *scope, "--output", str(unit), "--watch", path, "--data", path + "-data"]) == 0
    verify = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0 and "ignoring" not in verify.stderr.lower(), verify.stderr
    found = settings(unit.read_text())
    program = install.command_argv(installation_outside_tmp().command)
    meant = [*program, "run", "--data", path + "-data", "--watch", path]
    assert systemd_argv(found["ExecStart"][0]) == meant
    assert systemd_argv(found["ReadWritePaths"][0], exec_line=False) == [f"-{path}-data"]
    if not user:
        assert (
            systemd_argv(found["BindReadOnlyPaths"][0], exec_line=False)[0] == f"-{path}"
        )  # then the binds of the program


@pytest.mark.parametrize("path", ["/srv/a\nExecStartPre=/bin/sh -c 'id'", "/srv/tab\there", "/srv/bell\a"])
def test_a_control_character_in_a_path_is_refused_in_one_line(tmp_path, path, capsys):
    unit = tmp_path / "engram-ff.service"
    for scope in ([], ["--user"]):
        assert main(["install-service", *scope, "--output", str(unit), "--watch", path]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "control character" in err
    assert not unit.exists()


def test_output_refuses_to_overwrite_a_file_it_did_not_write_unless_forced(tmp_path, capsys):
    """Issue #20.5: someone else's unit was overwritten, with exit 0."""
    foreign = tmp_path / "engram-ff.service"
    foreign.write_text("[Service]\nExecStart=/usr/bin/someone-elses\n")
    assert main(["install-service", "--user", "--output", str(foreign)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not written by engram-ff" in err and "--force" in err
    assert foreign.read_text() == "[Service]\nExecStart=/usr/bin/someone-elses\n"
    assert main(["install-service", "--user", "--output", str(foreign), "--force"]) == 0
    assert install.MARKER in foreign.read_text()
    assert main(["install-service", "--user", "--output", str(foreign), "--watch", "/srv/e"]) == 0  # ours: replaced
    assert "--watch /srv/e" in foreign.read_text()
