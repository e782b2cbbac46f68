"""The parsing process for large backlogs: `python -m ingest.worker`, started by ingest.reader.

It reads its arguments as one pickle on stdin, then writes ("batch", Batch) pickles to stdout as it
parses, and ("done", None) or ("error", reason) at the end. It never touches the database: the
process that started it stores every batch with its offset, so killing either one loses nothing.
A plain subprocess rather than multiprocessing, whose spawn re-imports the caller's __main__.
"""
from __future__ import annotations

import os
import pickle
import sys

from ingest.reader import describe_error, read_batches


def main() -> int:
    out = sys.stdout.buffer
    path, identity, *args = pickle.load(sys.stdin.buffer)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != identity:
                pickle.dump(("error", "the file was replaced before it could be parsed"), out)
                return 0
            for batch in read_batches(fd, *args):
                pickle.dump(("batch", batch), out, pickle.HIGHEST_PROTOCOL)
                out.flush()
        finally:
            os.close(fd)
        pickle.dump(("done", None), out)
        out.flush()
    except BrokenPipeError:  # the reader is gone: nothing to do, and nothing to complain about at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        pickle.dump(("error", describe_error(exc)), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
