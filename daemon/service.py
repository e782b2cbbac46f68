"""The long-running service: watcher + nightly scheduler + systemd notify, driven from one main loop.

The main thread only waits, pings the watchdog and handles signals; the watcher ingests on its own
threads; each update runs in a child process (`python -m engram_ff.daemon.child`), so the idle daemon never
holds torch's memory, and a crash inside training cannot take the watcher down with it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

from engram_ff.daemon.config import Config
from engram_ff.daemon.lock import DataDirLock
from engram_ff.daemon.notify import Notifier
from engram_ff.ingest.names import shown
from engram_ff.ingest.reader import Limits
from engram_ff.ingest.watcher import Watcher
from engram_ff.state import runs
from engram_ff.state.db import open_db

log = logging.getLogger(__name__)

PERIOD = timedelta(days=1)
STATUS_EVERY_S = 30.0
STARTUP_STATUS_EVERY_S = 1.0  # during the start-up scan, STATUS= follows its progress this often
CHILD_STOP_GRACE_S = 60.0  # below the units' TimeoutStopSec=90: the child saves a checkpoint and exits


def child_environment(config: Config) -> dict[str, str]:
    """The effective configuration as ENGRAM_FF_* variables, which outrank any file the child might see."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_FF_") and k != "NOTIFY_SOCKET"}
    for name, value in vars(config).items():
        if value is not None:
            env[f"ENGRAM_FF_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


class Service:
    def __init__(self, config: Config, reload_config, *, demo: bool = False, notifier: Notifier | None = None):
        self.config = config
        self.reload_config = reload_config  # () -> Config, from the same file, environment and flags
        self.demo = demo
        self.notifier = notifier or Notifier()
        self.stop_requested = threading.Event()
        self.reload_requested = threading.Event()
        self.wake = threading.Event()  # set by the signal handlers, so the main loop answers at once
        self.update_lock = threading.Lock()
        self.child: subprocess.Popen | None = None
        self.last_update: str = "never"
        self.catch_up_pending = False  # an update is overdue: run it once the start-up scan is done

    # --- signals -------------------------------------------------------------------------------
    def _on_stop(self, signum, frame) -> None:
        self.stop_requested.set()
        self.wake.set()

    def _on_hup(self, signum, frame) -> None:
        self.reload_requested.set()
        self.wake.set()

    # --- the nightly job -----------------------------------------------------------------------
    def run_update(self) -> int | None:
        """Run one update in a child process; returns its exit code (None if one is already running)."""
        if not self.update_lock.acquire(blocking=False):
            log.info("an update is already running; this one is skipped")
            return None
        try:
            if self.stop_requested.is_set():
                return None
            log.info("update starting")
            self.child = subprocess.Popen(
                [sys.executable, "-m", "engram_ff.daemon.child", str(os.getpid())], env=child_environment(self.config)
            )
            code = self.child.wait()
            self.child = None
            self._refresh_last_update()
            log.info("update finished with exit code %d (%s)", code, self.last_update)
            if self.demo:
                self._print_latest_probes()
            return code
        finally:
            self.update_lock.release()

    def _print_latest_probes(self) -> None:
        from engram_ff.daemon.output import probe_table

        db = open_db(self.config.db_path)
        try:
            rows = runs.latest_probe_pass(db)
        finally:
            db.close()
        print(probe_table(rows) if rows else "no probe scores yet", flush=True)

    def _refresh_last_update(self) -> None:
        db = open_db(self.config.db_path)
        try:
            row = runs.last_update(db)
            self.last_update = f"run {row['id']} {row['status']} at {row['ended_at']}" if row else "never"
        finally:
            db.close()

    def update_overdue(self) -> bool:
        db = open_db(self.config.db_path)
        try:
            last = runs.last_successful_update(db)
        finally:
            db.close()
        if last is None:
            return True
        ended = datetime.fromisoformat(last["ended_at"])
        return datetime.now(UTC) - ended > PERIOD

    # --- main loop -----------------------------------------------------------------------------
    def _make_scheduler(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        hour, minute = self.config.schedule_hour_minute
        scheduler.add_job(
            self.run_update,
            CronTrigger(hour=hour, minute=minute),
            id="nightly",
            misfire_grace_time=int(self.config.misfire_grace_hours * 3600),
        )
        return scheduler

    def _reload(self, scheduler: BackgroundScheduler) -> None:
        self.notifier.reloading()
        try:
            new = self.reload_config()
        except ValueError as exc:
            log.error("configuration reload refused, keeping the running one: %s", exc)
        else:
            if (new.watch, new.data_dir) != (self.config.watch, self.config.data_dir):
                log.warning("watch and data folders change only at restart; the rest is reloaded")
                new.watch_dir, new.data_dir = self.config.watch_dir, self.config.data_dir
            self.config = new
            hour, minute = new.schedule_hour_minute
            scheduler.reschedule_job("nightly", trigger=CronTrigger(hour=hour, minute=minute))
            logging.getLogger().setLevel(new.log_level.upper())
            log.info("configuration reloaded; nightly update at %s", new.schedule)
        self.notifier.ready(self.status_line(None))

    def status_line(self, watcher: Watcher | None) -> str:
        counts = f"{watcher.status_line()}; " if watcher is not None else ""
        return f"{counts}last update: {self.last_update}"

    def _catch_up_after_first_scan(self, watcher: Watcher, scheduler: BackgroundScheduler) -> None:
        """The catch-up update trains on what was there at start, so it waits for the start-up scan,
        which runs after READY=1 (a backlog of 100,000 files must not hold READY past TimeoutStartSec)."""
        if self.catch_up_pending and watcher.stats.scans >= 1:
            self.catch_up_pending = False
            log.info("no successful update in the last day: catching up now")
            scheduler.add_job(self.run_update, id="catch-up")

    def healthy(self, watcher: Watcher, scheduler: BackgroundScheduler, db) -> bool:
        try:
            db.execute("SELECT 1").fetchone()
        except Exception as exc:
            log.error("database check failed: %s", exc)
            return False
        return watcher.healthy() and scheduler.running

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        with DataDirLock(self.config.lock_path):
            db = open_db(self.config.db_path)  # migrations happen here, before READY
            runs.mark_dead_runs_interrupted(db)
            self._refresh_last_update()
            if self.demo:
                from engram_ff.daemon.demo import seed

                seed(self.config.watch)
            watcher = Watcher(
                self.config.db_path,
                self.config.watch,
                limits=Limits.of(self.config),
                debounce_s=self.config.debounce_seconds,
                rescan_s=self.config.rescan_seconds,
                polling=self.config.polling,
            )
            scheduler = self._make_scheduler()
            try:
                watcher.start()  # observer first, then the start-up scan (on the watcher's thread)
                scheduler.start()
                self.catch_up_pending = self.demo or self.update_overdue()
                # READY=1: migrated, watching (no change from now on is missed), the start-up scan under
                # way; STATUS= says how far it has got.
                self.notifier.ready(self.status_line(watcher))
                log.info("watching %s; nightly update at %s", shown(self.config.watch), self.config.schedule)
                self._loop(watcher, scheduler, db)
            finally:
                self.notifier.stopping()
                self._stop_child()
                if scheduler.running:
                    scheduler.shutdown(wait=True)
                watcher.stop()
                db.close()
                self.notifier.close()
        log.info("engram-ff stopped")
        return 0

    def _loop(self, watcher: Watcher, scheduler: BackgroundScheduler, db) -> None:
        interval = min(self.notifier.watchdog_interval or STATUS_EVERY_S, STATUS_EVERY_S)
        next_status = 0.0
        while True:
            self._catch_up_after_first_scan(watcher, scheduler)
            self.wake.wait(interval if watcher.stats.scans else min(interval, STARTUP_STATUS_EVERY_S))
            self.wake.clear()
            if self.stop_requested.is_set():
                return
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload(scheduler)
            if self.healthy(watcher, scheduler, db):
                self.notifier.watchdog()
            else:
                log.error(
                    "unhealthy: no watchdog ping (observer alive: %s, scheduler running: %s)",
                    watcher.healthy(),
                    scheduler.running,
                )
            if time.monotonic() >= next_status or not watcher.stats.scans:
                self.notifier.status(self.status_line(watcher))
                next_status = time.monotonic() + STATUS_EVERY_S

    def _stop_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        log.info("asking the running update to save a checkpoint and stop")
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(CHILD_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.error(
                "the update did not stop in %.0f s; killing it (it resumes from its last checkpoint)",
                CHILD_STOP_GRACE_S,
            )
            child.kill()
            child.wait()
