"""The daemon as systemd runs it, on what a new user meets: a watch folder that does not exist yet (a logged
wait, not a crash or a silently created folder) and an update's progress in STATUS=, relayed from the
update child. A real subprocess, a real notify socket, the tiny model."""

import signal
import subprocess
import sys

from tests.daemon_helpers import NotifySocket, environment, query, wait_for, write_day


def test_a_missing_watch_folder_is_waited_for_and_training_shows_in_status(tmp_path):
    watch, data = tmp_path / "engram", tmp_path / "data"
    notify = NotifySocket(tmp_path / "notify.sock")
    env = environment(
        NOTIFY_SOCKET=notify.path,
        ENGRAM_FF_UPDATE_MIN_STEPS="150",
        ENGRAM_FF_UPDATE_MAX_STEPS="150",
    )
    cmd = [sys.executable, "-m", "engram_ff.daemon.cli", "run", "--watch", str(watch), "--data", str(data)]
    daemon = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        ready = notify.wait("READY", "1")
        assert notify.messages[ready]["STATUS"] == f"waiting for the watch folder {watch} to appear"
        assert not watch.exists()  # a mistyped path never becomes an empty folder that is watched forever

        write_day(watch, "2026-01-01", 60)  # Engram starts writing
        db = data / "engram-ff.db"
        wait_for(lambda: query(db, "SELECT count(*) FROM messages")[0][0] == 60, timeout=60, what="the new folder read")
        training = notify.wait("STATUS", timeout=120, after=ready + 1)
        while not notify.messages[training].get("STATUS", "").startswith("training: step "):
            training = notify.wait("STATUS", timeout=120, after=training + 1)
        assert notify.messages[training]["STATUS"].split(";")[0].endswith(" min left")
        assert "/150, " in notify.messages[training]["STATUS"]
        wait_for(
            lambda: query(db, "SELECT status FROM runs WHERE kind = 'update' AND status = 'ok'"),
            timeout=180,
            what="the update",
        )
    finally:
        daemon.send_signal(signal.SIGTERM)
        _, err = daemon.communicate(timeout=90)
        notify.close()
    assert daemon.returncode == 0, err
    assert f"watch folder {watch} does not exist: waiting for it to appear" in err
    assert "Traceback" not in err
