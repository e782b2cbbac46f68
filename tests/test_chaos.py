"""SIGKILL at random instants, a daemon whose update outlives it, no network, checkpoint leftovers.

The trials use the harness of `engram-ff bench chaos` (bench/chaos.py), which runs 50 of them; here a
handful, seeded, one per kind of instant, on one data directory that each kill leaves as it is.
"""

import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engram_ff.bench.chaos import Chaos, check_state
from engram_ff.daemon import update
from engram_ff.daemon.config import load_config
from engram_ff.daemon.layout import FOLDER_MARKER
from engram_ff.ingest.reader import catch_up
from engram_ff.model.checkpoint import load_checkpoint
from engram_ff.state import runs
from engram_ff.state.db import open_db
from tests.daemon_helpers import FAST, NotifySocket, environment, query, wait_for, write_day

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py says why


def test_sigkill_at_random_instants_loses_nothing_and_updates_resume(tmp_path):
    chaos = Chaos(tmp_path, seed=7, burst_lines=300)
    plan = ["training", "update-start", "checkpoint", "probes", "ingest", "rotation", "uniform"]
    for trigger in plan:
        trial = chaos.trial(trigger)
        assert trial.triggered, trigger
        c = trial.check
        assert c.ok, (trigger, c)
        assert (c.lost, c.duplicated, c.phantom, c.integrity) == (0, 0, 0, "ok")
        if trigger in ("training", "checkpoint", "probes", "ingest"):
            assert trigger in trial.phases, (trigger, trial.phases)
    # the update killed mid-training left partial checkpoints; the one after it died before its own
    # first checkpoint; the update after that must still resume from the first one
    first = query(chaos.db, "SELECT id FROM runs WHERE kind = 'update' ORDER BY id LIMIT 1")[0][0]
    final = chaos.settle()
    assert final.ok and final.pending_bytes == 0
    assert final.expected == final.stored == chaos.writer.counter  # every line written, stored once
    assert chaos.resume_errors == [] and chaos.resumes_checked >= 2
    assert query(chaos.db, "SELECT count(*) FROM runs WHERE resumed_from = ?", [first])[0][0] >= 2
    assert final.current_checkpoint is not None and final.temp_files == 0
    left = {p.name for p in (chaos.data / "checkpoints").iterdir()}
    assert not [name for name in left if "partial" in name or name.endswith(".tmp")], left
    assert chaos.recoveries() >= 4


def test_an_update_killed_before_its_first_checkpoint_is_resumed_from_the_one_before(tmp_path):
    config = load_config(environ=FAST, data_dir=str(tmp_path / "data"), watch_dir=str(tmp_path / "engram"))
    write_day(config.watch, "2026-01-01", 60)
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    calls = {"n": 0}

    def stop_soon():
        calls["n"] += 1
        return calls["n"] > 8

    first = update.run_update(config, should_stop=stop_soon)
    assert first["status"] == "interrupted"
    # the resumed update dies (SIGKILL) before it writes a checkpoint of its own
    died = runs.start_run(db, "update", resumed_from=first["id"])
    db.execute("UPDATE runs SET status = 'interrupted' WHERE id = ?", [died])
    db.conn.commit()
    third = update.run_update(config)
    assert third["status"] == "ok" and third["resumed_from"] == first["id"]
    assert third["first_message_id"] == 0 and third["steps"] > 8
    db.close()


