"""Issue #20's cases "not yet tried": `update` while `run` holds the data directory, two `run`s started
in the same second, and another local process connecting to the ranks' gloo port during their
rendezvous. Real daemons and update children as subprocesses, real sockets; each case ends in one line
and an exit code, and every line written is stored once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

from engram_ff.daemon.lock import holder
from tests.daemon_helpers import environment, query, wait_for, write_day
from tests.test_ranks import alive, prepare, tcp_sockets

LINES = 200


def daemon(watch, data, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "engram_ff.daemon.cli", "run", "--watch", str(watch), "--data", str(data)]
    return subprocess.Popen(cmd, env=environment(**env), stderr=subprocess.PIPE, text=True)


def stop(process: subprocess.Popen) -> tuple[int, str]:
    """SIGTERM, then its exit code and what it said; SIGKILL if it does not stop (the test then fails)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return code, process.stderr.read()


def messages(db_path) -> int:
    """How many messages are stored (0 while the database or its tables are not there yet)."""
    return (query(db_path, "SELECT count(*) FROM messages") or [(0,)])[0][0]


def stored_once(db_path) -> None:
    (count, distinct) = query(db_path, "SELECT count(*), count(DISTINCT text) FROM messages")[0]
    assert count == distinct == LINES


def test_update_while_run_holds_the_data_directory_is_one_line_and_harms_nothing(tmp_path):
    watch, data = tmp_path / "engram", tmp_path / "data"
    write_day(watch, "2026-01-01", LINES)
    running = daemon(watch, data)
    try:
        wait_for(lambda: holder(data / "engram-ff.lock"), timeout=120, what="the daemon to hold the data directory")
        wait_for(lambda: messages(data / "engram-ff.db") == LINES, timeout=120, what="every line stored")
        update = subprocess.run(
            [sys.executable, "-m", "engram_ff.daemon.cli", "update", "--watch", str(watch), "--data", str(data)],
            env=environment(),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert running.poll() is None  # the daemon goes on
    finally:
        code, err = stop(running)
    assert update.returncode == 1 and update.stdout == ""
    assert update.stderr.count("\n") == 1 and "already uses" in update.stderr
    assert "does the updates" in update.stderr
    assert code == 0 and "Traceback" not in err
    stored_once(data / "engram-ff.db")


def test_two_runs_started_in_the_same_second_one_runs_the_other_says_why(tmp_path):
    watch, data = tmp_path / "engram", tmp_path / "data"
    write_day(watch, "2026-01-01", LINES)
    first, second = daemon(watch, data), daemon(watch, data)  # within milliseconds, on a data dir not made yet
    try:
        loser = wait_for(
            lambda: next((p for p in (first, second) if p.poll() is not None), None), timeout=120, what="one to exit"
        )
        winner = second if loser is first else first
        wait_for(lambda: messages(data / "engram-ff.db") == LINES, timeout=120, what="every line stored")
        assert winner.poll() is None
    finally:
        results = {p.pid: stop(p) for p in (first, second)}
    lost_code, lost_err = results[loser.pid]
    assert lost_code == 1 and lost_err.count("\n") == 1 and "already uses" in lost_err
    won_code, won_err = results[winner.pid]
    assert won_code == 0 and "Traceback" not in won_err
    stored_once(data / "engram-ff.db")


def test_a_stranger_connecting_to_the_gloo_port_during_the_rendezvous_changes_nothing(tmp_path):
    """Another local user can reach 127.0.0.1: connections to rank 0's listening port made while the
    helper is still starting (junk sent, or nothing at all) must neither break the update nor hang it."""
    config, db = prepare(tmp_path, workers="1")
    db.close()
    env = environment(
        ENGRAM_FF_DATA_DIR=str(config.data_dir), ENGRAM_FF_WATCH_DIR=str(config.watch), ENGRAM_FF_WORKERS="2"
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "engram_ff.daemon.child"], env=env, stderr=subprocess.PIPE, text=True
    )
    strangers: list[socket.socket] = []
    seen: set[int] = set()
    before_the_helper: list[bool] = []  # whether rank 0 held no connection yet at each knock
    done = threading.Event()

    def knock() -> None:
        """Connect to every port rank 0 listens on, as soon as it does, until the update ends."""
        while not done.is_set() and child.poll() is None:
            sockets = tcp_sockets(child.pid) if alive(child.pid) else []
            for local, _, state in sockets:
                port = int(local.split(":")[1], 16)
                if state == "0A" and port not in seen:
                    seen.add(port)
                    before_the_helper.append(not any(state == "01" for _, _, state in sockets))
                    for junk in (b"\x00" * 64 + b"GET / HTTP/1.0\r\n\r\n", b""):
                        s = socket.create_connection(("127.0.0.1", port), timeout=5)
                        if junk:
                            s.sendall(junk)
                        strangers.append(s)
            time.sleep(0.005)

    thread = threading.Thread(target=knock, daemon=True)
    thread.start()
    try:
        code = child.wait(timeout=300)
    finally:
        done.set()
        thread.join(10)
        for s in strangers:
            s.close()
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
    err = child.stderr.read()
    assert seen and any(before_the_helper), "no knock came during the rendezvous: nothing was tried"
    ((status, error),) = query(config.db_path, "SELECT status, error FROM runs WHERE kind = 'update'")
    assert code in (0, 4) and status in ("ok", "rejected"), (status, error, err[-2000:])
    assert "Traceback" not in err
