"""Read the complete lines a file has beyond its committed offset, exactly once.

Exactly once, argued:
- Each batch of lines is stored in one transaction together with the file's new committed offset, so
  after a crash at any instant the database sits at a line boundary it fully holds: the next read
  starts there, and no line is lost or stored twice. A trailing line without its newline is left for
  a later read; a hole of NUL bytes before a line (a crash's unflushed tail, or a writer without
  O_APPEND after copytruncate) is passed over, never made part of the line after it.
- A file is its device and inode (ingest/identity.py): renamed or rotated, it keeps its row and offset,
  and the read goes on where it was, whatever its new name; a descriptor the watcher holds reads on
  after a rename or a delete (ingest/watcher.py). A file whose inode is new at a name, that shrank
  below its offset, whose first bytes changed or whose offset no longer follows a line end is read
  again from the start.
- Every such re-read, and every copy of lines already read (copytruncate's `X.jsonl.1`, a compressed
  `X.jsonl.1.gz`, a hard link), only adds what is not stored yet: a message is unique on (day, split,
  hash of its raw line), an event on the hash of its line, a quarantined line on (file, hash). So a
  line is stored once however many files hold it and however often they are read. (Two equal raw
  lines on one day are one message; a line without a timestamp in a file whose name has no date
  takes the day it is read, so a copy read on a later day stores it again.)
- Lines are lost only if no file holds them when they are read: between logrotate's copy and its
  truncate (copytruncate's own window, see docs/ingest.md), or when a file is deleted unread while no
  descriptor is held on it.
A line over the size limit is quarantined from its first max_line_bytes and the rest is skipped up to
its newline without holding it in memory. A file that leads out of the watched folder is not read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gzip
import hashlib
import logging
import marshal
import os
import pickle
import re
import stat
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from engram_ff.ingest.folder import Folder, Signature, signature
from engram_ff.ingest.identity import find_row
from engram_ff.ingest.names import is_compressed, live_name, shown
from engram_ff.ingest.parse import BadLine, Event, LineContext, Message, Skip, context_for, parse_line
from engram_ff.state import files

if TYPE_CHECKING:  # the parsing process imports this module: keep it light
    import sqlite_utils

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
BATCH_LINES = 20_000  # lines a transaction: few fsyncs, and the write lock is held for milliseconds
COMMIT_SECONDS = 1.0  # or this long, whichever comes first, when the lines come from a slow parse
PIECE_LINES = 2_000  # lines a message from the parsing process
PIPE_BYTES = 1 << 20
HEAD_BYTES = 1024  # fingerprint of a file's start, to tell an append from a rewrite
EXCERPT_BYTES = 200
WARNINGS_PER_FILE = 20  # then one summary line, so a file of garbage does not flood the journal
PARALLEL_MIN_BYTES = 8 << 20  # a backlog this large is parsed in a second process
# A line ends at LF, or at a CR before the next line's `{` (old Mac line ends: such a file stored nothing,
# issue #20.9), or at a CR that ends the file. A CR anywhere else is JSON's whitespace, inside the line.
LINE_END = re.compile(rb"\n|\r(?=\{)")


class LimitsSource(Protocol):
    """What Limits.of reads (daemon.config.Config has these, and follow_outside_symlinks)."""

    @property
    def probe_fraction(self) -> float: ...

    @property
    def max_line_bytes(self) -> int: ...


@dataclass
class Limits:
    probe_fraction: float = 0.10
    max_line_bytes: int = 1 << 20
    follow_outside: bool = False  # read files that symlinks lead to outside the watched folder

    @classmethod
    def of(cls, config: LimitsSource | None) -> Limits:
        """From anything with probe_fraction, max_line_bytes and follow_outside_symlinks attributes
        (daemon.config.Config)."""
        if config is None:
            return cls()
        if isinstance(config, Limits):
            return config
        return cls(config.probe_fraction, config.max_line_bytes, getattr(config, "follow_outside_symlinks", False))


@dataclass
class FileResult:
    path: str
    lines: int = 0  # complete lines consumed (quarantined ones included)
    messages: int = 0  # new rows in messages
    events: int = 0  # new rows in events
    skipped: int = 0  # empty lines, transcript entries without text, tool results
    duplicates: int = 0  # lines already stored (a re-read, a copy of a file)
    quarantined: int = 0
    offset: int = 0  # committed offset after this read
    pending: int = 0  # bytes after the offset waiting for their newline
    reread: bool = False
    error: str | None = None
    signature: Signature | None = None  # the file as it was opened (ingest/folder.py)


@dataclass
class IngestStats:
    """Totals over many FileResults: what `engram-ff ingest` prints and the watcher reports."""

    files: int = 0
    lines: int = 0
    messages: int = 0
    events: int = 0
    skipped: int = 0
    duplicates: int = 0
    quarantined: int = 0
    errors: int = 0

    def add(self, result: FileResult) -> None:
        self.files += 1
        self.errors += result.error is not None
        for name in ("lines", "messages", "events", "skipped", "duplicates", "quarantined"):
            setattr(self, name, getattr(self, name) + getattr(result, name))


def path_key(path: str | os.PathLike) -> str:
    """files.path: the name as UTF-8 text, undecodable bytes of odd file names written as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def line_hash(line: bytes) -> int:
    """64 bits of blake2b: the unique index stays small and fast. Two different lines collide (and the
    second is dropped as a duplicate) with probability about n**2 / 2**65: 3e-4 after 10**8 lines."""
    return int.from_bytes(hashlib.blake2b(line, digest_size=8).digest(), "big", signed=True)


