"""The nightly update on several ranks: started by the update itself or by torchrun, on loopback only, and
as safe as one process when a rank is SIGKILLed. Real processes, real gloo sockets, a real database."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engram_ff.daemon import ranks, update
from engram_ff.daemon.config import ConfigError, load_config
from engram_ff.ingest.reader import catch_up
from engram_ff.model.checkpoint import load_checkpoint, load_model
from engram_ff.state import runs
from engram_ff.state.db import open_db
from tests.daemon_helpers import FAST, environment, query, wait_for, write_day

LOOPBACK = "0100007F"  # 127.0.0.1 as /proc/net/tcp writes it


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py says why


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def stopped(pid: int) -> bool:
    """SIGSTOP has taken effect: every thread is stopped. kill() returns before that: the kernel wakes one
    thread to carry the stop out, and until it gets a core (two busy cores) the others run on, gloo's
    among them, which can still answer a collective (rank 0's agreement to stop) that the process's
    main thread then never sees."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
        except OSError:  # a thread that exited
            continue
    return bool(states) and all(state == "T" for state in states)


def tcp_sockets(pid: int) -> list[tuple[str, str, str]]:
    """(local address, remote address, state) of every TCP socket the process holds; state 0A: listening."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                rows.append((fields[1], fields[2], fields[3]))
    return rows


def prepare(tmp_path, **env: str):
    config = load_config(
        environ={**FAST, **{f"ENGRAM_FF_{k.upper()}": v for k, v in env.items()}},
        data_dir=str(tmp_path / "data"),
        watch_dir=str(tmp_path / "engram"),
    )
    write_day(config.watch, "2026-01-01", 60)
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    return config, db


def start_child(config, **env: str) -> subprocess.Popen:
    """The daemon's update process on `workers = 2`, training for as long as the test lets it."""
    variables = {f"ENGRAM_FF_{k.upper()}": v for k, v in env.items()}
    return subprocess.Popen(
        [sys.executable, "-m", "engram_ff.daemon.child"],
        env=environment(
            ENGRAM_FF_DATA_DIR=str(config.data_dir),
            ENGRAM_FF_WATCH_DIR=str(config.watch),
            ENGRAM_FF_WORKERS="2",
            ENGRAM_FF_UPDATE_MIN_STEPS="100000",
            ENGRAM_FF_UPDATE_MAX_STEPS="100000",
            ENGRAM_FF_UPDATE_BUDGET_MINUTES="10",
            **variables,
        ),
        stderr=subprocess.PIPE,
        text=True,
    )


def training_helper(child: subprocess.Popen) -> int:
    """The child's helper rank, once it is connected to rank 0 (so training has begun)."""

    def connected():
        helpers = children(child.pid)
        return helpers and any(state == "01" for _, _, state in tcp_sockets(helpers[0])) and helpers[0]

    return wait_for(connected, timeout=120, what="the helper rank to connect")


def test_an_update_on_two_ranks_checkpoints_as_one_process_and_leaves_nothing_behind(tmp_path, caplog):
    config, db = prepare(tmp_path, workers="2")
    (config.data_dir / ".ranks-12345").mkdir()  # issue #20.3: every update failed with IsADirectoryError
    os.mkfifo(config.data_dir / ".ranks-12346")
    row = update.run_update(config)
    assert row["status"] == "ok" and row["steps"] == 40 and row["error"] is None
    path = query(config.db_path, "SELECT path FROM checkpoints WHERE id = ?", [row["checkpoint_id"]])[0][0]
    payload = load_checkpoint(path)
    assert payload["format"] == 2 and payload["meta"]["workers"] == 2 and payload["trainer_kind"] == "ff"
    assert load_model(path).model.config.n_layers == 2  # the one loader reads it, as generate and probes do
    assert query(config.db_path, "SELECT count(*) FROM probe_scores")[0][0] > 0
    # the rendezvous file is gone; what was not a rendezvous file is left, said once each
    assert sorted(p.name for p in config.data_dir.glob(".ranks-*")) == [".ranks-12345", ".ranks-12346"]
    assert caplog.text.count("is not a rendezvous file") == 2
    helpers = [pid for pid in children(os.getpid()) if b"engram_ff.daemon.ranks" in cmdline(pid) and alive(pid)]
    assert helpers == []  # and so is the helper
    db.close()


def test_ranks_listen_on_loopback_only_and_a_killed_rank_fails_the_update_cleanly(tmp_path):
    config, db = prepare(tmp_path, workers="1")
    first = update.run_update(config)
    write_day(config.watch, "2026-01-02", 60)
    catch_up(db, config.watch)

    child = start_child(config)
    helper = training_helper(child)
    sockets = tcp_sockets(child.pid) + tcp_sockets(helper)
    listening = [local for local, _, state in sockets if state == "0A"]
    assert listening and all(address.startswith(LOOPBACK) for address in listening), sockets
    assert all(remote.startswith(LOOPBACK) for _, remote, state in sockets if state == "01"), sockets

    os.kill(helper, signal.SIGKILL)
    assert child.wait(timeout=60) == 1  # at once: the dead rank's sockets close, no timeout is waited for
    err = child.stderr.read()
    assert "rank 1 of 2" in err and "Traceback" not in err and "GLHF" not in err  # one line, not gloo's text
    ((status, error),) = query(
        config.db_path, "SELECT status, error FROM runs WHERE kind = 'update' ORDER BY id DESC LIMIT 1"
    )
    assert status == "failed" and "killed by signal 9" in error
    assert runs.current_checkpoint(db)["id"] == first["checkpoint_id"]  # the previous model stays current
    db.close()


def test_a_killed_rank_0_takes_its_helper_along_and_the_update_resumes(tmp_path):
    config, db = prepare(tmp_path, workers="2")
    child = start_child(config, checkpoint_every_seconds="0.5")
    helper = training_helper(child)
    partial = wait_for(
        lambda: query(config.db_path, "SELECT steps FROM checkpoints WHERE kind = 'partial'"), what="a checkpoint"
    )
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    wait_for(lambda: not alive(helper), timeout=10, what="the helper rank to die with rank 0")

    steps_done = partial[-1][0]
    config.update_min_steps = config.update_max_steps = steps_done + 20
    config.update_budget_minutes = 10  # the steps bind, not the time: under load the killed try used FAST's 30 s
    resumed = update.run_update(config)
    assert resumed["status"] == "ok" and resumed["resumed_from"] == 1
    assert resumed["steps"] >= steps_done + 20
    db.close()


def test_torchrun_runs_the_same_update_on_three_local_ranks(tmp_path):
    config, db = prepare(tmp_path, batch_size="6")
    db.close()
    env = environment(ENGRAM_FF_BATCH_SIZE="6", ENGRAM_FF_DATA_DIR=str(config.data_dir))
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3"]
        + ["-m", "engram_ff.daemon.cli", "update", "--watch", str(config.watch)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    ((status, checkpoint_id),) = query(config.db_path, "SELECT status, checkpoint_id FROM runs WHERE kind = 'update'")
    path = query(config.db_path, "SELECT path FROM checkpoints WHERE id = ?", [checkpoint_id])[0][0]
    assert status == "ok" and load_checkpoint(path)["meta"]["workers"] == 3


@pytest.mark.parametrize("cores, batch, expected", [(1, 16, 1), (2, 16, 2), (3, 16, 2), (16, 16, 4), (16, 12, 3)])
def test_auto_workers_is_one_rank_a_core_while_each_keeps_four_rows(monkeypatch, cores, batch, expected):
    monkeypatch.setattr(ranks, "usable_cores", lambda: cores)
    assert ranks.resolve_workers(load_config(environ={"ENGRAM_FF_BATCH_SIZE": str(batch)})) == expected


@pytest.mark.parametrize(
    "env, message",
    [
        ({"ENGRAM_FF_WORKERS": "3"}, "cannot share batch_size = 16"),
        ({"ENGRAM_FF_WORKERS": "0"}, "number of ranks >= 1"),
        ({"ENGRAM_FF_WORKERS": "lots"}, "number of ranks >= 1"),
        ({"ENGRAM_FF_WORKERS": "16", "ENGRAM_FF_REPLAY_LAYERS": "upper"}, "at least 2 x workers"),
    ],
)
def test_bad_workers_are_refused_with_the_reason(env, message):
    with pytest.raises(ConfigError, match=message):
        load_config(environ=env)


def test_sigterm_ends_an_update_whose_helper_rank_is_stopped_and_leaves_no_process(tmp_path):
    """Issue #20.2: a SIGSTOPped helper held rank 0 in a collective, deaf to SIGTERM, and outlived it."""
    config, db = prepare(tmp_path, workers="2")
    child = start_child(config, checkpoint_every_seconds="0.5")
    helper = training_helper(child)
    wait_for(lambda: query(config.db_path, "SELECT 1 FROM checkpoints WHERE kind = 'partial'"), what="a checkpoint")
    os.kill(helper, signal.SIGSTOP)
    try:
        wait_for(lambda: stopped(helper), what="the helper to stop")  # else it may agree to stop, then stop
        child.send_signal(signal.SIGTERM)
        code = child.wait(timeout=60)  # STOP_GRACE_S (10 s) and a step: generous for two busy cores
    finally:
        if alive(helper):
            os.kill(helper, signal.SIGKILL)
        if child.poll() is None:
            child.kill()
    err = child.stderr.read()
    assert code == update.EXIT_CODES["interrupted"], err[-2000:]
    assert not alive(helper)  # killed with its process group, not orphaned
    # apart: in one `and`, pytest explains a `not in` that held as "'Traceback' is contained here"
    assert "Traceback" not in err, err[-3000:]
    assert "did not answer" in err, err[-3000:]
    ((status, error, checkpoint),) = query(
        config.db_path, "SELECT status, error, checkpoint_id FROM runs WHERE kind = 'update' ORDER BY id DESC LIMIT 1"
    )
    assert status == "interrupted" and "rank 1 of 2" in error and "stopped" in error and checkpoint is not None
    config.workers = "1"
    resumed = update.run_update(config)  # from its last partial checkpoint: nothing trained is lost
    assert resumed["status"] in ("ok", "rejected") and resumed["resumed_from"] is not None
    db.close()


@pytest.mark.parametrize("trainer", ["ff", "bp"])
def test_the_budget_ends_an_update_whose_helper_rank_hangs(tmp_path, monkeypatch, trainer):
    """No signal at all: past the budget the collective gives up (FF's, waited for in small steps) or the
    watchdog ends the helpers (BP's, inside DistributedDataParallel; but a BP helper stopped at one of the
    waited collectives outside it, as under a loaded CI runner, is given up there first, also past the
    budget); the helper is killed, the run failed."""
    monkeypatch.setattr(ranks, "BUDGET_GRACE_S", 2.0)
    config, db = prepare(tmp_path, workers="2", trainer=trainer)
    config.update_min_steps = config.update_max_steps = 100_000
    config.update_budget_minutes = 0.1  # 6 s of training
    stopped = []

    def stop_the_helper():
        def connected():
            helpers = [p for p in children(os.getpid()) if b"engram_ff.daemon.ranks" in cmdline(p) and alive(p)]
            return helpers and any(state == "01" for _, _, state in tcp_sockets(helpers[0])) and helpers[0]

        pid = wait_for(connected, timeout=120, what="the helper rank to connect")
        os.kill(pid, signal.SIGSTOP)
        stopped.append(pid)

    thread = threading.Thread(target=stop_the_helper, daemon=True)
    thread.start()
    try:
        row = update.run_update(config)
    finally:
        thread.join(5)
        for pid in stopped:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert stopped and not alive(stopped[0])
    assert row["status"] == "failed" and "RankFailed" in row["error"]
    if trainer == "ff":
        assert "did not answer" in row["error"], row["error"]
    else:
        assert "past the budget" in row["error"] or "past the update's budget" in row["error"], row["error"]
    assert row["wall_seconds"] < 120
    db.close()


def test_the_daemon_tries_the_night_again_on_one_process_when_a_rank_dies_and_says_it_in_one_line(
    tmp_path, capfd, caplog
):
    """Issue #20, rank kills: gloo's text and a traceback reached the log, and the night was lost."""
    from engram_ff.daemon.service import Service

    config, db = prepare(tmp_path, workers="2")
    config.update_min_steps = config.update_max_steps = 100_000
    config.update_budget_minutes = 0.2
    service = Service(config, lambda: config)
    done = []
    thread = threading.Thread(target=lambda: done.append(service.run_update()), daemon=True)
    thread.start()
    try:
        child = wait_for(lambda: service.child, timeout=60, what="the update child")
        helper = training_helper(child)
        os.kill(helper, signal.SIGKILL)
        thread.join(300)
    finally:
        if service.child is not None and service.child.poll() is None:
            service.child.kill()
    assert done and done[0] in (0, 4)  # the retry's code: promoted, or judged and rejected
    rows = query(config.db_path, "SELECT status, error FROM runs WHERE kind = 'update' ORDER BY id")
    assert rows[0][0] == "failed" and rows[0][1].startswith("RankFailed") and "killed by signal 9" in rows[0][1]
    assert rows[1][0] in ("ok", "rejected")  # the same night, on one process
    err = capfd.readouterr().err
    assert "Traceback" not in err and "GLHF" not in err and ".cc:" not in err and ".cpp:" not in err, err[-3000:]
    assert "trying the night again on one process" in err + caplog.text  # the log: pytest's capture, or stderr
    assert service.last_update.startswith("update 2 (run 2)")
    db.close()
