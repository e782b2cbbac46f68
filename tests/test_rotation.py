"""Log rotation with the real watcher: `mv` + `touch`, a writer still appending to a rotated file's old
descriptor, compressed rotated files, and the real `logrotate` binary forced again and again while a
writer appends, in each of its modes. Every line written must be stored exactly once.

The one exception is logrotate's own: with copytruncate, a line written between its copy and its
truncate is in no file (logrotate(8) says so); such lines are counted and reported, never hidden, and
every line that some file still holds must be stored.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from engram_ff.ingest import watcher as watcher_module
from engram_ff.ingest.reader import Limits, catch_up
from engram_ff.ingest.watcher import Watcher
from engram_ff.state.db import open_db

DAY = "2026-11-27"


def line(n: int, tag: str = "w") -> bytes:
    return (
        orjson.dumps(
            {
                "timestamp": f"{DAY}T10:00:00Z",
                "session_key": "s",
                "direction": "in",
                "sender": "u",
                "content": f"{tag}{n}",
            }
        )
        + b"\n"
    )


def stored(db) -> list[str]:
    return [r[0] for r in db.execute("SELECT text FROM messages ORDER BY id")]


def on_disk(folder: Path) -> set[str]:
    """The texts of every line some file in the folder holds (compressed ones decompressed). What follows a
    file's last newline is no line: the appender writes whole lines, so it is one that a copy tore (logrotate's
    copy read the file while a line was being written; the daemon leaves it waiting for its newline, as it should).
    A CI run on a loaded machine once found such a piece, 32 bytes of a line, in a copytruncate copy."""
    found = set()
    for path in folder.rglob("*"):
        if not path.is_file() or ".jsonl" not in path.name:
            continue
        data = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        for raw in data.split(b"\n")[:-1]:
            raw = raw.lstrip(b"\x00")
            if raw:
                found.add(orjson.loads(raw)["content"])
    return found


def settle(db, folder: Path, timeout: float = 30.0) -> list[str]:
    """Wait until every line on disk is stored (or the timeout); the stored texts."""
    deadline = time.monotonic() + timeout
    while not on_disk(folder) <= set(stored(db)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return stored(db)


@pytest.fixture
def watched(tmp_path):
    folder, started = tmp_path / "engram", []
    (folder / "raw").mkdir(parents=True)

    def start(**options):
        w = Watcher(tmp_path / "state.db", folder, **{"debounce_s": 0.02, "rescan_s": 60.0, **options})
        w.start()
        started.append(w)
        return w

    yield folder, open_db(tmp_path / "state.db"), start
    for w in started:
        w.stop()


def test_mv_then_touch_right_after_100_appends_stores_all_100(watched):
    """The issue's steps: the daemon had read nothing of the 100 lines when the file was renamed."""
    folder, db, start = watched
    start()
    daily = folder / "raw" / f"{DAY}.jsonl"
    with open(daily, "ab") as f:
        f.write(b"".join(line(i) for i in range(100)))
    os.rename(daily, daily.with_name(f"{DAY}.jsonl.1"))
    daily.touch()
    texts = settle(db, folder)
    assert sorted(texts) == sorted(f"w{i}" for i in range(100)) and len(texts) == 100


def test_a_rotated_file_keeps_its_row_and_offset(watched):
    folder, db, start = watched
    start()
    daily = folder / "raw" / f"{DAY}.jsonl"
    with open(daily, "ab") as f:
        f.write(b"".join(line(i) for i in range(10)))
    settle(db, folder)
    rotated = daily.with_name(f"{DAY}.jsonl-20261128")
    os.rename(daily, rotated)
    with open(rotated, "ab") as f:
        f.write(b"".join(line(i) for i in range(10, 15)))
    with open(daily, "ab") as f:
        f.write(line(0, "new"))
    assert len(settle(db, folder)) == 16
    rows = dict(db.execute("SELECT path, messages FROM files"))
    assert rows == {str(rotated): 15, str(daily): 1}  # the row moved with its file: nothing read twice
    assert db.execute("SELECT sum(generation) FROM files").fetchone()[0] == 0


