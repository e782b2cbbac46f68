"""The parsing process for large backlogs: `python -m engram_ff.ingest.worker`, started by ingest.reader.

It reads jobs, one pickle each, from stdin: (path, (device, inode), start, skipping, file_id, ctx,
limits, batch_lines). For each it writes frames (ingest.reader.write_frame) to stdout: ("batch", rows)
as it parses, then ("done", None) or ("error", reason); then it waits for the next job, and exits when
stdin closes. It never touches the database: the process that started it stores every batch with its
offset, so killing either one loses nothing. A plain subprocess rather than multiprocessing, whose
spawn re-imports the caller's __main__.
"""

from __future__ import annotations

import os
import pickle
import sys

from engram_ff.ingest.reader import describe_error, read_batches, write_frame


def parse_file(out, path: str, identity: tuple[int, int], *args) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        write_frame(out, "error", describe_error(exc))
        return
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != identity:
            write_frame(out, "error", "the file was replaced before it could be parsed")
            return
        for b in read_batches(fd, *args):
            write_frame(out, "batch", (b.messages, b.events, b.quarantine, b.skipped, b.lines, b.end, b.skipping))
            out.flush()
    except OSError as exc:
        write_frame(out, "error", describe_error(exc))
        return
    finally:
        os.close(fd)
    write_frame(out, "done", None)


def main() -> int:
    jobs, out = sys.stdin.buffer, sys.stdout.buffer
    try:
        while True:
            try:
                job = pickle.load(jobs)
            except EOFError:
                return 0
            parse_file(out, *job)
            out.flush()
    except BrokenPipeError:  # the reader is gone: nothing to do, and nothing to complain about at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
