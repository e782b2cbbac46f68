"""The daemon as systemd runs it: a real subprocess speaking the notify protocol over a real socket."""

import logging
import signal
import subprocess
import sys

import pytest

from engram_ff.daemon.config import load_config
from engram_ff.daemon.service import Service
from tests.daemon_helpers import NotifySocket, environment, query, wait_for, write_day


@pytest.fixture
def daemon(tmp_path):
    watch, data = tmp_path / "engram", tmp_path / "data"
    notify = NotifySocket(tmp_path / "notify.sock")
    config = tmp_path / "engram-ff.toml"
    config.write_text('schedule = "03:00"\n')
    write_day(watch, "2026-01-01", 40)
    env = environment(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="1000000")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "engram_ff.daemon.cli",
            "run",
            "--watch",
            str(watch),
            "--data",
            str(data),
            "--config",
            str(config),
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    yield proc, notify, watch, data, config
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    notify.close()


def test_ready_watchdog_catch_up_reload_and_stop(daemon):
    proc, notify, watch, data, config = daemon
    db = data / "engram-ff.db"
    notify.wait("READY", "1")
    # READY=1 comes before the start-up scan is done (tests/test_many_files.py); the file that was there
    # at start follows, and STATUS= says how far the scan has got.
    wait_for(lambda: query(db, "SELECT count(*) FROM messages")[0][0] == 40, timeout=30, what="the start-up scan")
    notify.wait("WATCHDOG", "1")
    assert "messages" in next(m["STATUS"] for m in notify.messages if "STATUS" in m)

    # No successful update yet, so one runs at once instead of waiting for 03:00.
    wait_for(
        lambda: query(db, "SELECT status FROM runs WHERE kind = 'update' AND status != 'running'"),
        timeout=120,
        what="the catch-up update",
    )
    assert query(db, "SELECT status FROM runs WHERE kind = 'update'")[0][0] == "ok"
    wait_for(
        lambda: query(db, "SELECT status FROM runs WHERE kind = 'probe' AND status = 'ok'"),
        timeout=60,
        what="the probes after the update",
    )
    assert query(db, "SELECT count(*) FROM probe_scores")[0][0] > 0

    # An append while running is ingested by the watcher.
    write_day(watch, "2026-01-02", 5)
    wait_for(lambda: query(db, "SELECT count(*) FROM messages")[0][0] == 45, timeout=30, what="the appended lines")

    # SIGHUP reloads the configuration; a bad one is refused and the old one kept.
    config.write_text('schedule = "04:30"\n')
    mark = len(notify.messages)
    proc.send_signal(signal.SIGHUP)
    reloading = notify.wait("RELOADING", "1", after=mark)
    notify.wait("READY", "1", after=reloading)
    config.write_text('schedule = "99:99"\n')
    proc.send_signal(signal.SIGHUP)
    second = notify.wait("RELOADING", "1", after=reloading + 1)
    notify.wait("READY", "1", after=second)
    config.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")  # RecursionError in tomllib
    proc.send_signal(signal.SIGHUP)
    third = notify.wait("RELOADING", "1", after=second + 1)
    notify.wait("READY", "1", after=third)
    facts = config.with_name("facts.toml")
    facts.write_text("fact = [1, 2]\n")
    config.write_text(f'schedule = "05:00"\nfacts_file = "{facts}"\n')
    proc.send_signal(signal.SIGHUP)
    notify.wait("READY", "1", after=notify.wait("RELOADING", "1", after=third + 1))
    assert proc.poll() is None

    mark = len(notify.messages)
    proc.send_signal(signal.SIGTERM)
    notify.wait("STOPPING", "1", after=mark)
    assert proc.wait(timeout=30) == 0
    log = proc.stderr.read()
    assert "nightly update at 04:30" in log
    assert "reload refused" in log and "schedule" in log
    assert "nested too deeply" in log and "Traceback" not in log
    assert f"fact probes file {facts}: fact 1 must be a [[fact]] table" in log
    assert "nightly update at 05:00" not in log  # a refused reload changes nothing, not even the schedule


def test_second_daemon_on_the_same_data_dir_is_refused(daemon, tmp_path):
    proc, notify, watch, data, config = daemon
    notify.wait("READY", "1")
    second = subprocess.run(
        [sys.executable, "-m", "engram_ff.daemon.cli", "run", "--watch", str(watch), "--data", str(data)],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    assert "already uses" in second.stderr
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_a_reload_that_raises_anything_keeps_the_running_configuration(tmp_path, caplog):
    """Not only ValueError: whatever reading the new configuration raises, the daemon keeps running."""

    def broken():
        raise RecursionError("maximum recursion depth exceeded")

    config = load_config(environ={}, data_dir=str(tmp_path))
    service = Service(config, broken)
    scheduler = service._make_scheduler()
    service._reload(scheduler)
    assert service.config is config
    assert "reload refused, keeping the running one: RecursionError: maximum recursion depth" in caplog.text


def test_an_unhealthy_daemon_logs_the_first_missed_ping_then_a_summary(caplog):
    """Issue #20.11: `unhealthy: no watchdog ping` was logged every second, 22 lines in 20 s."""
    from engram_ff.daemon import service

    now = [0.0]
    health = service.HealthLog(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="engram_ff.daemon.service"):
        for _ in range(22):  # 22 missed pings a second apart
            health.report(False, "database check failed: attempt to write a readonly database")
            now[0] += 1.0
        assert caplog.text.count("unhealthy: no watchdog ping") == 1 and "still unhealthy" not in caplog.text
        now[0] = service.UNHEALTHY_SUMMARY_S + 1
        health.report(False, "database check failed: attempt to write a readonly database")
        assert "still unhealthy after 301 s: 22 more watchdog pings not sent" in caplog.text
        health.report(True, "")
        health.report(True, "")
    assert caplog.text.count("\n") == 3 and caplog.text.count("healthy again after 301 s") == 1
