"""One daemon per data directory."""

import os
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


def test_deleting_the_lock_file_does_not_let_a_second_daemon_in(tmp_path):
    """The lock is on the data directory too: removing the lock file under a running daemon (a tidy-up
    script, a user) must not let a second one start on the same database."""
    with DataDirLock(tmp_path / "engram-ff.lock"):
        (tmp_path / "engram-ff.lock").unlink()
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "from engram_ff.daemon.lock import DataDirLock; import sys; DataDirLock(sys.argv[1]).acquire()",
                str(tmp_path / "engram-ff.lock"),
            ],
            capture_output=True,
            text=True,
        )
        assert child.returncode != 0 and "already uses" in child.stderr
    with DataDirLock(tmp_path / "engram-ff.lock"):  # released: free again
        assert (tmp_path / "engram-ff.lock").read_text() == f"{os.getpid()}\n"