def writer_beats_logrotate_create(daily: Path) -> None:
    """logrotate `create` renames X.jsonl to X.jsonl.1; the writer notices and reopens with O_CREAT before
    logrotate creates X.jsonl, and appends w10-w19; logrotate (3.10 on) finds X.jsonl there, renames it to
    X.jsonl-YYYYMMDDHH.backup and creates its own, where the writer, reopening again, appends w20-w29.
    w10-w19 are in the .backup alone: the real logrotate test below once missed 19 such lines on a loaded
    machine, and misses them most runs with logrotate held up between its rename and its create
    (`strace -P X.jsonl -e inject=rename:delay_exit=15000:when=1 logrotate ...`)."""
    os.rename(daily, daily.with_name(f"{DAY}.jsonl.1"))
    daily.write_bytes(b"".join(line(i) for i in range(10, 20)))
    os.rename(daily, daily.with_name(f"{DAY}.jsonl-2026120512.backup"))
    daily.write_bytes(b"".join(line(i) for i in range(20, 30)))


def test_a_file_logrotate_moves_out_of_its_way_is_read_at_its_backup_name(watched):
    """The debounce outlasts the steps, so no read finds the writer's file at the live name: only its
    move to the .backup name says where its lines went."""
    folder, db, start = watched
    daily = folder / "raw" / f"{DAY}.jsonl"
    daily.write_bytes(b"".join(line(i) for i in range(10)))
    start(debounce_s=1.0)
    settle(db, folder)
    writer_beats_logrotate_create(daily)
    texts = settle(db, folder, timeout=10.0)
    assert sorted(texts) == sorted(f"w{i}" for i in range(30)) and len(texts) == 30


def test_a_backup_name_is_read_by_a_pass_over_the_folder(tmp_path):
    """What the start-up scan and the rescans read: the daemon may have been down while it happened."""
    raw = tmp_path / "engram" / "raw"
    raw.mkdir(parents=True)
    daily = raw / f"{DAY}.jsonl"
    daily.write_bytes(b"".join(line(i) for i in range(10)))
    db = open_db(tmp_path / "state.db")
    catch_up(db, tmp_path / "engram")
    writer_beats_logrotate_create(daily)
    assert catch_up(db, tmp_path / "engram").messages == 20
    assert sorted(stored(db)) == sorted(f"w{i}" for i in range(30))


