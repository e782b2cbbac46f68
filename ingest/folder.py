"""The watched folder: its log files, found without ever leaving it or going round a loop, and which of
them changed since they were last read.

Containment. A symlink (to a file or a folder) is followed only if its target, resolved, lies inside
the watched folder; one that leads out of it is skipped with one log line for the whole life of this
object (`follow_outside_symlinks = true` follows it), and one whose target holds the watched folder
(`ln -s / W/raw/root`, `ln -s .. W/up`) is a loop and always skipped. A folder reached twice (two
links to one place) is walked once. So a walk visits each folder inside the watched one at most once,
and nothing else. The reader checks the same containment again on the file it actually opened
(ingest/reader.py), so a symlink swapped in after the walk changes nothing.

Changes. A walk costs one stat() a file and reads nothing; `changed()` returns the files whose device,
inode, size, mtime or ctime differ from what `mark()` recorded at their last read, so an idle daemon
over 100,000 files reads none of them (the watcher times the walk and spaces walks out to keep them
under half a percent of a core: bench/results/chaos.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

from engram_ff.ingest.names import is_log_name, shown

log = logging.getLogger(__name__)

Signature = tuple[int, int, int, int, int]  # device, inode, size, mtime_ns, ctime_ns


def signature(st: os.stat_result) -> Signature:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class Folder:
    def __init__(self, root: str | os.PathLike, *, follow_outside: bool = False):
        self.root = os.fspath(root)
        self.real_root = os.path.realpath(self.root)
        self.follow_outside = follow_outside
        self._reported: set[str] = set()  # paths already logged as skipped: one line each
        self._read: dict[str, Signature | None] = {}  # path -> its signature when it was last read

    def files(self) -> Iterator[tuple[str, Signature | None]]:
        """(path, signature) of every log file below the root, each folder's files in name order before
        its subfolders (daily files oldest first). The signature is None if the file cannot be stat()ed."""
        yield from self._walk(self.root, set())

    def changed(self) -> list[tuple[str, Signature | None]]:
        """The files that are new or changed since their last mark(); forgets the ones that are gone."""
        found = list(self.files())
        self._read = {path: self._read[path] for path, _ in found if path in self._read}
        return [(path, sig) for path, sig in found if path not in self._read or self._read[path] != sig]

    def mark(self, path: str, sig: Signature | None) -> None:
        """path was read as it was when it had this signature: the next changed() passes over it until
        it changes again."""
        self._read[path] = sig

    def outside(self, real_path: str) -> bool:
        """Is this resolved path out of the watched folder (and not allowed to be)?"""
        return not self.follow_outside and not _below(real_path, self.real_root)

    def _walk(self, folder: str, walked: set[tuple[int, int]]) -> Iterator[tuple[str, Signature | None]]:
        try:
            st = os.stat(folder)
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self._report(folder, f"cannot list: {_describe(exc)}", logging.WARNING)
            return
        if (st.st_dev, st.st_ino) in walked:
            self._report(folder, "skipped: a second way into a folder already walked")
            return
        walked.add((st.st_dev, st.st_ino))
        subfolders = []
        for entry in entries:
            if entry.is_symlink():
                target = os.path.realpath(entry.path)
                refused = self._refused(target)
                if refused:
                    self._report(entry.path, refused)
                    continue
                if os.path.isdir(target):
                    subfolders.append(entry.path)
                    continue
            elif entry.is_dir(follow_symlinks=False):
                if is_log_name(entry.name):
                    self._report(entry.path, "skipped: a directory, not a JSONL file")
                subfolders.append(entry.path)
                continue
            if is_log_name(entry.name):
                try:
                    sig = signature(entry.stat())
                except OSError:
                    sig = None  # dangling, a loop, unreadable: the reader says why when it tries
                yield entry.path, sig
        for path in subfolders:
            yield from self._walk(path, walked)

    def _refused(self, target: str) -> str | None:
        if _below(self.real_root, target) or self.real_root == target:
            return f"skipped: a symlink loop (it leads to {shown(target)}, which holds the watched folder)"
        if self.outside(target):
            return (
                f"skipped: a symlink to {shown(target)}, outside the watched folder "
                "(follow_outside_symlinks = true would follow it)"
            )
        return None

    def _report(self, path: str, what: str, level: int = logging.INFO) -> None:
        if path not in self._reported:
            self._reported.add(path)
            log.log(level, "%s: %s", shown(path), what)


def _below(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip(os.sep) + os.sep)


def _describe(exc: OSError) -> str:
    return exc.strerror or str(exc)