def test_a_successful_update_removes_every_partial_and_what_killed_writes_left_and_nothing_else(tmp_path, caplog):
    config = load_config(environ=FAST, data_dir=str(tmp_path / "data"), watch_dir=str(tmp_path / "engram"))
    write_day(config.watch, "2026-01-01", 60)
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    stops = iter([False] * 6 + [True] * 100)
    interrupted = update.run_update(config, should_stop=lambda: next(stops))
    folder = config.checkpoint_dir
    (folder / ".run000009-partial-0000001-0badf00d.pt.abcd1234.tmp").write_bytes(b"half a checkpoint")
    killed = folder / "run000001-partial-0000009-0badf00d.pt"  # named before its write, row never committed
    runs.begin_checkpoint_write(db, str(killed), interrupted["id"])
    killed.write_bytes(b"written, but its row never committed")
    foreign = folder / "run000003-final-0000200-8badf00d.pt"  # a file this database did not write
    shutil.copy(next(folder.glob("*.pt")), foreign)
    caplog.set_level(logging.INFO)
    done = update.run_update(config)
    assert done["status"] == "ok" and done["resumed_from"] == interrupted["id"]
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [foreign.name, FOLDER_MARKER]  # the marker that says engram-ff made the folder (for `reset`)
        + [
            Path(path).name + suffix
            for (path,) in db.execute("SELECT path FROM checkpoints WHERE status = 'good'")
            for suffix in ("", ".sha256")
        ]
    )
    assert [row[0] for row in db.execute("SELECT DISTINCT kind FROM checkpoints WHERE status = 'good'")] == ["final"]
    assert runs.unfinished_checkpoint_writes(db) == []
    assert f"keeping 1 checkpoint file(s) in {folder} that this database did not write: {foreign.name}" in caplog.text
    db.close()


def _running(pid: int) -> bool:
    """pid exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _update_pid(db_path: Path) -> int:
    return wait_for(
        lambda: (
            query(
                db_path,
                "SELECT pid FROM runs r JOIN checkpoints c ON c.run_id = r.id "
                "WHERE r.status = 'running' AND c.kind = 'partial'",
            )
            or [[None]]
        )[0][0],
        timeout=90,
        what="an update with a partial checkpoint",
    )


def test_killing_only_the_daemon_stops_its_update_which_the_next_daemon_resumes(tmp_path):
    """Outside systemd's cgroup a SIGKILL reaches the daemon alone; its update child must not train on
    unsupervised beside the next daemon's update: it checkpoints and stops."""
    watch, data = tmp_path / "engram", tmp_path / "data"
    db = data / "engram-ff.db"
    write_day(watch, "2026-01-01", 200)
    env = environment(
        ENGRAM_FF_UPDATE_MIN_STEPS="100000",
        ENGRAM_FF_UPDATE_MAX_STEPS="100000",
        ENGRAM_FF_UPDATE_BUDGET_MINUTES="5",
        ENGRAM_FF_CHECKPOINT_EVERY_SECONDS="0.2",
    )
    cmd = [sys.executable, "-m", "engram_ff.daemon.cli", "run", "--watch", str(watch), "--data", str(data)]
    daemon = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    child = _update_pid(db)
    try:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
        wait_for(lambda: not _running(child), timeout=30, what="the orphaned update to stop")
    finally:
        if _running(child):
            os.kill(child, signal.SIGKILL)
    ((run_id, status, error),) = query(db, "SELECT id, status, error FROM runs WHERE kind = 'update'")
    assert (status, error) == ("interrupted", "stopped by a signal")  # recorded by the update itself
    restarted = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(
            lambda: query(db, "SELECT 1 FROM runs WHERE kind = 'update' AND resumed_from = ?", [run_id]),
            timeout=60,
            what="the next update to resume",
        )
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(timeout=90) == 0


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _inodes_in(table: Path) -> set[str]:
    """The inode column of a /proc/net table (tcp, udp, raw, unix...)."""
    if not table.exists():
        return set()
    lines = table.read_text().splitlines()
    column = lines[0].split().index("inode") if "inode" in lines[0].split() else -1
    return {line.split()[column] for line in lines[1:] if line.split()}


