"""Keep the database up to date with a folder: watchdog events, a start-up scan and periodic rescans.

Threads: watchdog's observer only records which paths changed; one writer thread owns the database
connection and does every read of the files and every write. A path is read at most once per
debounce interval however many events it gets (a throttle, not a trailing debounce, so a file
appended to continuously is still read every interval). The first scan runs after the observer
has started, so a file created between the two is seen by one or the other, and reading it twice
is harmless: the second read starts at the committed offset.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    EVENT_TYPE_CLOSED,
    EVENT_TYPE_CREATED,
    EVENT_TYPE_MODIFIED,
    EVENT_TYPE_MOVED,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from engram_ff.ingest.reader import IngestStats, Limits, ingest_file, jsonl_files
from engram_ff.state.db import open_db

log = logging.getLogger(__name__)

READ_EVENTS = {EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_CLOSED}
UNHEALTHY_AFTER_FAILURES = 3  # consecutive failed reads (disk full, database locked past busy_timeout)
RETRY_BASE_S = 1.0  # back-off after a failed read: 1, 2, 4 ... seconds
MAX_RETRY_S = 60.0
POLL_INTERVAL_S = 1.0  # polling mode: how often the whole tree is stat()ed


@dataclass
class WatcherStats(IngestStats):
    scans: int = 0  # full scans completed (the first is the start-up scan)
    queued: int = 0
    failures: int = 0  # consecutive; reset by the next good read
    last_ingest: float | None = None  # time.time() of the last read that stored something
    last_error: str | None = None


class Watcher:
    def __init__(
        self,
        db_path: str | os.PathLike,
        watch_dir: str | os.PathLike,
        *,
        limits: Limits | None = None,
        debounce_s: float = 0.2,
        rescan_s: float = 60.0,
        polling: bool = False,
    ):
        self.db_path, self.watch_dir = Path(db_path), Path(watch_dir)
        self.limits = limits or Limits()
        self.debounce_s, self.rescan_s, self.polling = debounce_s, rescan_s, polling
        self.stats = WatcherStats()
        self._due: dict[str, float] = {}  # path -> monotonic time it may be read
        self._scan_due = 0.0  # monotonic time of the next full scan; 0: at once
        self._wake = threading.Condition()
        self._stopping = False
        self._ready = threading.Event()
        self._observer = None
        self._writer: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        """Start watching; returns once the writer has the database open (raises if it cannot)."""
        self.watch_dir.mkdir(parents=True, exist_ok=True)
        self._observer = PollingObserver(timeout=POLL_INTERVAL_S) if self.polling else Observer()
        self._observer.schedule(_Handler(self), str(self.watch_dir), recursive=True)
        self._observer.start()
        self._writer = threading.Thread(target=self._run, name="engram-ff-ingest", daemon=True)
        self._writer.start()
        if not self._ready.wait(timeout) or not self._writer.is_alive():
            self.stop()
            raise RuntimeError(f"ingest writer could not open {self.db_path}: {self.stats.last_error}")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop both threads; a read in progress stops after its current batch (committed whole)."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
        if self._writer is not None:
            self._writer.join(timeout)

    def healthy(self) -> bool:
        """Both threads alive and the database taking writes."""
        return (
            self._writer is not None
            and self._writer.is_alive()
            and self._observer is not None
            and self._observer.is_alive()
            and self.stats.failures < UNHEALTHY_AFTER_FAILURES
        )

    def status_line(self) -> str:
        """One line for systemd's STATUS=."""
        s = self.stats
        line = (
            f"ingested {s.messages} messages, {s.events} events, {s.quarantined} quarantined lines; "
            f"{s.queued} files queued"
        )
        return line + (f"; last error: {s.last_error}" if s.failures else "")

    def request(self, path: str | os.PathLike | None = None) -> None:
        """Read path after the debounce interval (None: scan the whole folder now)."""
        with self._wake:
            if path is None:
                self._scan_due = 0.0
            else:
                self._due.setdefault(str(path), time.monotonic() + self.debounce_s)
            self.stats.queued = len(self._due)
            self._wake.notify()

    def _run(self) -> None:
        try:
            db = open_db(self.db_path)
        except Exception as exc:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("cannot open %s", self.db_path)
            self._ready.set()
            return
        self._ready.set()
        try:
            while (work := self._next_paths()) is not None:
                paths, scan = work
                for path in paths:
                    if self._stopping:
                        break
                    with self._wake:
                        self._due.pop(path, None)  # an event during this read queues it again
                    self._read(db, path)
                else:
                    self.stats.scans += scan  # counted once every file of the scan has been read
        finally:
            db.close()

    def _next_paths(self) -> tuple[list[str], bool] | None:
        """Wait until a scan or some paths are due: (paths, whether a full scan); None once stopping."""
        with self._wake:
            while not self._stopping:
                now = time.monotonic()
                if now >= self._scan_due:
                    self._scan_due = now + self.rescan_s
                    break
                due = sorted(path for path, at in self._due.items() if at <= now)
                if due:
                    return due, False
                self._wake.wait(min([self._scan_due, *self._due.values()]) - now)
            else:
                return None
        return [str(path) for path in jsonl_files(self.watch_dir)], True  # outside the lock: may take a while

    def _read(self, db, path: str) -> None:
        try:
            result = ingest_file(db, path, self.limits, should_stop=lambda: self._stopping)
        except Exception as exc:  # the database refused (full disk, lock timeout): retry, nothing half-stored
            s = self.stats
            s.failures += 1
            s.last_error = f"{type(exc).__name__}: {exc}"
            retry = min(MAX_RETRY_S, RETRY_BASE_S * 2.0 ** (s.failures - 1))
            log.error("%s: not stored, retrying in %.1f s: %s", path, retry, s.last_error)
            with self._wake:
                self._due[path] = time.monotonic() + retry
            return
        self.stats.failures = 0
        self.stats.add(result)
        self.stats.queued = len(self._due)
        if result.messages or result.events:
            self.stats.last_ingest = time.time()


class _Handler(FileSystemEventHandler):
    """Runs on the observer thread: only queues paths, never touches files or the database."""

    def __init__(self, watcher: Watcher):
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type not in READ_EVENTS:
            return  # deleted files keep their messages; opened/closed-unwritten change nothing
        if event.is_directory:
            if event.event_type in (EVENT_TYPE_CREATED, EVENT_TYPE_MOVED):
                self.watcher.request()  # files may land in a new folder before its watch is added
            return
        path = event.dest_path if event.event_type == EVENT_TYPE_MOVED else event.src_path
        path = os.fsdecode(path)
        if path.endswith(".jsonl"):
            self.watcher.request(path)
