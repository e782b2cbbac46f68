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
        f"engram-ff: update 1 interrupted at step {steps}: its partial checkpoint is saved and the next update "
        "resumes from it"
    )
    ((kind, path),) = query(db, "SELECT kind, path FROM checkpoints WHERE id = ?", [checkpoint_id])
    assert kind == "partial" and load_checkpoint(path)["meta"]["run_id"] == 1