def split_of(line: bytes, probe_fraction: float) -> str:
    """The message's split, drawn from its whole line (time, session, sender and text), so that the same
    line lands in the same split on every machine and every re-read, while a thing said k times is held
    out in all k copies with chance probe_fraction**k. Drawn from the text alone (before issue 22), every
    copy of a fact's question fell in the same split: bench learning's question said four times was held
    out of its night in all four. The cost: a message said again word for word may be held out in one copy
    and trained in another; the gate's fresh text leaves such a copy out (state/queries.py held_out_between)."""
    h = int.from_bytes(hashlib.blake2b(line, digest_size=8, person=b"engram-ff split").digest(), "big")
    return "probe" if h < probe_fraction * 2**64 else "train"


def open_file(path: str | os.PathLike) -> int:
    """O_NONBLOCK: a FIFO must not hang us."""
    return os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)


def ingest_file(
    db: sqlite_utils.Database,
    path: str | os.PathLike[str] | None,
    config: LimitsSource | None = None,
    *,
    should_stop: Callable[[], bool] = lambda: False,
    parser: ParsingProcess | None = None,
    folder: Folder | None = None,
    fd: int | None = None,
    group: CommitGroup | None = None,
) -> FileResult:
    """Store the new complete lines of one file. Errors reading the file are logged and returned,
    never raised; database errors (disk full, lock timeout) are raised with nothing half-stored.
    should_stop is asked after every committed batch, so a shutdown never waits for a whole backlog.
    A large backlog is parsed in `parser` (one is started for this file if none is given).
    With a folder, a file that leads out of it is refused. With fd, the file is read through that open
    descriptor (the caller closes it); path None then means the file may have no name any more: its row
    is found by identity alone (a descriptor held across a rename or delete). With a group, the read's
    transaction is shared with other files' reads, and committed by the group."""
    path = None if path is None else os.fspath(path)
    result = FileResult(path or "")
    own = fd is None
    if own:
        assert path is not None, "path None comes with fd (see above)"
        try:
            fd = open_file(path)
        except FileNotFoundError as exc:
            if os.path.lexists(path):  # a dangling symlink: say so
                return _failed(db, result, describe_error(exc))
            log.debug("%s: gone before it could be read (renamed or deleted; its new name is read)", shown(path))
            return result
        except OSError as exc:
            return _failed(db, result, describe_error(exc))
    assert fd is not None, "given, or opened just above"
    try:
        st = os.fstat(fd)
        result.signature = signature(st)
        if not stat.S_ISREG(st.st_mode):
            kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            result.error = f"{kind}, not a JSONL file"
            log.info("%s: skipped: %s", shown(result.path), result.error)
            return result
        if folder is not None and path is not None and folder.outside(real := _opened_path(fd, path)):
            result.error = "outside the watched folder"
            log.info(
                "%s: skipped: it leads to %s, outside the watched folder (follow_outside_symlinks = true would "
                "read it)",
                shown(path),
                shown(real),
            )
            return result
        _FileReader(db, path, fd, st, Limits.of(config), result, should_stop, parser, group).run()
    except OSError as exc:  # EIO, or permissions changed between open and read
        return _failed(db, result, describe_error(exc))
    finally:
        if own:
            os.close(fd)
    return result


