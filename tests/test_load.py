"""Load on the real daemon: many files at once, appends while an update trains, a user's reader.

Small here (100 files x 100 lines); `engram-ff bench chaos` drops 1,000 x 1,000 and reports the peak RSS.
"""

import signal
import subprocess
import sys
import threading
import time

from engram_ff.bench.chaos import LINE_BYTES, check_state, load_run, make_line
from tests.daemon_helpers import NotifySocket, environment, query, wait_for, write_day


def test_files_dropped_at_once_are_all_stored_once_in_bounded_memory(tmp_path):
    result = load_run(tmp_path, files=100, lines=100, timeout=120)
    print(
        f"\n100 x 100 lines dropped at once: stored in {result.seconds:.1f} s, daemon peak RSS "
        f"{result.daemon_peak_rss_mib:.0f} MiB, longest reader wait {result.reader_max_wait_s * 1000:.0f} ms"
    )
    assert (result.stored, result.duplicated) == (100 * 100, 0)
    assert result.reader_torn == []
    assert result.reader_max_wait_s < 1.0
    assert result.daemon_peak_rss_mib < 300  # the idle-daemon target; torch lives in the update child only


READER = """.bail on
BEGIN;
SELECT 'before', count(*) FROM messages;
.shell sleep 2
SELECT 'after', count(*) FROM messages;
SELECT 'offsets', coalesce(sum(committed_offset), 0) FROM files WHERE path LIKE '%burst%';
SELECT 'burst', count(*) FROM messages m JOIN files f ON f.id = m.file_id WHERE f.path LIKE '%burst%';
COMMIT;
"""


def test_appends_while_an_update_trains_and_a_user_reads_with_sqlite3(tmp_path):
    """The watcher keeps up with bursts while the update child trains and writes checkpoints, and a
    `sqlite3` session holding a read transaction neither delays a commit nor sees half of one."""
    watch, data = tmp_path / "engram", tmp_path / "data"
    db = data / "engram-ff.db"
    write_day(watch, "2026-01-01", 200)
    notify = NotifySocket(tmp_path / "notify.sock")
    env = environment(
        NOTIFY_SOCKET=notify.path,
        ENGRAM_FF_UPDATE_MIN_STEPS="100000",
        ENGRAM_FF_UPDATE_MAX_STEPS="100000",
        ENGRAM_FF_CHECKPOINT_EVERY_SECONDS="0.2",
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "engram_ff.daemon.cli", "run", "--watch", str(watch), "--data", str(data)],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    burst = watch / "raw" / "burst.jsonl"
    try:
        notify.wait("READY", "1")
        wait_for(
            lambda: query(db, "SELECT 1 FROM checkpoints c JOIN runs r ON r.id = c.run_id WHERE r.status = 'running'"),
            timeout=90,
            what="the update to train",
        )
        reader = subprocess.Popen(["sqlite3", str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        said: dict[str, str] = {}  # one communicate, in its thread: a second call raced it for the output

        def read() -> None:
            said["out"] = reader.communicate(READER, timeout=60)[0]

        session = threading.Thread(target=read, daemon=True)
        session.start()
        latencies = []
        for n in range(10):  # ten bursts of 100 lines, each timed from its write to its commit
            with open(burst, "ab") as f:
                f.write(b"".join(make_line("burst", n * 100 + i) for i in range(100)))
            start = time.monotonic()
            wait_for(
                lambda n=n: (
                    query(
                        db,
                        "SELECT count(*) FROM messages m JOIN files f ON f.id = m.file_id WHERE f.path = ?",
                        [str(burst)],
                    )[0][0]
                    == (n + 1) * 100
                ),
                timeout=30,
                interval=0.01,
                what=f"burst {n}",
            )
            latencies.append(time.monotonic() - start)
            time.sleep(0.15)
        session.join(timeout=60)
        out = said["out"]
        assert query(db, "SELECT status FROM runs WHERE kind = 'update'") == [("running",)]  # still training
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=90) == 0
        notify.close()
    print(f"\nappend-to-commit latency under training and a reader: max {max(latencies) * 1000:.0f} ms")
    assert max(latencies) < 1.0
    rows = dict(line.split("|") for line in out.split())
    assert rows["before"] == rows["after"]  # one snapshot for the whole transaction...
    assert query(db, "SELECT count(*) FROM messages")[0][0] > int(rows["after"])  # ...while commits went on
    assert int(rows["offsets"]) == int(rows["burst"]) * LINE_BYTES  # lines and offsets of the same commits
    state = check_state(watch, data, settled=True)
    assert state.ok and state.stored == 200 + 1000
