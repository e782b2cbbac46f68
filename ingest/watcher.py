"""Keep the database up to date with a folder: watchdog events, a start-up scan, periodic rescans, and
descriptors held on files that may be rotated away.

Threads: watchdog's observer only records which paths changed; one writer thread owns the database
connection and does every read of the files and every write. A path is read at most once per
debounce interval however many events it gets (a throttle, not a trailing debounce, so a file
appended to continuously is still read every interval). The first scan runs after the observer
has started, so a file created between the two is seen by one or the other, and reading it twice
is harmless: the second read starts at the committed offset.

Scans stat every log file and read only those that changed since their last read (ingest/folder.py).
The walk's CPU time is measured, and the next scan waits at least rescan_s and at least long enough
that walks use under RESCAN_CPU_SHARE of a core (bench/results/chaos.md measures 100,000 files).
While the database refuses writes, scans wait out the same back-off as the failed read.

Rotation: a file that grew within HOLD_SECONDS is kept open. If a writer goes on appending to its old
descriptor after logrotate renamed the file, or compressed and deleted it, the watcher notices the
held descriptor growing (it looks every HELD_POLL_S) and reads on through it, under the file's row
(found by device and inode): what a rotation leaves behind is read to its end.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
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
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from engram_ff.ingest.folder import Folder, Signature, signature
from engram_ff.ingest.identity import names_it
from engram_ff.ingest.names import is_log_name, shown
from engram_ff.ingest.reader import CommitGroup, FileResult, IngestStats, Limits, ingest_file, open_file
from engram_ff.state.db import open_db

log = logging.getLogger(__name__)

READ_EVENTS = {EVENT_TYPE_CREATED, EVENT_TYPE_MODIFIED, EVENT_TYPE_MOVED, EVENT_TYPE_CLOSED}
UNHEALTHY_AFTER_FAILURES = 3  # consecutive failed reads (disk full, database locked past busy_timeout)
RETRY_BASE_S = 1.0  # back-off after a failed read: 1, 2, 4 ... seconds
MAX_RETRY_S = 60.0
POLL_INTERVAL_S = 1.0  # polling mode: how often the whole tree is stat()ed
RESCAN_CPU_SHARE = 0.005  # scans may use half a percent of one core (target: an idle daemon under 1 %)
# A rotated file is read on through its old descriptor for this long after it last grew: Filebeat's
# close_inactive default; a writer told to reopen by logrotate's postrotate does so within milliseconds.
HOLD_SECONDS = 300.0
HELD_POLL_S = 0.5  # how often held descriptors are checked for growth
MAX_HELD = 64  # descriptors held at once (the newest growers): a folder of 100,000 new files needs none


@dataclass
class WatcherStats(IngestStats):
    scans: int = 0  # full scans completed (the first is the start-up scan)
    scanning: tuple[int, int] | None = None  # (files read, files to read) while a scan is under way
    queued: int = 0
    failures: int = 0  # consecutive; reset by the next good read
    last_ingest: float | None = None  # time.time() of the last read that stored something
    last_error: str | None = None


@dataclass
class _Held:
    fd: int
    path: str  # the name it was opened at: while that still holds it, events and scans read it
    size: int  # the file's size when it was last read
    grew: float  # monotonic time it last grew


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
        self.folder = Folder(self.watch_dir, follow_outside=self.limits.follow_outside)
        self._due: dict[str, float] = {}  # path -> monotonic time it may be read
        # Deadlines start at -inf, never 0.0: "due at once" must not assume the monotonic clock is large
        # (it counts from boot, so a machine up for less than a poll interval would otherwise wait).
        self._retry_at = -math.inf  # monotonic time the database may be tried again after a failed write
        self._scan_due = -math.inf  # monotonic time of the next full scan; -inf: at once
        self._held: dict[tuple[int, int], _Held] = {}  # (device, inode) -> descriptor (writer thread only)
        self._held_checked = -math.inf  # monotonic time the held descriptors were last looked at
        self._wake = threading.Condition()
        self._stopping = False
        self._ready = threading.Event()
        self._observer: BaseObserver | None = None
        self._writer: threading.Thread | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the database file opened

    def start(self, timeout: float = 30.0) -> None:
        """Start watching; returns once the writer has the database open (raises if it cannot). The
        start-up scan runs after that, on the writer thread: `stats.scans` counts it once done."""
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
        if s.scans == 0:
            done, total = s.scanning or (0, 0)
            line = f"catching up: {done} of {total} files read since start; " + line
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
            self._identity = _identity(self.db_path)
        except Exception as exc:
            self.stats.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("cannot open %s", shown(self.db_path))
            self._ready.set()
            return
        self._ready.set()
        try:
            while (scan := self._next_work()) is not None:
                db, reopened = self._same_database(db)
                if scan or reopened:
                    self._scan(db)
                    continue
                self._read_due(db)
                self._read_held(db)
        finally:
            self._read_held_once_more(db)
            for held in self._held.values():
                os.close(held.fd)
            db.close()

    def _same_database(self, db):
        """The database at db_path, opened again (and migrated) if the file was deleted or replaced since
        it was opened: the old connection would write into a file no one reads, or fail on a new empty
        one for ever (`no such table: files`, issue #20.12). The new database knows no file, so every
        file is read again into it, from the start. (db, whether it was opened again)."""
        now = _identity(self.db_path)
        if now == self._identity:
            return db, False
        log.warning(
            "%s was %s: opening it again (migrations included) and reading every file into it",
            shown(self.db_path),
            "deleted" if now is None else "replaced",
        )
        for held in self._held.values():
            os.close(held.fd)
        self._held.clear()
        db.close()  # first: its WAL is checkpointed into the old file and removed, never read by the new one
        db = open_db(self.db_path)
        self._identity = _identity(self.db_path)
        self.folder = Folder(self.watch_dir, follow_outside=self.limits.follow_outside)
        with self._wake:
            self._retry_at, self.stats.failures = -math.inf, 0
        return db, True

    def _next_work(self) -> bool | None:
        """Wait until a scan (True) or some paths or held descriptors (False) are due; None once stopping.
        Wakes every HELD_POLL_S while descriptors are held, to look at them; reads nothing while the
        database is in its back-off after a refused write."""
        with self._wake:
            while not self._stopping:
                now = time.monotonic()
                if now >= self._scan_due:
                    self._scan_due = float("inf")  # set by _scan once it knows what the scan cost
                    return True
                if now >= self._retry_at:
                    if self._due_paths(now) or (self._held and now >= self._held_due):
                        return False
                    held = [self._held_due] if self._held else []
                    wake_at = min([self._scan_due, *self._due.values(), *held])
                else:
                    wake_at = min(self._scan_due, self._retry_at)
                self._wake.wait(max(0.0, wake_at - now))
        return None

    @property
    def _held_due(self) -> float:
        return self._held_checked + HELD_POLL_S

    def _due_paths(self, now: float) -> list[str]:
        return sorted(path for path, at in self._due.items() if at <= now)

    def _read_due(self, db) -> None:
        """Read the paths whose debounce is over (unless the database is backing off)."""
        now = time.monotonic()
        with self._wake:
            due = self._due_paths(now) if now >= self._retry_at else []
        for path in due:
            if self._stopping:
                break
            with self._wake:
                self._due.pop(path, None)  # an event during this read queues it again
            self._read(db, path)

    def _scan(self, db) -> None:
        """Read every file that changed since its last read; then schedule the next scan."""
        if time.monotonic() < self._retry_at:  # the database refused a write: the scan waits too
            with self._wake:
                self._scan_due = min(self._scan_due, self._retry_at)
            return
        cpu = time.thread_time()
        changed = self.folder.changed()
        walk = time.thread_time() - cpu  # what a scan costs when nothing changed: the spacing is set by it
        self.stats.scanning = (0, len(changed))
        group = CommitGroup(db.conn)  # small files' reads share a commit: one fsync a second, not a file
        complete = True
        for i, (path, sig) in enumerate(changed):
            if self._stopping or not self._read(db, path, sig, group):
                complete = False  # stopping, or the database refused: the rest waits for the back-off
                break
            self.stats.scanning = (i + 1, len(changed))
            now = time.monotonic()
            with self._wake:  # the observer thread adds to _due
                appended = any(at <= now for at in self._due.values())
            if (self._held and now >= self._held_due) or appended:
                complete = self._commit(group) and complete  # a long catch-up keeps up with appends
                self._read_due(db)
                self._read_held(db)
        complete = self._commit(group) and complete
        with self._wake:
            delay = max(self.rescan_s, walk / RESCAN_CPU_SHARE)
            if not complete:
                delay = min(delay, max(0.0, self._retry_at - time.monotonic()))
            self._scan_due = min(self._scan_due, time.monotonic() + delay)
        self.stats.scans += complete  # counted once every file of the scan has been read

    def _read(self, db, path: str, sig: Signature | None = None, group: CommitGroup | None = None) -> bool:
        """Read one path; False if the database refused (the path is retried after a back-off). In a
        group, the path counts as read (for the next scan) once the group commits."""
        try:
            fd = open_file(path)
        except OSError:
            fd = None  # ingest_file opens it again, and logs and notes why it cannot
        try:
            result = ingest_file(
                db, path, self.limits, should_stop=lambda: self._stopping, folder=self.folder, fd=fd, group=group
            )
        except Exception as exc:  # the database refused (full disk, lock timeout): retry, nothing half-stored
            if fd is not None:
                os.close(fd)
            self._failed(path, exc)
            return False
        self._done(result)
        mark = functools.partial(self.folder.mark, path, result.signature or sig or _signature_of(path))
        if group is None:
            mark()
        else:
            group.on_commit.append(mark)
        if fd is not None:
            self._hold(fd, path, result)
        return True

    def _commit(self, group: CommitGroup) -> bool:
        """Commit what a scan's reads hold; False if the database refused (they are read again later)."""
        try:
            group.commit()
        except Exception as exc:
            group.rollback()
            self._failed(None, exc)
            return False
        return True

    def _failed(self, path: str | None, exc: Exception) -> None:
        """The database refused a write: everything waits for a back-off, then path is read again (a
        scan's reads whose commit failed are read again by the next scan)."""
        s = self.stats
        s.failures += 1
        s.last_error = f"{type(exc).__name__}: {exc}"
        retry = min(MAX_RETRY_S, RETRY_BASE_S * 2.0 ** (s.failures - 1))
        what = shown(path) if path is not None else "the last reads of a scan"
        log.error("%s: not stored, retrying in %.1f s: %s", what, retry, s.last_error)
        with self._wake:
            self._retry_at = time.monotonic() + retry
            if path is not None:
                self._due[path] = self._retry_at

    def _done(self, result: FileResult) -> None:
        self.stats.failures = 0
        self.stats.add(result)
        self.stats.queued = len(self._due)
        if result.messages or result.events:
            self.stats.last_ingest = time.time()

    def _hold(self, fd: int, path: str, result: FileResult) -> None:
        """Keep the descriptor of a file that grew (so a rotation cannot take its tail away); else close it."""
        if result.signature is None:  # no identity to hold it by
            os.close(fd)
            return
        identity, size, now = result.signature[:2], result.signature[2], time.monotonic()
        held = self._held.get(identity)
        if held is not None:
            held.path, held.size = path, size
            held.grew = now if result.lines else held.grew
        if held is not None or not result.lines:
            os.close(fd)
            return
        self._held[identity] = _Held(fd, path, size, now)
        if len(self._held) > MAX_HELD:
            oldest = min(self._held, key=lambda k: self._held[k].grew)
            os.close(self._held.pop(oldest).fd)

    def _read_held_once_more(self, db) -> None:
        """At stop, what writers appended to rotated-away files since the last look: once the
        descriptors are closed, nothing can read a deleted file's tail any more."""
        self._held_checked = -math.inf  # due whatever the clock reads (0.0 + HELD_POLL_S was not, after boot)
        try:
            self._read_held(db)
        except Exception:  # the database is gone or refuses: what is committed stays, and stopping goes on
            log.exception("reading the held descriptors at stop failed")

    def _read_held(self, db) -> None:
        """Read on through every held descriptor whose file grew after it lost its name (renamed out of
        the folder's names, or deleted); let go of those quiet for HOLD_SECONDS."""
        now = time.monotonic()
        if not self._held or now < self._held_due:
            return
        self._held_checked = now
        for identity, held in list(self._held.items()):
            st = os.fstat(held.fd)
            if st.st_size != held.size and not names_it(held.path, st):
                try:
                    result = ingest_file(db, None, self.limits, should_stop=lambda: self._stopping, fd=held.fd)
                except Exception as exc:
                    self._failed(held.path, exc)
                    return
                self._done(result)
                held.size, held.grew = st.st_size, now
            elif now - held.grew > HOLD_SECONDS:
                with contextlib.suppress(OSError):
                    os.close(held.fd)
                del self._held[identity]


def _signature_of(path: str) -> Signature | None:
    try:
        return signature(os.stat(path))
    except OSError:
        return None


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
        if is_log_name(os.path.basename(path)):
            self.watcher.request(path)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino
