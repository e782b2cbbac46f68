"""The units verify, and systemd's own security analysis scores the hardening."""

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from engram_ff.daemon import install
from engram_ff.daemon.cli import main
from tests.daemon_helpers import installation_outside_tmp

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")


def analyze(*args, user=False, tmp_path=None):
    env = dict(os.environ)
    if user:  # a user manager needs a runtime dir even offline
        env["XDG_RUNTIME_DIR"] = str(tmp_path)
    return subprocess.run(
        ["systemd-analyze", *(["--user"] if user else []), *args], capture_output=True, text=True, env=env
    )


def exposure(output: str) -> float:
    return float(re.search(r"Overall exposure level for .*?: (\d+\.\d+)", output).group(1))


@pytest.mark.parametrize("user", [False, True])
def test_installed_unit_verifies_and_is_hardened(tmp_path, user, capsys, monkeypatch):
    """A watched folder in a home directory, as Engram's usually is (a folder in /tmp is refused: the units
    have PrivateTmp=yes). The system unit binds it into an otherwise empty /home and stays at or below
    1.0; the user unit, which cannot drop privileges it never had, below 2.0."""
    monkeypatch.setattr(install, "this_installation", installation_outside_tmp)
    unit = tmp_path / "engram-ff.service"
    args = ["install-service", "--output", str(unit), "--watch", "/home/someone/engram"]
    assert main(args + (["--user"] if user else [])) == 0
    text = unit.read_text()
    assert "Type=notify" in text and "ExecStart=" in text and "--watch" in text
    verify = analyze("verify", str(unit), user=user, tmp_path=tmp_path)
    assert verify.returncode == 0, verify.stderr
    security = analyze("security", "--offline=true", str(unit), user=user, tmp_path=tmp_path)
    # the system unit: 0.6 with the loopback the ranks of an update need (0.3 without), the user unit 1.4
    assert exposure(security.stdout + security.stderr) <= (2.0 if user else 1.0)


def test_system_unit_runs_unprivileged_and_idle():
    text = (Path(__file__).parents[1] / "systemd" / "engram-ff.service").read_text()
    for line in (
        "DynamicUser=yes",
        "StateDirectory=engram-ff",
        "CPUSchedulingPolicy=idle",
        "IOSchedulingClass=idle",
        "PrivateNetwork=yes",
        "IPAddressDeny=any\nIPAddressAllow=localhost",  # the ranks of an update talk over 127.0.0.1 only
        "RestrictAddressFamilies=AF_UNIX AF_INET",
        "MemoryDenyWriteExecute=yes",
    ):
        assert line in text
