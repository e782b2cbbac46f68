"""install-service writes units whose sandbox can still see their own program and watched folder.

The units are read back and checked against an independent reading of systemd.exec(5): a path under
/home, /root or /run/user is hidden by ProtectHome=yes and, under ProtectHome=tmpfs, visible only if a
BindPaths=/BindReadOnlyPaths= entry holds it; a path under /tmp or /var/tmp is private under
PrivateTmp=yes. Where systemd-analyze is installed, the units also verify.
"""

from __future__ import annotations

import importlib.util
import os
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