def test_the_daemon_and_its_update_open_no_network_socket(tmp_path):
    watch, data = tmp_path / "engram", tmp_path / "data"
    write_day(watch, "2026-01-01", 200)
    notify = NotifySocket(tmp_path / "notify.sock")
    env = environment(
        NOTIFY_SOCKET=notify.path,
        ENGRAM_FF_UPDATE_MIN_STEPS="100000",
        ENGRAM_FF_UPDATE_MAX_STEPS="100000",
        ENGRAM_FF_CHECKPOINT_EVERY_SECONDS="0.2",
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "engram_ff.daemon.cli", "run", "--watch", str(watch), "--data", str(data)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    try:
        notify.wait("READY", "1")
        child = _update_pid(data / "engram-ff.db")  # training: torch loaded, checkpoints being written
        net = Path(f"/proc/{daemon.pid}/net")
        network = set().union(
            *(
                _inodes_in(net / name)
                for name in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "udplite", "udplite6", "packet")
            )
        )
        unix = _inodes_in(net / "unix")
        for pid in (daemon.pid, child):
            sockets = _socket_inodes(pid)
            assert not sockets & network, f"pid {pid} holds a network socket"
            assert sockets <= unix, f"pid {pid} holds sockets that are not unix sockets: {sockets - unix}"
        assert _socket_inodes(daemon.pid), "expected at least the notify socket"  # the check sees sockets
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=90) == 0
        notify.close()