def test_lines_appended_to_the_old_descriptor_after_rename_and_delete_are_read_through_it(watched, monkeypatch):
    """logrotate `create compress` without delaycompress: renamed, compressed, deleted, while the writer
    has not reopened yet. The held descriptor is the only way left to those lines."""
    monkeypatch.setattr(watcher_module, "HELD_POLL_S", 0.05)
    folder, db, start = watched
    start()
    daily = folder / "raw" / f"{DAY}.jsonl"
    writer = open(daily, "ab", buffering=0)  # noqa: SIM115 - held like a logging library holds it
    try:
        writer.write(b"".join(line(i) for i in range(20)))
        settle(db, folder)
        rotated = daily.with_name(f"{DAY}.jsonl.1")
        os.rename(daily, rotated)
        daily.touch()
        with open(rotated, "rb") as src, gzip.open(f"{rotated}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        rotated.unlink()
        writer.write(b"".join(line(i) for i in range(20, 30)))  # into a file no name holds any more
        deadline = time.monotonic() + 10
        while len(stored(db)) < 30 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        writer.close()
    texts = stored(db)
    assert sorted(texts) == sorted(f"w{i}" for i in range(30)) and len(texts) == 30


def test_a_stop_reads_what_was_appended_to_a_deleted_file_first(watched, monkeypatch):
    """Stopped before it looked at the held descriptors again: their tail is read at stop, since once
    they are closed no one can read a deleted file."""
    monkeypatch.setattr(watcher_module, "HELD_POLL_S", 3600.0)
    folder, db, start = watched
    w = start()
    daily = folder / "raw" / f"{DAY}.jsonl"
    with open(daily, "ab", buffering=0) as writer:
        writer.write(b"".join(line(i) for i in range(5)))
        settle(db, folder)
        daily.unlink()
        writer.write(b"".join(line(i) for i in range(5, 8)))
        w.stop()
    assert sorted(stored(db)) == sorted(f"w{i}" for i in range(8))


def test_a_compressed_rotation_found_at_start_is_read_and_adds_only_what_was_missing(tmp_path):
    """The daemon was down while the file got its last lines and was rotated and compressed: the .gz is
    the only place left for them."""
    raw = tmp_path / "engram" / "raw"
    raw.mkdir(parents=True)
    daily = raw / f"{DAY}.jsonl"
    daily.write_bytes(b"".join(line(i) for i in range(60)))
    db = open_db(tmp_path / "state.db")
    assert catch_up(db, tmp_path / "engram").messages == 60
    with open(daily, "ab") as f:
        f.write(b"".join(line(i) for i in range(60, 100)))
    with open(daily, "rb") as src, gzip.open(raw / f"{DAY}.jsonl.1.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    daily.unlink()
    daily.touch()
    stats = catch_up(db, tmp_path / "engram")
    assert (stats.messages, stats.duplicates) == (40, 60)
    assert sorted(stored(db)) == sorted(f"w{i}" for i in range(100))
    assert catch_up(db, tmp_path / "engram").lines == 0  # the .gz's offset is kept: not read again


def test_a_gz_cut_short_is_read_as_far_as_it_goes_then_on_when_complete(tmp_path):
    """logrotate writes X.1.gz while we may read it: a stream that ends early is not an error."""
    raw = tmp_path / "engram" / "raw"
    raw.mkdir(parents=True)
    whole = gzip.compress(b"".join(line(i) for i in range(500)), mtime=0)
    partial = raw / f"{DAY}.jsonl.gz"
    partial.write_bytes(whole[: len(whole) // 2])
    db = open_db(tmp_path / "state.db")
    first = catch_up(db, tmp_path / "engram")
    assert 0 < first.messages < 500 and first.errors == 0
    partial.write_bytes(whole)
    catch_up(db, tmp_path / "engram")
    assert sorted(stored(db)) == sorted(f"w{i}" for i in range(500))


def test_a_corrupt_gz_is_logged_and_what_came_before_the_damage_kept(tmp_path, caplog):
    raw = tmp_path / "engram" / "raw"
    raw.mkdir(parents=True)
    data = bytearray(gzip.compress(b"".join(line(i) for i in range(2000)), mtime=0))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    (raw / f"{DAY}.jsonl.gz").write_bytes(bytes(data))
    db = open_db(tmp_path / "state.db")
    stats = catch_up(db, tmp_path / "engram")
    assert 0 < stats.messages < 2000 and stats.errors == 1
    assert "cannot decompress past byte" in caplog.text


def test_a_gzip_bomb_is_read_in_bounded_memory(tmp_path):
    """1 GB of NUL bytes compressed to 1 MB: a hole, passed over chunk by chunk, never held whole."""
    raw = tmp_path / "engram" / "raw"
    raw.mkdir(parents=True)
    with gzip.open(raw / f"{DAY}.jsonl.gz", "wb", compresslevel=1) as f:
        f.write(line(0))
        block = b"\x00" * (1 << 20)
        for _ in range(256):  # 256 MiB: enough to show memory stays flat, quick to decompress
            f.write(block)
        f.write(line(1))
    script = (  # VmHWM, not ru_maxrss: that one is inherited from the parent (pytest, torch loaded) at exec
        "import sys; from pathlib import Path; from engram_ff.ingest.reader import catch_up;"
        "from engram_ff.state.db import open_db; s = catch_up(open_db(sys.argv[1]), sys.argv[2]);"
        "hwm = next(l for l in Path('/proc/self/status').read_text().splitlines() if l.startswith('VmHWM'));"
        "print(s.messages, s.quarantined, int(hwm.split()[1]) // 1024)"
    )
    out = subprocess.run(
        [os.sys.executable, "-c", script, str(tmp_path / "state.db"), str(tmp_path / "engram")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    messages, quarantined, peak_mib = map(int, out.stdout.split())
    # the line past GZ_MAX_RATIO times the file's size on disk is not read: skipped, and quarantined to say so
    assert messages == 1 and quarantined == 1 and peak_mib < 150, (messages, quarantined, peak_mib)


# --- the real logrotate --------------------------------------------------------------------------------
LOGROTATE = shutil.which("logrotate") or (os.path.exists("/usr/sbin/logrotate") and "/usr/sbin/logrotate")
MODES = {
    "create": "create",
    "copytruncate": "copytruncate",
    "create compress dateext": "create\n    compress\n    dateext\n    dateformat -%Y%m%d-%s",
}


class Appender(threading.Thread):
    """A writer like a logging library: one descriptor, reopened when it notices its file was rotated
    (every reopen_s, so lines land in the old file for a while after each rotation). append=False
    writes at its own offset, as a writer without O_APPEND does: after copytruncate that leaves a hole
    of NUL bytes in front of its next line."""

    def __init__(self, path: Path, lines: int, per_s: float, append: bool = True, reopen_s: float = 0.05):
        super().__init__(daemon=True)
        self.path, self.lines, self.per_s, self.append, self.reopen_s = path, lines, per_s, append, reopen_s

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if self.append else 0), 0o644)

    def run(self) -> None:
        fd, checked = self._open(), time.monotonic()
        for n in range(self.lines):
            os.write(fd, line(n))
            if time.monotonic() - checked > self.reopen_s:
                checked = time.monotonic()
                try:
                    moved = os.stat(self.path).st_ino != os.fstat(fd).st_ino
                except FileNotFoundError:
                    moved = True
                if moved:
                    os.close(fd)
                    fd = self._open()
            time.sleep(1 / self.per_s)
        os.close(fd)


def rotate_while_writing(folder: Path, mode: str, appender: Appender) -> int:
    """Force a rotation every quarter second (every second with dateext, whose names differ by the
    second) until the appender is done; returns how many there were."""
    daily, every_s = appender.path, 1.05 if "dateext" in mode else 0.25
    conf, state = folder.parent / "logrotate.conf", folder.parent / "logrotate.state"
    conf.write_text(f"{daily} {{\n    rotate 1000\n    missingok\n    {MODES[mode]}\n}}\n")
    conf.chmod(0o644)
    rotations = 0
    appender.start()
    while appender.is_alive():
        time.sleep(every_s)
        done = subprocess.run([LOGROTATE, "-f", "-s", str(state), str(conf)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        rotations += 1
    appender.join()
    return rotations


@pytest.mark.skipif(not LOGROTATE, reason="logrotate is not installed (apt-get install logrotate; .ci/run does)")
@pytest.mark.parametrize("mode", list(MODES))
def test_real_logrotate_forced_while_a_writer_appends_loses_and_repeats_nothing(watched, mode):
    folder, db, start = watched
    start(limits=Limits(max_line_bytes=4096))
    written = 1600
    appender = Appender(folder / "raw" / f"{DAY}.jsonl", written, per_s=400)
    rotations = rotate_while_writing(folder, mode, appender)
    texts = settle(db, folder)
    kept = on_disk(folder)
    assert rotations >= 3
    assert len(texts) == len(set(texts)), "a line was stored twice"
    assert kept <= set(texts), f"{len(kept - set(texts))} lines some file holds were not stored"
    dropped_by_logrotate = {f"w{i}" for i in range(written)} - kept - set(texts)
    if mode != "copytruncate":
        assert dropped_by_logrotate == set()
    assert set(texts) | dropped_by_logrotate == {f"w{i}" for i in range(written)}
    print(f"\n{mode}: {rotations} rotations, {len(texts)} stored, {len(dropped_by_logrotate)} in no file")


@pytest.mark.skipif(not LOGROTATE, reason="logrotate is not installed (apt-get install logrotate; .ci/run does)")
def test_copytruncate_with_a_writer_without_o_append_leaves_holes_that_swallow_no_line(watched, caplog):
    folder, db, start = watched
    start(limits=Limits(max_line_bytes=4096))  # the holes grow far past this: none may swallow a line
    appender = Appender(folder / "raw" / f"{DAY}.jsonl", 1200, per_s=400, append=False)
    rotate_while_writing(folder, "copytruncate", appender)
    texts = settle(db, folder)
    assert any(p.read_bytes()[:1] == b"\x00" for p in (folder / "raw").iterdir())  # the holes are there
    assert db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0
    assert len(texts) == len(set(texts)) and on_disk(folder) <= set(texts)


def test_the_suite_runs_on_a_fresh_boot_clock():
    """Every test, and every process a test starts, reads the clock of a machine booted seconds ago."""
    if os.environ.get("REAL_MONOTONIC") == "1":
        pytest.skip("REAL_MONOTONIC=1: this run reads the machine's own clock")
    assert time.monotonic() < 3600.0
    child = subprocess.run([sys.executable, "-c", "import time; print(time.monotonic())"], capture_output=True)
    assert float(child.stdout) < 3600.0