def catch_up(
    db: sqlite_utils.Database,
    watch_dir: str | os.PathLike,
    *,
    limits: Limits | None = None,
    should_stop: Callable[[], bool] = lambda: False,
) -> IngestStats:
    """One pass over every log file below watch_dir (ingest/names.py), in path order (daily files oldest
    first), never out of the folder (ingest/folder.py)."""
    limits = limits or Limits()
    folder = Folder(watch_dir, follow_outside=limits.follow_outside)
    stats = IngestStats()
    group = CommitGroup(db.conn)
    with ParsingProcess() as parser:  # started only if some file has a large backlog
        for path, _ in folder.files():
            if should_stop():
                break
            stats.add(ingest_file(db, path, limits, should_stop=should_stop, parser=parser, folder=folder, group=group))
    group.commit()
    return stats


class CommitGroup:
    """One transaction shared by the reads of many files (a scan, a catch-up pass), committed every
    BATCH_LINES lines or COMMIT_SECONDS: a pass over 100,000 one-line files then pays an fsync a second,
    not one a file (4.6 ms a new one-line file alone, 1.1 of them CPU, on this project's 2 cores). Each
    file's rows and offset are in it together, so the exactly-once argument holds unchanged; what a
    read did counts only once `commit` returns (then `on_commit` runs), and a failure rolls back every
    read since the last commit, to be read again."""

    def __init__(self, conn) -> None:
        self.conn = conn
        self.lines, self.began = 0, 0.0
        self.on_commit: list[Callable[[], None]] = []

    def joined(self, lines: int) -> None:
        """A read's rows and offset are in the open transaction; commits if that makes it due."""
        if not self.lines:
            self.began = time.monotonic()
        self.lines += lines + 1  # a file costs about what a line does
        if self.lines >= BATCH_LINES or time.monotonic() - self.began > COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        files.commit(self.conn)
        done, self.on_commit, self.lines = self.on_commit, [], 0
        for callback in done:
            callback()

    def rollback(self) -> None:
        files.rollback(self.conn)
        self.on_commit, self.lines = [], 0