def test_a_torn_current_checkpoint_is_passed_over_by_the_daemons_update(tmp_path):
    """A checkpoint cut short on disk (test_update flips a bit in-process; here the daemon's own child)."""
    config = load_config(environ=FAST, data_dir=str(tmp_path / "data"), watch_dir=str(tmp_path / "engram"))
    write_day(config.watch, "2026-01-01", 60)
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    good = update.run_update(config)
    write_day(config.watch, "2026-01-02", 30)
    catch_up(db, config.watch)
    torn = update.run_update(config)
    path = Path(db.execute("SELECT path FROM checkpoints WHERE id = ?", [torn["checkpoint_id"]]).fetchone()[0])
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    write_day(config.watch, "2026-01-03", 30)
    catch_up(db, config.watch)
    db.close()
    env = environment(ENGRAM_FF_DATA_DIR=str(config.data_dir), ENGRAM_FF_WATCH_DIR=str(config.watch))
    child = subprocess.run(
        [sys.executable, "-m", "engram_ff.daemon.child"], env=env, capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 0, child.stderr
    assert f"checkpoint {path} is unusable" in child.stderr and "falling back" in child.stderr
    ((run_id, parent, status),) = query(
        config.db_path,
        "SELECT id, parent_checkpoint_id, status FROM runs WHERE kind = 'update' ORDER BY id DESC LIMIT 1",
    )
    assert (parent, status) == (good["checkpoint_id"], "ok")
    assert query(config.db_path, "SELECT status FROM checkpoints WHERE id = ?", [torn["checkpoint_id"]]) == [
        ("corrupt",)
    ]
    state = check_state(config.watch, config.data_dir)
    assert state.bad_checkpoints == [] and state.integrity == "ok"
    current = query(config.db_path, "SELECT path FROM checkpoints WHERE id = ?", [state.current_checkpoint])[0][0]
    assert load_checkpoint(current)["meta"]["run_id"] == run_id


def test_a_run_whose_pid_is_a_zombie_or_was_reused_counts_as_dead(tmp_path):
    """After a kill the pid may linger as a zombie until reaped, and after a reboot it may belong to
    another process: either way the run is over and must be marked interrupted, so it can be resumed."""
    db = open_db(tmp_path / "state.db")
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(
        lambda: Path(f"/proc/{zombie.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z",
        what="the child to exit (and stay unreaped)",
    )
    reused = subprocess.Popen(["sleep", "30"])  # alive, but started after the run below
    alive = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(1.1)
        ids = {}
        for name, pid, started in (
            ("zombie", zombie.pid, runs.now()),
            ("reused", reused.pid, "2026-01-01T00:00:00+00:00"),
            ("alive", alive.pid, runs.now()),
        ):
            ids[name] = runs.start_run(db, "update")
            db.execute("UPDATE runs SET pid = ?, started_at = ? WHERE id = ?", [pid, started, ids[name]])
        db.conn.commit()
        assert sorted(runs.mark_dead_runs_interrupted(db)) == sorted([ids["zombie"], ids["reused"]])
        assert db.execute("SELECT status FROM runs WHERE id = ?", [ids["alive"]]).fetchone()[0] == "running"
    finally:
        for proc in (zombie, reused, alive):
            proc.kill()
            proc.wait()
        db.close()


# --- a database the update cannot write: one line, exit 1, never a traceback -------------------------
def _trained(tmp_path):
    config = load_config(environ=FAST, data_dir=str(tmp_path / "data"), watch_dir=str(tmp_path / "engram"))
    write_day(config.watch, "2026-01-01", 60)
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    assert update.run_update(config)["status"] == "ok"
    write_day(config.watch, "2026-01-02", 30)
    catch_up(db, config.watch)
    db.close()
    return config


def _cli(config, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "engram_ff.daemon.cli", *args, "--data", str(config.data_dir)],
        env=environment(ENGRAM_FF_WATCH_DIR=str(config.watch)),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_run_update_on_an_immutable_database_say_so_in_one_line(tmp_path):
    config = _trained(tmp_path)
    if os.geteuid() == 0:  # root writes through file permissions, not through chattr +i
        if subprocess.run(["chattr", "+i", str(config.db_path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported on this file system")
        undo = ["chattr", "-i", str(config.db_path)]
    else:
        config.db_path.chmod(0o444)
        undo = ["chmod", "644", str(config.db_path)]
    before = query(config.db_path, "SELECT count(*) FROM runs")
    try:
        results = [_cli(config, "update"), _cli(config, "probe")]
    finally:
        subprocess.run(undo, check=True)
    for done in results:
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        last = done.stderr.splitlines()[-1]  # update says that its first step, reading the folder, stopped
        assert last.startswith("engram-ff: ") and last.endswith(
            f"the database {config.db_path} is read-only (attempt to write a readonly database): check "
            "its permissions, `lsattr` (chattr +i) and whether its file system is mounted read-only"
        )
    assert query(config.db_path, "SELECT count(*) FROM runs") == before  # the first update (and its probes) alone


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a read-only bind mount needs root")
def test_run_update_on_a_read_only_mount_say_so_in_one_line(tmp_path):
    config = _trained(tmp_path)
    data = str(config.data_dir)
    read_only = (
        "unshare",
        "-m",
        "sh",
        "-c",
        f'mount --bind {data} {data} && mount -o remount,bind,ro {data} && exec "$@"',
        "sh",
    )
    update_done, probe_done = _cli(config, "update", prefix=read_only), _cli(config, "probe", prefix=read_only)
    for done in (update_done, probe_done):  # neither creates anything
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    # update stops at the data directory's lock, which it takes to read the folder first; probe at the database
    assert update_done.stderr.splitlines()[-1] == f"engram-ff: {config.lock_path}: Read-only file system"
    assert probe_done.stderr.splitlines()[-1].startswith(
        f"engram-ff: the database {config.db_path} cannot be opened (unable to open database file): SQLite must"
    )


def test_run_update_on_a_database_locked_past_the_busy_timeout_say_so_in_one_line(tmp_path, monkeypatch, capsys):
    """Another writer holds the database (a `sqlite3` shell inside BEGIN IMMEDIATE): after the busy timeout,
    shortened here from 30 s, one line and exit 1; nothing could be recorded, nothing is damaged."""
    from engram_ff.daemon.cli import main
    from engram_ff.state import db as state_db

    config = _trained(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_WRITE_LOCK, str(config.db_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        monkeypatch.setattr(state_db, "BUSY_TIMEOUT_MS", 500)
        for command in ("update", "probe"):
            assert main([command, "--data", str(config.data_dir)]) == 1
            err = capsys.readouterr().err
            assert "Traceback" not in err and err.splitlines()[-1].startswith(
                f"engram-ff: the database {config.db_path} stayed locked by another program for over 30 s "
                "(database is locked)"
            ), err
    finally:
        holder.kill()
        holder.wait()
    assert query(config.db_path, "SELECT count(*) FROM runs") == [(2,)]  # the first update and its probe pass
    assert query(config.db_path, "PRAGMA integrity_check") == [("ok",)]


HOLD_WRITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("holding", flush=True)
time.sleep(600)
"""


def test_a_lost_database_keeps_every_checkpoint_and_the_next_update_continues_from_the_newest(tmp_path):
    """The database deleted (or lost with its disk): `ingest` then `update`, as a user would run them,
    continue from the newest final checkpoint on disk, train only on what came after it, and neither
    delete nor overwrite any file the lost database wrote."""
    config = load_config(environ=FAST, data_dir=str(tmp_path / "data"), watch_dir=str(tmp_path / "engram"))
    write_day(config.watch, "2026-01-01", 60)
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    update.run_update(config)
    write_day(config.watch, "2026-01-02", 30)
    catch_up(db, config.watch)
    newest = update.run_update(config)
    newest_path = db.execute("SELECT path FROM checkpoints WHERE id = ?", [newest["checkpoint_id"]]).fetchone()[0]
    db.close()
    before = {path.name: path.read_bytes() for path in config.checkpoint_dir.iterdir()}
    for suffix in ("", "-wal", "-shm"):
        Path(f"{config.db_path}{suffix}").unlink(missing_ok=True)

    write_day(config.watch, "2026-01-03", 30)
    env = environment(ENGRAM_FF_DATA_DIR=str(config.data_dir), ENGRAM_FF_WATCH_DIR=str(config.watch))
    open_db(config.db_path).close()  # a new, empty database, as a starting daemon makes before its first scan
    said = ""
    for command in ("ingest", "update"):  # the update adopts what the checkpoint folder holds, then trains
        done = subprocess.run(
            [sys.executable, "-m", "engram_ff.daemon.cli", command], env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        said += done.stderr
    assert f"holds 2 from an earlier one: continuing from {Path(newest_path).name}" in said
    assert query(config.db_path, "SELECT status FROM runs WHERE kind = 'update' ORDER BY id") == [("ok",)]

    after = {path.name: path for path in config.checkpoint_dir.iterdir()}
    assert all(after[name].read_bytes() == data for name, data in before.items())  # kept, none overwritten
    ((parent, first_id, last_id),) = query(
        config.db_path,
        "SELECT parent_checkpoint_id, first_message_id, last_message_id FROM runs "
        "WHERE kind = 'update' AND status = 'ok'",
    )
    assert query(config.db_path, "SELECT path FROM checkpoints WHERE id = ?", [parent]) == [(newest_path,)]
    day_2_ends, day_3_ends = (
        query(config.db_path, "SELECT max(id) FROM messages WHERE day <= ? AND split = 'train'", [day])[0][0]
        for day in ("2026-01-02", "2026-01-03")
    )
    assert (first_id, last_id) == (day_2_ends, day_3_ends)  # exactly the day that came after the checkpoint
    assert query(config.db_path, "SELECT kind, status, last_message_id FROM runs WHERE kind = 'adopt'") == [
        ("adopt", "ok", day_2_ends)
    ]


def test_a_helper_rank_killed_or_stopped_under_the_daemon(tmp_path):
    """Issue #20 against the real daemon on 2 ranks: a SIGKILLed helper fails its update in one line and
    the daemon tries the night again on one process; a SIGSTOPped helper does not keep SIGTERM from
    stopping the daemon well inside TimeoutStopSec, and no process outlives it. Nothing is lost."""
    chaos = Chaos(tmp_path, seed=3, burst_lines=200)
    for trigger in ("rank-kill", "rank-stop"):
        trial = chaos.trial(trigger, timeout=180)
        assert trial.triggered, trigger
        assert trial.check.ok and (trial.check.lost, trial.check.duplicated) == (0, 0), (trigger, trial.check)
    assert chaos.rank_kills == ["failed (RankFailed), then retried"]
    ((seconds, left),) = chaos.rank_stops
    assert seconds < 90 and left == 0
    final = chaos.settle()
    assert final.ok and final.expected == final.stored == chaos.writer.counter
    assert chaos.log_count("Traceback (most recent call last)") == 0 and chaos.log_count(".cc:", "GLHF") == 0
