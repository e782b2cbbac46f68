"""What `pip install` puts into site-packages: one namespace, engram_ff, beside python-daemon's `daemon`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_an_installed_copy_claims_only_its_own_name_and_runs_beside_python_daemon(tmp_path):
    target = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", target]
    done = subprocess.run([*install, str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in target.iterdir() if p.name != "bin") == ["engram_ff", "engram_ff-0.1.0.dist-info"]
    installed = target / "engram_ff"
    assert (installed / "systemd" / "engram-ff.service").exists()  # install-service's templates travel
    assert (installed / "daemon" / "demo_logs").is_dir() and (installed / "bench" / "data" / "plays").is_dir()
    # The copy in `target`, not the checkout, answers; python-daemon (a test dependency) keeps `daemon`.
    check = (
        "import daemon, engram_ff.daemon.cli as cli, sys;"
        "assert hasattr(daemon, 'DaemonContext'), daemon.__file__;"
        f"assert cli.__file__.startswith({str(target)!r}), cli.__file__;"
        "sys.exit(cli.main(['config', '--data', sys.argv[1]]))"
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    ran = subprocess.run(
        [sys.executable, "-c", check, str(tmp_path / "data")], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert ran.returncode == 0, ran.stderr
    assert "schedule = " in ran.stdout
