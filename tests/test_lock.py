"""One daemon per data directory."""

import subprocess
import sys

import pytest

from engram_ff.daemon.lock import AlreadyRunning, DataDirLock


def test_second_holder_gets_a_clear_error(tmp_path):
    with DataDirLock(tmp_path / "engram-ff.lock"):
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "from daemon.lock import DataDirLock; import sys; DataDirLock(sys.argv[1]).acquire()",
                str(tmp_path / "engram-ff.lock"),
            ],
            capture_output=True,
            text=True,
        )
        assert child.returncode != 0
        assert "already uses" in child.stderr
    with DataDirLock(tmp_path / "engram-ff.lock"):  # released: free again
        pass


def test_lock_held_in_process_refuses_a_second(tmp_path):
    with DataDirLock(tmp_path / "l"), pytest.raises(AlreadyRunning):
        DataDirLock(tmp_path / "l").acquire()
