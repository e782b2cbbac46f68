"""Ctrl-C on `engram-ff update`: one line, a partial checkpoint, and the run marked interrupted at once."""

import signal
import subprocess
import sys

from engram_ff.model.checkpoint import load_checkpoint
from tests.daemon_helpers import environment, query, wait_for, write_day


def test_ctrl_c_saves_a_partial_checkpoint_and_says_so_in_one_line(tmp_path):
    data, watch = tmp_path / "data", tmp_path / "engram"
    write_day(watch, "2026-01-01", 200)
    env = environment(
        ENGRAM_FF_UPDATE_MIN_STEPS="100000",
        ENGRAM_FF_UPDATE_MAX_STEPS="100000",
        ENGRAM_FF_UPDATE_BUDGET_MINUTES="10",
        ENGRAM_FF_CHECKPOINT_EVERY_SECONDS="1000",  # no partial checkpoint but the one Ctrl-C asks for
    )
    cli = [sys.executable, "-m", "engram_ff.daemon.cli"]
    assert subprocess.run([*cli, "ingest", "--watch", str(watch), "--data", str(data)], env=env).returncode == 0
    update = subprocess.Popen([*cli, "update", "--data", str(data)], env=env, stderr=subprocess.PIPE, text=True)
    db = data / "engram-ff.db"
    wait_for(lambda: query(db, "SELECT 1 FROM runs WHERE status = 'running'"), what="the update to start")
    update.send_signal(signal.SIGINT)
    _, err = update.communicate(timeout=60)
    assert update.returncode == 3, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    ((status, steps, checkpoint_id),) = query(db, "SELECT status, steps, checkpoint_id FROM runs WHERE kind = 'update'")
    assert status == "interrupted"
    assert err.splitlines()[-1] == (
        f"engram-ff: update 1 (run 1) interrupted at step {steps}: its partial checkpoint is saved and the next update "
        "resumes from it"
    )
    ((kind, path),) = query(db, "SELECT kind, path FROM checkpoints WHERE id = ?", [checkpoint_id])
    assert kind == "partial" and load_checkpoint(path)["meta"]["run_id"] == 1


def test_a_second_ctrl_c_leaves_no_run_running_and_no_rendezvous_file(tmp_path):
    """The second Ctrl-C raises KeyboardInterrupt wherever the update is (here: in a step, with a helper rank
    training beside it): its run is marked interrupted and the ranks' rendezvous file is removed."""
    import pytest

    from engram_ff.daemon.config import load_config
    from engram_ff.daemon.progress import Progress
    from engram_ff.daemon.update import run_update
    from engram_ff.ingest.reader import catch_up
    from engram_ff.state.db import open_db
    from tests.daemon_helpers import FAST

    config = load_config(
        environ={
            **FAST,
            "ENGRAM_FF_WORKERS": "2",
            "ENGRAM_FF_UPDATE_MIN_STEPS": "1000",
            "ENGRAM_FF_UPDATE_MAX_STEPS": "1000",
        },
        data_dir=str(tmp_path / "data"),
        watch_dir=str(tmp_path / "engram"),
    )
    write_day(config.watch, "2026-01-01", 200)
    catch_up(open_db(config.db_path), config.watch)

    class SecondCtrlC(Progress):
        def step(self, step, losses, result):
            assert list(config.data_dir.glob(".ranks-*")), "two ranks meet through a rendezvous file"
            if step == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_update(config, progress=SecondCtrlC())
    db = config.db_path
    assert query(db, "SELECT status, error FROM runs") == [("interrupted", "given up at once by a second Ctrl-C")]
    assert not list(config.data_dir.glob(".ranks-*"))


def test_the_second_signal_raises_and_later_ones_wait_for_the_cleanup():
    import os

    import pytest

    from engram_ff.daemon.commands import _StopOnSignal

    # as a command typed at a terminal starts, also where the suite itself runs with SIGINT ignored (nohup, &)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _StopOnSignal() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested  # the first: stop at the next step, and save
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # a third cannot cut the cleanup short
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, inherited)
