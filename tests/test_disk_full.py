"""A full disk, imposed as RLIMIT_FSIZE on a real subprocess: clear errors, nothing damaged, recovery.

SIGXFSZ is ignored in the limited process, so a write past the limit fails with EFBIG where a write to a
full disk fails with ENOSPC. SQLite reports EFBIG as "disk I/O error" (ENOSPC: "database or disk is
full"), a checkpoint write raises OSError "File too large"; both take the same paths.
"""

import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engram_ff.bench.chaos import check_state, make_line
from engram_ff.daemon import update
from engram_ff.daemon.config import load_config
from engram_ff.daemon.layout import FOLDER_MARKER
from engram_ff.ingest.reader import catch_up
from engram_ff.model.checkpoint import load_checkpoint
from engram_ff.state.db import open_db
from tests.daemon_helpers import FAST, NotifySocket, environment, query, wait_for

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py says why

LIMITED = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""
KIB = 1024


def limited(limit: int, module: str, *args: str) -> list[str]:
    """The command line of `python -m module args` with writes capped at `limit` bytes a file."""
    return [sys.executable, "-c", LIMITED, str(limit), module, *args]


def write_lines(path, tag: str, n: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(b"".join(make_line(tag, i) for i in range(n)))


def setup(tmp_path):
    """A database with a first day ingested and trained on, closed (so its WAL is empty again)."""
    config = load_config(environ=FAST, data_dir=str(tmp_path / "data"), watch_dir=str(tmp_path / "engram"))
    write_lines(config.watch / "raw" / "2026-01-01.jsonl", "first", 300)
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    first = update.run_update(config)
    db.close()
    assert first["status"] == "ok"
    return config, first


def test_ingest_on_a_full_disk_fails_clearly_keeps_everything_and_resumes(tmp_path):
    config, _ = setup(tmp_path)
    for day in range(2, 6):  # about 2.4 MB of new lines, far past what the limit lets the WAL grow
        write_lines(config.watch / "raw" / f"2026-01-0{day}.jsonl", f"day{day}", 4000)
    args = ("ingest", "--watch", str(config.watch), "--data", str(config.data_dir))
    full = subprocess.run(
        limited(512 * KIB, "engram_ff.daemon.cli", *args),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert full.returncode == 1
    assert "the database refused a write (disk I/O error" in full.stderr and "Traceback" not in full.stderr
    assert "run it again once there is space" in full.stderr
    state = check_state(config.watch, config.data_dir)  # lines before each committed offset: once each
    assert state.ok and state.pending_bytes > 0, state
    assert state.current_checkpoint is not None
    again = subprocess.run(
        [sys.executable, "-m", "engram_ff.daemon.cli", *args],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    settled = check_state(config.watch, config.data_dir, settled=True)
    assert settled.ok and settled.stored == 300 + 4 * 4000


def test_a_checkpoint_write_on_a_full_disk_fails_the_update_and_keeps_the_previous(tmp_path):
    config, first = setup(tmp_path)
    write_lines(config.watch / "raw" / "2026-01-02.jsonl", "second", 300)
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    db.close()
    env = environment(ENGRAM_FF_DATA_DIR=str(config.data_dir), ENGRAM_FF_WATCH_DIR=str(config.watch))
    size = config.checkpoint_dir.joinpath(next(p.name for p in config.checkpoint_dir.glob("*.pt"))).stat().st_size
    full = subprocess.run(
        limited(size // 2, "engram_ff.daemon.child"), env=env, capture_output=True, text=True, timeout=120
    )
    assert full.returncode == 1, full.stderr
    assert "failed; the previous checkpoint stays current" in full.stderr and "File too large" in full.stderr
    ((status, error),) = query(
        config.db_path, "SELECT status, error FROM runs WHERE kind = 'update' ORDER BY id DESC LIMIT 1"
    )
    assert status == "failed" and "File too large" in error
    state = check_state(config.watch, config.data_dir, settled=True)
    assert state.ok and state.current_checkpoint == first["checkpoint_id"] and state.temp_files == 0
    first_file = Path(
        query(config.db_path, "SELECT path FROM checkpoints WHERE id = ?", [first["checkpoint_id"]])[0][0]
    )
    assert first_file.name.startswith(f"run000001-final-{first['steps']:07d}-")
    left = sorted(p.name for p in config.checkpoint_dir.iterdir())
    assert left == [FOLDER_MARKER, first_file.name, first_file.name + ".sha256"]
    ok = subprocess.run(
        [sys.executable, "-m", "engram_ff.daemon.child"], env=env, capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    ((status, checkpoint_id),) = query(
        config.db_path, "SELECT status, checkpoint_id FROM runs WHERE kind = 'update' ORDER BY id DESC LIMIT 1"
    )
    assert status == "ok" and load_checkpoint(
        query(config.db_path, "SELECT path FROM checkpoints WHERE id = ?", [checkpoint_id])[0][0]
    )


def _quiet(notify: NotifySocket, key: str, seconds: float) -> bool:
    """No message with `key` for `seconds`."""
    notify.collect()
    mark = len(notify.messages)
    time.sleep(seconds)
    notify.collect()
    return not any(key in m for m in notify.messages[mark:])


def test_the_running_daemon_retries_through_a_full_disk_and_recovers_when_space_returns(tmp_path):
    config, _ = setup(tmp_path)
    notify = NotifySocket(tmp_path / "notify.sock")
    env = environment(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1000000")
    log_path = tmp_path / "daemon.log"
    with open(log_path, "w") as log_file:
        daemon = subprocess.Popen(
            limited(
                256 * KIB, "engram_ff.daemon.cli", "run", "--watch", str(config.watch), "--data", str(config.data_dir)
            ),
            env=env,
            stderr=log_file,
        )
    try:
        notify.wait("READY", "1")
        for day in range(2, 5):
            write_lines(config.watch / "raw" / f"2026-01-0{day}.jsonl", f"day{day}", 3000)
        wait_for(
            lambda: _quiet(notify, "WATCHDOG", 1.5),
            timeout=60,
            what="the watchdog pings to stop: three failed reads in a row, so systemd would restart us",
        )
        assert query(config.db_path, "PRAGMA integrity_check") == [("ok",)]
        resource.prlimit(daemon.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        wait_for(
            lambda: query(config.db_path, "SELECT count(*) FROM messages")[0][0] == 300 + 3 * 3000,
            timeout=90,
            what="the lines to be stored once space returned",
        )
        notify.wait("WATCHDOG", "1", after=len(notify.messages))  # healthy again
    finally:
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=90)
        notify.close()
    log = log_path.read_text()
    assert code == 0
    assert "not stored, retrying in" in log and "OperationalError: disk I/O error" in log
    settled = check_state(config.watch, config.data_dir, settled=True)
    assert settled.ok and settled.stored == 300 + 3 * 3000


def test_run_update_commands_on_a_full_disk_say_so_in_one_line_and_record_what_they_can(tmp_path):
    config, first = setup(tmp_path)
    write_lines(config.watch / "raw" / "2026-01-02.jsonl", "second", 300)
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    db.close()
    args = ("--watch", str(config.watch), "--data", str(config.data_dir))
    size = next(config.checkpoint_dir.glob("*.pt")).stat().st_size

    def command(limit: int, name: str) -> subprocess.CompletedProcess:
        used = args if name == "update" else args[2:]  # probe never reads the watch folder: it takes no --watch
        return subprocess.run(
            limited(limit, "engram_ff.daemon.cli", name, *used), env=environment(), capture_output=True, text=True
        )

    # Room for the database's rows but not for the checkpoint: the run is recorded as failed.
    failed = command(size // 2, "update")
    assert failed.returncode == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert "update failed; the previous checkpoint stays current: OSError: [Errno 27] File too large" in failed.stderr
    newest = "SELECT status FROM runs WHERE kind = 'update' ORDER BY id DESC LIMIT 1"
    assert query(config.db_path, newest) == [("failed",)]
    before = query(config.db_path, "SELECT count(*) FROM runs")
    # Not even room for the run's first row: nothing can be recorded, and the line says why.
    said = {  # update reads the watch folder first (no daemon runs), so its first write is the ingest's
        "update": "engram-ff: ingest stopped: the database refused a write (disk I/O error; is the disk full?). "
        "Every line stored before is kept: run it again once there is space",
        "probe": f"engram-ff: the database {config.db_path} refused a write (disk I/O error): is the disk full? "
        "Nothing stored before is lost",
    }
    for name, line in said.items():
        full = command(KIB, name)
        assert full.returncode == 1 and full.stderr.splitlines()[-1] == line, full.stderr
        assert "Traceback" not in full.stderr
    assert query(config.db_path, "SELECT count(*) FROM runs") == before
    state = check_state(config.watch, config.data_dir, settled=True)
    assert state.ok and state.current_checkpoint == first["checkpoint_id"] and state.temp_files == 0