def describe_error(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symlink loop"
    return exc.strerror or str(exc)


def _opened_path(fd: int, path: str) -> str:
    """Where the open file really is: the kernel's answer, so a symlink swapped after a check changes nothing."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:  # no /proc: the best answer left
        return os.path.realpath(path)


def _failed(db: sqlite_utils.Database, result: FileResult, error: str) -> FileResult:
    """Log an unreadable file and note it on its row, so `status` shows why it is not growing."""
    result.error = error
    log.warning("%s: cannot read: %s", shown(result.path), error)
    if result.path:
        files.note_error(db.conn, path_key(result.path), error)
    return result


@dataclass
class Batch:
    """Consecutive complete lines of one file, ready to store with the offset just past them."""

    messages: list[tuple] = field(default_factory=list)
    events: list[tuple] = field(default_factory=list)
    quarantine: list[tuple] = field(default_factory=list)  # (file_id, offset, length, reason, excerpt, hash)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (offset, reason)
    lines: int = 0
    end: int = 0  # file offset after the last byte consumed
    skipping: bool = False  # end is inside an over-size line: skip to its newline next time
    stopped: str | None = None  # last batch: why the read ended before the file did (a corrupt .gz)


def read_batches(
    fd: int,
    start: int,
    skipping: bool,
    file_id: int,
    ctx: LineContext,
    limits: Limits,
    batch_lines: int | None = None,
    compressed: bool = False,
) -> Generator[Batch, None, None]:
    """Parse an open file from start to its last newline, a batch every batch_lines (default
    BATCH_LINES) lines and one at the end. Touches no database, so it can run in another process.
    Memory: one chunk plus at most max_line_bytes of a line still being read. Offsets of a compressed
    file count its decompressed bytes."""
    max_line = limits.max_line_bytes
    batch_lines = batch_lines or BATCH_LINES
    batch = Batch(end=start, skipping=skipping)
    carry = b""  # the start of a line whose newline has not been read yet
    pos = start  # file offset of carry[0]
    source = _Chunks(fd, start, compressed)
    for chunk in source:
        if skipping:
            newline = chunk.find(b"\n")
            pos += len(chunk) if newline < 0 else newline + 1
            if newline < 0:
                continue
            chunk, skipping = chunk[newline + 1 :], False
        if not carry:  # at a line's start: a hole of NUL bytes here is no part of the line after it
            body = chunk.lstrip(b"\x00")
            pos += len(chunk) - len(body)
            chunk = body
        lines = LINE_END.split(carry + chunk)
        carry = lines.pop()
        for line in lines:
            _add_line(batch, line, pos, file_id, ctx, limits)
            pos += len(line) + 1
            if batch.lines >= batch_lines:
                batch.end = pos
                yield batch
                batch = Batch(end=pos)
        if carry[:1] == b"\x00":
            body = carry.lstrip(b"\x00")
            pos += len(carry) - len(body)
            carry = body
        if len(carry) > max_line:
            _add_quarantine(batch, file_id, pos, carry[:max_line], len(carry), f"line over {max_line} bytes")
            pos += len(carry)
            carry, skipping = b"", True
        if batch.lines >= batch_lines:
            batch.end, batch.skipping = pos, skipping
            yield batch
            batch = Batch(end=pos, skipping=skipping)
    if not skipping and carry.endswith(b"\r") and b"\n" not in carry:  # old Mac line ends: the last line's CR
        _add_line(batch, carry, pos, file_id, ctx, limits)
        pos += len(carry)
    if source.limited:  # quarantined, so that `status` lists what was skipped; once, by its hash
        reason = source.stopped or ""
        _add_quarantine(batch, file_id, pos, reason.encode(), len(carry), reason)
    batch.end, batch.skipping = pos, skipping
    batch.stopped = source.stopped
    yield batch


# A .gz is read up to this many times its size on disk (and always its first GZ_FLOOR_BYTES): a rotation
# of chat logs is 5-15 times smaller compressed, but 8 MB of repeated lines expanded to 2.1 GB and cost 14
# minutes of CPU (issue #20.10). What lies past the limit is skipped, and quarantined so `status` shows it.
GZ_MAX_RATIO = 50
GZ_FLOOR_BYTES = 64 << 20


class _Chunks:
    """The bytes of an open file from an offset on, CHUNK_BYTES at a time: as they are, or decompressed
    (gzip, every member) in pieces of that size, so a gzip bomb costs time, never memory, and only up to
    GZ_MAX_RATIO times its size. A .gz still being written ends where its data does; a corrupt one ends
    there too, with `stopped` saying why; one past the ratio limit sets `limited` as well."""

    def __init__(self, fd: int, start: int, compressed: bool):
        self.fd, self.start, self.compressed = fd, start, compressed
        self.stopped: str | None = None
        self.limited = False

    def __iter__(self) -> Iterator[bytes]:
        if not self.compressed:
            os.lseek(self.fd, self.start, os.SEEK_SET)
            while chunk := os.read(self.fd, CHUNK_BYTES):
                yield chunk
            return
        os.lseek(self.fd, 0, os.SEEK_SET)
        on_disk = os.fstat(self.fd).st_size
        limit = max(GZ_FLOOR_BYTES, GZ_MAX_RATIO * on_disk)
        with open(os.dup(self.fd), "rb") as raw, gzip.GzipFile(fileobj=raw) as text:
            try:
                if self.start >= limit:
                    self._limit(limit, on_disk)
                    return
                text.seek(self.start)
                while chunk := text.read1(min(CHUNK_BYTES, limit - text.tell())):  # read1: kept up to a bad byte
                    yield chunk
                    if text.tell() >= limit and text.read1(1):
                        self._limit(limit, on_disk)
                        return
            except EOFError:
                pass  # the end of what was written so far: the rest is read when it is there
            except (gzip.BadGzipFile, zlib.error) as exc:
                self.stopped = f"cannot decompress past byte {text.tell()} of its text: {exc}"

    def _limit(self, limit: int, on_disk: int) -> None:
        self.limited = True
        self.stopped = (
            f"decompresses to more than {GZ_MAX_RATIO} times its {on_disk:,} bytes on disk: read up to byte "
            f"{limit:,} of its text, the rest is skipped (a .gz bomb, or lines repeated past belief)"
        )


def _add_line(batch: Batch, line: bytes, offset: int, file_id: int, ctx: LineContext, limits: Limits) -> None:
    batch.lines += 1
    if line[:1] == b"\x00":  # a hole of NUL bytes before the line: the line starts after it
        body = line.lstrip(b"\x00")
        offset, line = offset + len(line) - len(body), body
        if not line:
            batch.skipped.append((offset, "NUL bytes only (a hole left by a crash or a truncation)"))
            return
    if len(line) > limits.max_line_bytes:
        _add_quarantine(
            batch, file_id, offset, line[: limits.max_line_bytes], len(line), f"line over {limits.max_line_bytes} bytes"
        )
        return
    if line.endswith(b"\r"):
        line = line[:-1]
    try:
        item = parse_line(line, ctx)
    except BadLine as exc:
        _add_quarantine(batch, file_id, offset, line, len(line), str(exc))
        return
    if type(item) is Message:
        batch.messages.append(
            (
                file_id,
                offset,
                item.day,
                item.ts,
                item.session,
                item.role,
                item.sender,
                item.text,
                line_hash(line),
                split_of(line, limits.probe_fraction),
                item.shape,
            )
        )
    elif type(item) is Event:
        batch.events.append((file_id, offset, item.day, item.ts, item.type, item.action, item.session, line_hash(line)))
    else:
        assert type(item) is Skip, "parse_line returns a Message, an Event or a Skip"
        batch.skipped.append((offset, item.reason))


def _add_quarantine(batch: Batch, file_id: int, offset: int, data: bytes, length: int, reason: str) -> None:
    excerpt = data[:EXCERPT_BYTES].decode("utf-8", "backslashreplace")
    batch.quarantine.append((file_id, offset, length, reason, excerpt, line_hash(b"q" + data)))


class _FileReader:
    """One read of one open file, from its committed offset to its last newline, stored batch by batch.

    Batches are inserted as they arrive and committed together with the file's offset every
    BATCH_LINES lines (or COMMIT_SECONDS), so the parsing process's small batches cost no extra fsyncs."""

    def __init__(
        self,
        db,
        path: str | None,
        fd: int,
        st: os.stat_result,
        limits: Limits,
        result: FileResult,
        should_stop: Callable[[], bool],
        parser: ParsingProcess | None,
        group: CommitGroup | None = None,
    ):
        self.conn, self.should_stop, self.parser, self.group = db.conn, should_stop, parser, group
        self.path, self.fd, self.st, self.limits, self.result = path, fd, st, limits, result
        self.key = None if path is None else path_key(path)
        self.warnings = 0
        self.record = False  # the row must be written even if no line is: new, re-read, moved, or had an error
        self._pending = _Pending()

    def run(self) -> None:
        try:
            self._run()
        except BaseException:
            self._rollback()  # a row added or moved before the failure goes with it
            raise

    def _run(self) -> None:
        found = find_row(self.conn, self.key, self.st, self._head_matches)
        if found is None:
            return  # a held descriptor of a file no row knows: nothing was ever read from it
        row = found.row
        self.file_id = row["id"]
        self.head_len = row["head_len"]
        self.name = self.path if self.path is not None else row["path"]  # for the log, and the day it falls back to
        self.result.path = self.name
        self.shown = shown(self.name)
        self.compressed = is_compressed(os.path.basename(files.name_before_detach(self.name)))
        # The first bytes as this read starts: the fingerprint stored with each batch is of these, not of
        # whatever the file holds by then, or a file truncated and rewritten mid-read would pass for read.
        self.head = os.pread(self.fd, HEAD_BYTES, 0)
        if found.moved_from is not None:
            log.info(
                "%s: renamed from %s: continuing at byte %d",
                self.shown,
                shown(found.moved_from),
                row["committed_offset"],
            )
        same = (
            row["inode"] == self.st.st_ino
            and row["device"] == self.st.st_dev
            and self._grown(row)
            and self._head_matches(row)
            and self._at_line_end(row)
        )
        if found.replaced is None and (row["inode"] is None or same):
            start, skipping, self.generation = row["committed_offset"], bool(row["skipping"]), row["generation"]
        else:
            earlier = found.replaced or row
            start, skipping = 0, False
            self.generation = 0 if found.replaced else row["generation"] + 1  # a new file, or the same again
            self.head_len = 0
            self.result.reread = True
            log.info(
                "%s: truncated, replaced or rotated (offset %d, size %d): reading again from the start",
                self.shown,
                earlier["committed_offset"],
                self.st.st_size,
            )
        self.result.offset = start
        self.record = not same or row["error"] is not None or found.wrote
        if self._unchanged(row, start) and not self.record:
            return  # nothing new: no write at all
        self.skipping = skipping
        live = os.path.join(
            os.path.dirname(self.name), live_name(os.path.basename(files.name_before_detach(self.name)))
        )
        ctx = context_for(live)
        args = (start, skipping, self.file_id, ctx, self.limits)
        try:
            if self.compressed:
                self._store(read_batches(self.fd, *args, compressed=True))
            elif self.path is None or self.st.st_size - start < PARALLEL_MIN_BYTES:
                self._store(read_batches(self.fd, *args))
            elif self.parser is not None:
                self._store(self.parser.batches(self.path, self.st, *args))
            else:
                with ParsingProcess() as parser:
                    self._store(parser.batches(self.path, self.st, *args))
        except WorkerFailed as exc:  # go on here from what the worker's batches committed
            log.warning("%s: %s; reading on in this process from byte %d", self.shown, exc, self.result.offset)
            self._store(read_batches(self.fd, self.result.offset, self.skipping, self.file_id, ctx, self.limits))
        if self.compressed:
            self.result.pending = 0  # its text's length is unknown without reading it all
        else:
            self.result.pending = max(0, os.fstat(self.fd).st_size - self.result.offset)
        if self.warnings > WARNINGS_PER_FILE:
            log.warning(
                "%s: %d more lines quarantined (see the quarantine table)",
                self.shown,
                self.warnings - WARNINGS_PER_FILE,
            )

    def _grown(self, row: dict) -> bool:
        """Not shorter than what was read: offsets of a compressed file count its text, so there the
        compressed size at the last read is what it must not fall below."""
        return self.st.st_size >= (row["size"] if self.compressed else row["committed_offset"])

    def _unchanged(self, row: dict, start: int) -> bool:
        if self.compressed:
            return self.st.st_size == row["size"] and start > 0
        return self.st.st_size == start

    def _store(self, batches: Generator[Batch, None, None]) -> None:
        """Insert every batch; commit every BATCH_LINES lines, when a parsing process fails (what it sent
        is whole lines), and at the end; roll back on anything else."""
        with contextlib.closing(batches):  # closing stops a parsing process still running
            try:
                for batch in batches:
                    self._insert(batch)
                    self._note_end(batch)
                    pending = self._pending
                    if pending.lines >= BATCH_LINES or time.monotonic() - pending.began > COMMIT_SECONDS:
                        self._commit()
                        if self.should_stop():
                            log.info(
                                "%s: stopping at byte %d; the rest is read at the next start",
                                self.shown,
                                self.result.offset,
                            )
                            return
            except WorkerFailed:
                self._commit()
                raise
            except BaseException:
                self._rollback()
                raise
            self._commit()

    def _note_end(self, batch: Batch) -> None:
        """What the last batch says about the rest of the file, once in the log."""
        if batch.stopped:
            self.result.error = batch.stopped
            log.warning("%s: %s", self.shown, batch.stopped)

    def _head_matches(self, row: dict) -> bool:
        if not row["head_len"]:
            return True
        return _head_hash(os.pread(self.fd, row["head_len"], 0)) == row["head_hash"]

    def _at_line_end(self, row: dict) -> bool:
        """A committed offset always follows a newline or a hole of NUL bytes (or sits inside a skipped
        over-size line). A compressed file is never rewritten in place: its check is its size."""
        offset = row["committed_offset"]
        if offset == 0 or row["skipping"] or self.compressed:
            return True
        return os.pread(self.fd, 1, offset - 1) in (b"\n", b"\r", b"\x00")

    def _insert(self, batch: Batch) -> None:
        """The batch's rows, in the open transaction (begun here if none is)."""
        conn, pending = self.conn, self._pending
        self.result.lines += batch.lines
        self.result.skipped += len(batch.skipped)
        for offset, reason in batch.skipped:
            log.debug("%s @ byte %d: skipped: %s", self.shown, offset, reason)
        if batch.end == (pending.end if pending.open else self.result.offset):
            return  # only a half-written line so far
        if not pending.open:
            files.begin(conn)
            pending.open, pending.began = True, time.monotonic()
            pending.messages_after = files.last_message_id(conn)
        pending.messages += self._counted(files.insert_messages(conn, batch.messages), batch.messages)
        pending.events += self._counted(files.insert_events(conn, batch.events), batch.events)
        pending.quarantined += self._counted(files.insert_quarantine(conn, batch.quarantine), batch.quarantine)
        pending.lines += batch.lines
        pending.quarantine.extend((offset, reason) for _, offset, _, reason, _, _ in batch.quarantine)
        pending.end, pending.skipping = batch.end, batch.skipping

    def _counted(self, added: int, rows: list[tuple]) -> int:
        """Rows the insert found already stored are duplicates."""
        self._pending.duplicates += len(rows) - added
        return added

    def _commit(self) -> None:
        """What _insert stored, and the offset just past it, in one transaction."""
        conn, result, pending = self.conn, self.result, self._pending
        if not pending.open and not self.record:
            return
        end, skipping = (pending.end, pending.skipping) if pending.open else (result.offset, self.skipping)
        if self.head_len < HEAD_BYTES and end > self.head_len:
            self.head_len = min(HEAD_BYTES, end, len(self.head))
        head_hash = _head_hash(self.head[: self.head_len]) if self.head_len else None
        try:
            files.commit_read(
                conn,
                self.file_id,
                offset=end,
                skipping=skipping,
                size=os.fstat(self.fd).st_size,
                device=self.st.st_dev,
                inode=self.st.st_ino,
                generation=self.generation,
                head_len=self.head_len,
                head_hash=head_hash,
                new_messages=pending.messages,
                messages_after=pending.messages_after,
                commit=self.group is None,
            )
            if self.group is not None:
                self.group.joined(pending.lines)
        except BaseException:
            self._rollback()
            raise
        for offset, reason in pending.quarantine:
            self.warnings += 1
            if self.warnings <= WARNINGS_PER_FILE:
                log.warning("%s @ byte %d: quarantined: %s", self.shown, offset, reason)
        result.messages += pending.messages
        result.events += pending.events
        result.quarantined += pending.quarantined
        result.duplicates += pending.duplicates
        result.offset, self.skipping = end, skipping
        self.record = False
        self._pending = _Pending()

    def _rollback(self) -> None:
        if self.group is not None:
            self.group.rollback()
        files.rollback(self.conn)
        self._pending = _Pending()


@dataclass
class _Pending:
    """What the open transaction holds, made known to the FileResult only once it commits."""

    open: bool = False
    began: float = 0.0
    lines: int = 0
    messages: int = 0
    events: int = 0
    quarantined: int = 0
    duplicates: int = 0
    messages_after: int = 0  # the largest message id before this transaction: its rows are above it
    end: int = 0
    skipping: bool = False
    quarantine: list[tuple[int, str]] = field(default_factory=list)


class WorkerFailed(Exception):
    """The parsing process could not start, died, or found the file replaced."""


WORKER_COMMAND = [sys.executable, "-m", "engram_ff.ingest.worker"]


class ParsingProcess:
    """read_batches in a child process (ingest/worker.py), so parsing a large backlog runs beside the
    SQLite writes on the other core. One process serves file after file: a pass over a folder pays one
    interpreter start, not one a file. It sends PIECE_LINES at a time, so the writer starts early and
    finishes soon after it; the pipe bounds what is in flight."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None

    def __enter__(self) -> ParsingProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def batches(self, path: str, st: os.stat_result, *args) -> Generator[Batch, None, None]:
        proc = self._started()
        assert proc.stdin is not None and proc.stdout is not None, "started with both pipes"
        in_step = False  # the process has answered this file to its end, so it can take the next one
        try:
            try:
                pickle.dump((path, (st.st_dev, st.st_ino), *args, min(PIECE_LINES, BATCH_LINES)), proc.stdin)
                proc.stdin.flush()
            except OSError:
                raise WorkerFailed(f"the parsing process died (exit code {proc.wait()})") from None
            while True:
                kind, value = read_frame(proc.stdout)
                if kind is None:
                    raise WorkerFailed(f"the parsing process died (exit code {proc.wait()})")
                if kind == "batch":
                    assert isinstance(value, tuple), "the worker writes a batch as a tuple of its fields"
                    yield Batch(*value)
                    continue
                in_step = True
                if kind == "error":
                    raise WorkerFailed(f"the parsing process stopped: {value}")
                return
        finally:
            if not in_step:  # abandoned mid-file (a stop, a database error) or dead: the next file gets a new one
                self.close(kill=True)

    def _started(self) -> subprocess.Popen:
        if self._proc is None:
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # this process's modules
            try:
                self._proc = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
            except OSError as exc:
                raise WorkerFailed(f"cannot start a parsing process: {exc}") from None
            assert self._proc.stdout is not None, "started with stdout=PIPE"
            with contextlib.suppress(OSError, AttributeError):  # Linux: room for a few pieces in the pipe
                fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        return self._proc

    def close(self, kill: bool = False) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        assert proc.stdin is not None and proc.stdout is not None, "started with both pipes"
        with contextlib.suppress(OSError):
            proc.stdin.close()
        proc.stdout.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def write_frame(out, kind: str, value: tuple | str | None) -> None:
    """One message on the pipe: its length, then marshal of (kind, value); marshal is 3x faster to
    write than pickle for rows of strings and numbers, and both ends run the same interpreter."""
    data = marshal.dumps((kind, value))
    out.write(len(data).to_bytes(8, "little") + data)


def read_frame(stream) -> tuple[str | None, object]:
    """(kind, value), or (None, None) if the stream ended or was cut short."""
    header = stream.read(8)
    if len(header) < 8:
        return None, None
    data = stream.read(int.from_bytes(header, "little"))
    try:
        return marshal.loads(data)
    except (EOFError, ValueError, TypeError):
        return None, None


def _head_hash(head: bytes) -> bytes:
    return hashlib.blake2b(head, digest_size=16).digest()
