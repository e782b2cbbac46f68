"""One daemon per data directory: an exclusive flock that the kernel drops if we die.

The lock is held on the data directory itself, which a running daemon's database lives in and which
no one deletes by mistake, and on the lock file beside it (which says the holder's pid, and which
an older engram-ff locks). A lock on the file alone was lost when someone deleted the file: a second
daemon then created a new one, locked it, and ran beside the first on one database.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class AlreadyRunning(RuntimeError):
    pass


class DataDirLock:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._fds: list[int] = []

    def acquire(self) -> DataDirLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        folder = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        for held in (folder, fd):
            try:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                os.close(folder)
                raise AlreadyRunning(
                    f"another engram-ff (pid {holder}) already uses {self.path.parent}; "
                    "stop it or pick another --data directory"
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fds = [folder, fd]
        return self

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []

    def __enter__(self) -> DataDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def holder(path: Path) -> int | None:
    """The pid of the engram-ff that holds the lock at `path`, or None if none does; read-only.

    Held means the kernel lists an flock on the file's inode in /proc/locks: a pid file alone could be
    stale after a SIGKILL or a reboot. The pid itself is the one the holder wrote into the file (the
    kernel's may be from another pid namespace); 0 if it has not written it yet."""
    path = Path(path)
    try:
        st = path.stat()
        locks = Path("/proc/locks").read_text()
    except OSError:
        return None
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino} "
    if not any(" FLOCK " in line and inode in line for line in locks.splitlines()):
        return None
    try:
        return int(path.read_text().strip() or 0)
    except (OSError, ValueError):
        return 0
