"""The long-running service: watcher + nightly scheduler + systemd notify, driven from one main loop.

The main thread only waits, pings the watchdog and handles signals; the watcher ingests on its own
threads; each update runs in a child process (`python -m engram_ff.daemon.child`), so the idle daemon never
holds torch's memory, and a crash inside training cannot take the watcher down with it.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import replace

from apscheduler.schedulers.background import BackgroundScheduler

from engram_ff.daemon import schedule
from engram_ff.daemon.config import Config, ConfigError
from engram_ff.daemon.facts import FactsError, load_facts
from engram_ff.daemon.gate import alarm
from engram_ff.daemon.idle import Conditions
from engram_ff.daemon.lock import DataDirLock
from engram_ff.daemon.notify import Notifier
from engram_ff.daemon.output import run_name
from engram_ff.ingest.names import shown
from engram_ff.ingest.reader import Limits
from engram_ff.ingest.watcher import Watcher
from engram_ff.state import queries, runs
from engram_ff.state.db import open_db

log = logging.getLogger(__name__)

STATUS_EVERY_S = 30.0
STARTUP_STATUS_EVERY_S = 1.0  # during the start-up scan, STATUS= follows its progress this often
CHILD_STOP_GRACE_S = 60.0  # below the units' TimeoutStopSec=90: the child saves a checkpoint and exits
WATCH_POLL_S = 5.0  # a missing watch folder is looked for this often (and the watchdog pinged)
BY_DAY_EVERY_S = 60.0  # between nights, new messages are learned by day (daemon/today.py) this often
BY_DAY_TIMEOUT_S = 600.0  # a call reads at most 1 MiB, about 45 s on one core: past this it is stuck


UNHEALTHY_SUMMARY_S = 300.0  # while unhealthy, one summary line this often (the first is logged at once)


class HealthLog:
    """What the log says of the watchdog: the first missed ping, then one summary every
    UNHEALTHY_SUMMARY_S and one line when health is back, not a line a second (22 in 20 s on a read-only
    database, issue #20.11)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.since: float | None = None  # when it became unhealthy
        self.missed = 0  # pings missed since the last line
        self.next_summary = 0.0

    def report(self, healthy: bool, why: str) -> None:
        now = self.clock()
        if healthy:
            if self.since is not None:
                log.warning("healthy again after %.0f s; watchdog pings resumed", now - self.since)
            self.since = None
            return
        if self.since is None:
            self.since, self.missed, self.next_summary = now, 0, now + UNHEALTHY_SUMMARY_S
            log.error(
                "unhealthy: no watchdog ping (%s); said again every %.0f s while it lasts",
                why,
                UNHEALTHY_SUMMARY_S,
            )
            return
        self.missed += 1
        if now >= self.next_summary:
            log.error(
                "still unhealthy after %.0f s: %d more watchdog pings not sent (%s)", now - self.since, self.missed, why
            )
            self.missed, self.next_summary = 0, now + UNHEALTHY_SUMMARY_S


def _ranks_failed(row: dict | None) -> bool:
    return bool(row and row["status"] == "failed" and (row["error"] or "").startswith("RankFailed"))


def child_environment(config: Config) -> dict[str, str]:
    """The effective configuration as ENGRAM_FF_* variables, which outrank any file the child might see."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_FF_") and k != "NOTIFY_SOCKET"}
    for name, value in vars(config).items():
        if value is not None:
            env[f"ENGRAM_FF_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


def _one_line(exc: Exception) -> str:
    """A ValueError's message names the key already; anything else also needs its kind."""
    text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())


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
        self.by_day_lock = threading.Lock()
        self.by_day_child: subprocess.Popen | None = None
        self.by_day_seen: tuple[int, int] | None = None  # (newest message, newest run) when it last learned
        self.last_update: str = "never"
        self.training: str | None = None  # the running update's own status line, relayed from its pipe
        self.watcher: Watcher | None = None
        self.catch_up_pending = False  # an update is overdue: run it once the start-up scan is done
        self.health = HealthLog()
        self.conditions = Conditions(config)  # our process tree: the update child and its ranks are ours
        self.paused: str | None = None  # why the night's update waits (on battery, busy): resumed when that ends

    # --- signals -------------------------------------------------------------------------------
    def _on_stop(self, signum, frame) -> None:
        self.stop_requested.set()
        self.wake.set()

    def _on_hup(self, signum, frame) -> None:
        self.reload_requested.set()
        self.wake.set()

    # --- the nightly job -----------------------------------------------------------------------
    def run_update(self) -> int | None:
        """Run one update in a child process; returns its exit code (None if one is already running, or the
        machine is not free for it: then it waits, `paused`). An update whose ranks failed (one died or
        hung) is tried again at once on one process, so that the night is not lost to a rank (issue #20)."""
        if not self.update_lock.acquire(blocking=False):
            log.info("an update is already running; this one is skipped")
            return None
        try:
            if why := self.conditions.why_not():
                log.info("update postponed: %s; it starts when that ends", why)
                self.paused = why
                return None
            self.paused = None
            code = self._run_child(self.config)
            last = self._last_update()
            if code is not None and self.config.workers != 1 and _ranks_failed(last):
                log.warning("the update's ranks failed: trying the night again on one process")
                code = self._run_child(replace(self.config, workers=1))
                last = self._last_update()
            if last and last["status"] == "interrupted" and (last["error"] or "").startswith("paused: "):
                self.paused = last["error"].removeprefix("paused: ")
            return code
        finally:
            self.update_lock.release()

    # --- the day's learning --------------------------------------------------------------------
    def learn_by_day(self) -> int | None:
        """Let the memory learn the messages stored since it last did, in a child (`python -m
        engram_ff.daemon.today`), so the idle daemon still holds no torch; after an update too, whose new
        checkpoint the day's learning is built again over. Never beside an update, which trains anyway.
        Its exit code; None where nothing was due."""
        if not self.config.learn_by_day or self.stop_requested.is_set() or self.update_lock.locked():
            return None
        if not self.by_day_lock.acquire(blocking=False):
            return None
        try:
            try:
                db = open_db(self.config.db_path)
                try:
                    newest = runs.last_update(db)
                    seen = (queries.max_message_id(db), newest["id"] if newest else 0)
                finally:
                    db.close()
            except (sqlite3.Error, OSError) as exc:  # the watchdog reports a database in trouble; this waits
                log.warning("learning by day waits: the database cannot be read now (%s)", _one_line(exc))
                return None
            if seen == self.by_day_seen or seen[0] == 0:
                return None
            self.by_day_child = subprocess.Popen(
                [sys.executable, "-m", "engram_ff.daemon.today", str(os.getpid())],
                env=child_environment(self.config),
            )
            try:
                code = self.by_day_child.wait(BY_DAY_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log.error("learning by day took over %.0f s: stopped; it tries again later", BY_DAY_TIMEOUT_S)
                self.by_day_child.kill()
                code = self.by_day_child.wait()
            self.by_day_child = None
            if code == 0:
                self.by_day_seen = seen
            return code
        finally:
            self.by_day_lock.release()

    def _last_update(self) -> dict | None:
        db = open_db(self.config.db_path)
        try:
            return runs.last_update(db)
        finally:
            db.close()

    def resume_if_free(self, scheduler: BackgroundScheduler) -> None:
        """A paused night resumes once the machine is free again; inside the night's window if there is one
        (past its end, the next night resumes it: its partial checkpoint waits)."""
        if self.config.pause_above_cores > 0:
            self.conditions.load.sample()  # always, so that a whole window of load is at hand when a night pauses
        if self.paused is None or self.update_lock.locked():
            return
        if self.conditions.why_not(resuming=True) is not None:
            return
        if self.config.update_until and schedule.window_end(self.config) is None:
            log.info("the night's window ended with its update paused (%s); the next night resumes it", self.paused)
            self.paused = None
            return
        log.info("resuming the paused update: %s no longer holds", self.paused)
        self.paused = None
        scheduler.add_job(self.run_update, id="resume", replace_existing=True)

    def _run_child(self, config: Config) -> int | None:
        """One update child, to its end; its exit code (None: a stop came first)."""
        if self.stop_requested.is_set():
            return None
        log.info("update starting")
        status_read, status_write = os.pipe()
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-m", "engram_ff.daemon.child", str(os.getpid()), str(status_write)],
                env=child_environment(config),
                pass_fds=(status_write,),
            )
        finally:
            os.close(status_write)  # the child holds the only writer: EOF when it exits
        relay = threading.Thread(target=self._relay_status, args=(status_read,), name="update-status", daemon=True)
        relay.start()
        code = self.child.wait()
        relay.join(timeout=5)
        self.child = None
        self.training = None
        self._refresh_last_update()
        log.info("update finished with exit code %d (%s)", code, self.last_update)
        if self.demo:
            self._print_latest_probes()
            from engram_ff.daemon.demo import closing_lines

            print(closing_lines(self.config), flush=True)
        return code

    def _relay_status(self, fd: int) -> None:
        """Each line the update child writes ("training: step 120/900, 3 min left") becomes STATUS=."""
        with os.fdopen(fd, encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                self.training = line.strip()
                self.notifier.status(self.status_line(self.watcher))

    def _print_latest_probes(self) -> None:
        from engram_ff.daemon.output import probe_table

        db = open_db(self.config.db_path)
        try:
            rows = runs.latest_probe_pass(db)
        finally:
            db.close()
        print(probe_table(rows) if rows else "no probe scores yet", flush=True)

    def _refresh_last_update(self) -> None:
        """What STATUS= says of the updates; loudly when one was refused or several in a row rejected."""
        db = open_db(self.config.db_path)
        try:
            row = runs.last_update(db)
            self.last_update = f"{run_name(row)} {row['status']} at {row['ended_at']}" if row else "never"
            if row and row["status"] == "refused":
                self.last_update += f": REFUSED, {row['error']}"
            if loud := alarm(db):
                self.last_update += f"; WARNING: {loud}"
        finally:
            db.close()

    def update_overdue(self) -> bool:
        db = open_db(self.config.db_path)
        try:
            return schedule.overdue(runs.last_successful_update(db))
        finally:
            db.close()

    # --- main loop -----------------------------------------------------------------------------
    def _make_scheduler(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        scheduler.add_job(
            self.run_update,
            schedule.nightly_trigger(self.config),
            id="nightly",
            misfire_grace_time=int(self.config.misfire_grace_hours * 3600),
        )
        scheduler.add_job(self.learn_by_day, "interval", seconds=BY_DAY_EVERY_S, id="by-day")
        return scheduler

    def _reload(self, scheduler: BackgroundScheduler) -> None:
        self.notifier.reloading()
        try:
            self._apply(self.reload_config(), scheduler)
        except Exception as exc:  # whatever a bad file raises, a running daemon must not exit over a reload
            log.error("configuration reload refused, keeping the running one: %s", _one_line(exc))
        self.notifier.ready(self.status_line(None))

    def _apply(self, new: Config, scheduler: BackgroundScheduler) -> None:
        """Check all of `new` first, then switch to it: a refused reload leaves nothing half applied."""
        load_facts(new.facts_file)
        trigger = schedule.nightly_trigger(new)
        if (new.watch, new.data_dir) != (self.config.watch, self.config.data_dir):
            log.warning("watch and data folders change only at restart; the rest is reloaded")
            new.watch_dir, new.data_dir = self.config.watch_dir, self.config.data_dir
        scheduler.reschedule_job("nightly", trigger=trigger)
        self.config = self.conditions.config = new
        logging.getLogger().setLevel(new.log_level.upper())
        log.info("configuration reloaded; nightly update at %s", new.schedule)

    def status_line(self, watcher: Watcher | None) -> str:
        counts = f"{watcher.status_line()}; " if watcher is not None else ""
        if self.paused and not self.training:
            return f"update paused ({self.paused}); {counts}last update: {self.last_update}"
        if self.training:
            return f"{self.training}; {counts}last update: {self.last_update}"
        return f"{counts}last update: {self.last_update}"

    def _catch_up_after_first_scan(self, watcher: Watcher, scheduler: BackgroundScheduler) -> None:
        """The catch-up update trains on what was there at start, so it waits for the start-up scan,
        which runs after READY=1 (a backlog of 100,000 files must not hold READY past TimeoutStartSec)."""
        if self.catch_up_pending and watcher.stats.scans >= 1:
            self.catch_up_pending = False
            log.info("no successful update in the last day: catching up now")
            scheduler.add_job(self.run_update, id="catch-up")

    def _wait_for_watch_folder(self) -> bool:
        """A watch folder named in the configuration that does not exist yet (Engram not installed yet, a
        drive not mounted) is waited for with a log line, not created: a mistyped path must not become
        an empty folder that is watched forever. The default one, inside the data directory, is ours to
        create. False if a stop came first."""
        watch = self.config.watch
        if self.config.watch_dir is None or watch.is_dir():
            return True
        log.warning(
            "watch folder %s does not exist: waiting for it to appear (looked for every %.0f s)", watch, WATCH_POLL_S
        )
        self.notifier.ready(f"waiting for the watch folder {watch} to appear")
        while not watch.is_dir():
            if self.stop_requested.is_set():
                return False
            self.notifier.watchdog()
            self.wake.wait(WATCH_POLL_S)
            self.wake.clear()
        log.info("watch folder %s is there now", watch)
        return True

    def unhealthy_because(self, watcher: Watcher, scheduler: BackgroundScheduler, db) -> str | None:
        """None if the daemon is healthy, else why not."""
        try:
            db.execute("SELECT 1").fetchone()
        except Exception as exc:
            return f"database check failed: {exc}"
        if not watcher.healthy() or not scheduler.running:
            return f"observer alive: {watcher.healthy()}, scheduler running: {scheduler.running}"
        return None

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            load_facts(self.config.facts_file)
        except FactsError as exc:
            raise ConfigError(f"facts_file: {exc}") from None
        with DataDirLock(self.config.lock_path):
            db = open_db(self.config.db_path)  # migrations happen here, before READY
            runs.mark_dead_runs_interrupted(db)
            queries.remember(db, "watch_dir", str(self.config.watch))  # what `status` and `reset` name later
            self._refresh_last_update()
            if self.demo:
                from engram_ff.daemon.demo import seed

                queries.remember(db, "facts", "bundled")  # its facts are about its own made-up days
                seed(self.config.watch)
            if not self._wait_for_watch_folder():
                return 0
            watcher = Watcher(
                self.config.db_path,
                self.config.watch,
                limits=Limits.of(self.config),
                debounce_s=self.config.debounce_seconds,
                rescan_s=self.config.rescan_seconds,
                polling=self.config.polling,
            )
            self.watcher = watcher
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
        next_status = -math.inf  # at once, whatever the monotonic clock reads
        while True:
            self._catch_up_after_first_scan(watcher, scheduler)
            self.wake.wait(interval if watcher.stats.scans else min(interval, STARTUP_STATUS_EVERY_S))
            self.wake.clear()
            if self.stop_requested.is_set():
                return
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self._reload(scheduler)
            self.resume_if_free(scheduler)
            why = self.unhealthy_because(watcher, scheduler, db)
            if why is None:
                self.notifier.watchdog()
            self.health.report(why is None, why or "")
            if time.monotonic() >= next_status or not watcher.stats.scans:
                self.notifier.status(self.status_line(watcher))
                next_status = time.monotonic() + STATUS_EVERY_S

    def _stop_child(self) -> None:
        by_day = self.by_day_child
        if by_day is not None and by_day.poll() is None:
            by_day.kill()  # a cache of learning the database can redo: nothing is lost with it
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
