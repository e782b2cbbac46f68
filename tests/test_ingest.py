"""Reading files into the database: every line exactly once, through bad input, rewrites and SIGKILL."""

import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time

import orjson
import pytest

from engram_ff.ingest import reader
from engram_ff.ingest.reader import catch_up, ingest_file
from engram_ff.state.db import open_db

LIMIT = 4096  # max_line_bytes in these tests, so an over-size line is cheap to make


def line(text: str, session: str = "s1") -> bytes:
    return (
        orjson.dumps(
            {
                "timestamp": "2026-11-27T10:00:00Z",
                "session_key": session,
                "direction": "in",
                "sender": "alice",
                "content": text,
            }
        )
        + b"\n"
    )


def append(path, *chunks: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        for chunk in chunks:
            f.write(chunk)


def texts(db) -> list[str]:
    return [row[0] for row in db.execute("SELECT text FROM messages ORDER BY id")]


def quarantined(db) -> list[tuple]:
    return list(db.execute("SELECT line_offset, reason FROM quarantine ORDER BY id"))


def ingest(db, path):
    return ingest_file(db, path, reader.Limits(0.1, LIMIT))


def test_each_line_once_across_reads_and_appends(db, daily):
    append(daily, line("a"), line("b"), line("c"))
    first = ingest(db, daily)
    assert (first.lines, first.messages, first.offset) == (3, 3, daily.stat().st_size)
    seen = db.execute("SELECT last_seen FROM files").fetchone()
    again = ingest(db, daily)
    assert (again.lines, again.messages) == (0, 0)
    assert db.execute("SELECT last_seen FROM files").fetchone() == seen  # an unchanged file costs no write
    append(daily, line("d"))
    assert ingest(db, daily).messages == 1
    assert texts(db) == ["a", "b", "c", "d"]


def test_a_half_written_line_waits_for_its_newline(db, daily):
    whole = line("complete later")
    append(daily, line("first"), whole[:20])
    result = ingest(db, daily)
    assert (result.messages, result.pending) == (1, 20)
    assert result.offset == len(line("first"))
    append(daily, whole[20:])
    assert ingest(db, daily).messages == 1
    assert texts(db) == ["first", "complete later"]
    assert db.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0


def test_crlf_line_endings(db, daily):
    append(daily, line("windows").replace(b"\n", b"\r\n"))
    ingest(db, daily)
    assert texts(db) == ["windows"]


@pytest.mark.parametrize(
    "bad,reason",
    [
        (b"{this is not json\n", "malformed JSON"),
        (b"[1, 2, 3]\n", "not a JSON object: list"),
        (b'{"content": "caf\xe9 au lait"}\n', "invalid UTF-8"),
        (bytes(b for b in range(1, 256) if b != 10) + b"\n", "invalid UTF-8"),  # binary junk
        (b"\x01\x00" * 16 + b"\n", "binary data"),
        (b'{"content": 42}\n', "content: expected a string"),
        (b'{"type": "message", "message": {"content": "no role"}}\n', "message.role"),
        (b'{"unrelated": true}\n', "unknown shape"),
    ],
)
def test_a_bad_line_is_logged_quarantined_and_ingest_goes_on(db, daily, caplog, bad, reason):
    append(daily, line("before"), bad, line("after"))
    with caplog.at_level(logging.WARNING, logger="engram_ff.ingest.reader"):
        result = ingest(db, daily)
    offset = len(line("before"))
    assert texts(db) == ["before", "after"]
    assert result.quarantined == 1
    ((q_offset, q_reason),) = quarantined(db)
    assert q_offset == offset and reason in q_reason
    assert f"{daily} @ byte {offset}: quarantined: " in caplog.text and reason in caplog.text


def test_empty_lines_are_skipped_not_quarantined(db, daily, caplog):
    append(daily, b"\n", line("a"), b"   \n\n", line("b"))
    with caplog.at_level(logging.DEBUG, logger="engram_ff.ingest.reader"):
        result = ingest(db, daily)
    assert (result.skipped, result.messages, result.quarantined) == (3, 2, 0)
    assert f"{daily} @ byte 0: skipped: empty line" in caplog.text


def test_an_over_size_line_is_quarantined(db, daily, caplog):
    huge = b'{"content": "' + b"x" * (3 * LIMIT) + b'"}\n'
    append(daily, line("a"), huge, line("b"))
    with caplog.at_level(logging.WARNING, logger="engram_ff.ingest.reader"):
        ingest(db, daily)
    assert texts(db) == ["a", "b"]
    ((offset, reason),) = quarantined(db)
    assert offset == len(line("a")) and reason == f"line over {LIMIT} bytes"
    assert f"{daily} @ byte {offset}: quarantined: line over" in caplog.text
    excerpt, length = db.execute("SELECT excerpt, length FROM quarantine").fetchone()
    assert excerpt.startswith('{"content": "xxx') and len(excerpt) <= reader.EXCERPT_BYTES
    assert length > LIMIT


def test_an_over_size_line_still_being_written_is_skipped_across_reads(db, daily, monkeypatch):
    monkeypatch.setattr(reader, "CHUNK_BYTES", 1024)  # many chunks: the line is never held whole
    append(daily, line("a"), b'{"content": "' + b"y" * (2 * LIMIT))
    first = ingest(db, daily)
    assert first.messages == 1 and first.offset == daily.stat().st_size  # quarantined, its bytes consumed
    assert db.execute("SELECT skipping FROM files").fetchone()[0] == 1
    append(daily, b"y" * (5 * LIMIT))
    ingest(db, daily)
    append(daily, b'yyy"}\n', line("b"))
    ingest(db, daily)
    assert texts(db) == ["a", "b"]
    assert len(quarantined(db)) == 1
    assert db.execute("SELECT skipping, committed_offset FROM files").fetchone() == (0, daily.stat().st_size)


def test_warnings_per_file_are_capped(db, daily, caplog):
    append(daily, *[b"garbage\n"] * (reader.WARNINGS_PER_FILE + 10))
    with caplog.at_level(logging.WARNING, logger="engram_ff.ingest.reader"):
        result = ingest(db, daily)
    assert result.quarantined == 1  # identical lines: stored once
    assert caplog.text.count("quarantined: malformed") == reader.WARNINGS_PER_FILE
    assert "10 more lines quarantined" in caplog.text


def test_a_directory_named_jsonl_is_logged_and_passed_over(db, tmp_path, daily, caplog):
    append(daily, line("a"))
    (tmp_path / "engram" / "raw" / "x.jsonl").mkdir()
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest"):
        stats = catch_up(db, tmp_path / "engram")
    assert (stats.files, stats.messages, stats.errors) == (1, 1, 0)
    assert "x.jsonl: skipped: a directory" in caplog.text
    assert ingest(db, tmp_path / "engram" / "raw" / "x.jsonl").error == "a directory, not a JSONL file"


def test_an_unreadable_file_is_logged_and_the_rest_ingested(db, tmp_path, daily, monkeypatch, caplog):
    locked = daily.with_name("2026-11-26.jsonl")
    append(locked, line("secret"))
    append(daily, line("a"))
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: make open() refuse this path as it would for a user
        real_open = os.open

        def refusing_open(path, *args, **kwargs):
            if os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", str(locked))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", refusing_open)
    with caplog.at_level(logging.WARNING, logger="engram_ff.ingest.reader"):
        stats = catch_up(db, tmp_path / "engram")
    assert (stats.messages, stats.errors) == (1, 1)
    assert f"{locked}: cannot read: Permission denied" in caplog.text
    assert db.execute("SELECT error FROM files WHERE path = ?", [str(locked)]).fetchone()[0] == "Permission denied"
    monkeypatch.undo()
    locked.chmod(0o644)
    assert catch_up(db, tmp_path / "engram").messages == 1  # readable again: picked up, error cleared
    assert db.execute("SELECT error FROM files WHERE path = ?", [str(locked)]).fetchone()[0] is None


def test_symlink_loops_are_logged_and_walking_ends(db, tmp_path, daily, caplog):
    append(daily, line("a"))
    raw = daily.parent
    os.symlink(raw / "b.jsonl", raw / "a.jsonl")
    os.symlink(raw / "a.jsonl", raw / "b.jsonl")
    os.symlink(tmp_path / "engram", raw / "back-to-top")  # a folder loop
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest"):
        stats = catch_up(db, tmp_path / "engram")
    assert stats.messages == 1 and texts(db) == ["a"]
    assert f"{raw / 'a.jsonl'}: cannot read: a symlink loop" in caplog.text
    assert "back-to-top: skipped: a symlink loop" in caplog.text


def test_a_truncated_file_is_read_again_without_duplicates(db, daily, caplog):
    append(daily, line("a"), line("b"), line("c"))
    ingest(db, daily)
    with open(daily, "wb") as f:
        f.write(line("a") + line("new"))  # shorter than the committed offset
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest.reader"):
        result = ingest(db, daily)
    assert result.reread and (result.messages, result.duplicates) == (1, 1)
    assert "reading again from the start" in caplog.text
    assert texts(db) == ["a", "b", "c", "new"]
    assert db.execute("SELECT generation FROM files").fetchone()[0] == 1


def test_a_replaced_file_is_read_again_without_duplicates(db, daily):
    append(daily, line("a"), line("b"))
    ingest(db, daily)
    replacement = daily.with_suffix(".tmp")
    append(replacement, line("a"), line("b"), line("c"))
    os.replace(replacement, daily)  # new inode, same path
    result = ingest(db, daily)
    assert result.reread and (result.messages, result.duplicates) == (1, 2)
    assert texts(db) == ["a", "b", "c"]


def test_a_file_rewritten_in_place_is_detected_by_its_first_bytes(db, daily):
    append(daily, line("a"))
    ingest(db, daily)
    with open(daily, "r+b") as f:  # same inode, larger: only the head fingerprint tells
        f.write(line("rewritten") + line("z"))
    result = ingest(db, daily)
    assert result.reread and texts(db) == ["a", "rewritten", "z"]


def test_a_rewrite_with_the_same_head_is_caught_at_the_offset(db, daily, monkeypatch):
    monkeypatch.setattr(reader, "HEAD_BYTES", 8)  # the rewrite keeps the fingerprinted first bytes
    append(daily, line("a"), line("b"))
    ingest(db, daily)
    with open(daily, "wb") as f:
        f.write(line("a") + line("bb") + line("c"))  # same head, longer second line: the offset is mid-line
    result = ingest(db, daily)
    assert result.reread and texts(db) == ["a", "b", "bb", "c"]
    assert quarantined(db) == []


def test_a_renamed_file_keeps_its_offset(db, daily, caplog):
    append(daily, line("a"), line("b"))
    ingest(db, daily)
    rotated = daily.with_name("2026-11-27.old.jsonl")
    os.rename(daily, rotated)
    append(rotated, line("c"))
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest.reader"):
        result = ingest(db, rotated)
    assert not result.reread and (result.lines, result.messages) == (1, 1)
    assert "renamed from" in caplog.text
    assert [r[0] for r in db.execute("SELECT path FROM files")] == [str(rotated)]


def test_a_line_is_stored_once_a_day(db, tmp_path):
    undated = orjson.dumps({"role": "user", "content": "ok"}) + b"\n"  # its day comes from the file name
    for day in ("2026-11-01", "2026-11-02"):
        append(tmp_path / "raw" / f"{day}.jsonl", line("timed"), undated)
    append(tmp_path / "copy" / "2026-11-01.jsonl", line("timed"), undated)  # a copy adds nothing
    stats = catch_up(db, tmp_path)
    assert (stats.messages, stats.duplicates) == (3, 3)
    assert list(db.execute("SELECT day, text FROM messages ORDER BY id")) == [
        ("2026-11-27", "timed"),
        ("2026-11-01", "ok"),
        ("2026-11-02", "ok"),
    ]
    plan = " ".join(
        row[3]
        for row in db.execute("EXPLAIN QUERY PLAN SELECT id FROM messages WHERE day = '2026-11-01' AND split = 'train'")
    )
    assert "messages_day_hash" in plan  # the uniqueness index also finds a day's messages


def test_a_line_stored_by_the_old_split_rule_is_not_stored_again(tmp_path):
    """Migration 0700: a database whose lines took the split of their text (the rule before it) reads a
    rotated copy of those lines, which the new rule draws into the other split: nothing is stored twice."""
    from engram_ff.state.schema import migrations

    said = [line(f"message {n}", session=f"s{n}") for n in range(60)]
    append(tmp_path / "raw" / "2026-11-27.jsonl", *said)
    old = open_db(tmp_path / "state.db", migrate=False)
    old.conn.execute("BEGIN IMMEDIATE")
    migrations.apply(old, stop_before="0700_split_per_line")
    old.conn.commit()
    catch_up(old, tmp_path / "raw")
    splits = [reader.split_of(chunk[:-1], 0.1) for chunk in said]
    flipped = ["train" if split == "probe" else "probe" for split in splits]  # the other rule's draw, say
    rows = zip(flipped, [f"message {n}" for n in range(60)])
    old.conn.executemany("UPDATE messages SET split = ? WHERE text = ?", rows)
    old.conn.commit()
    old.close()

    db = open_db(tmp_path / "state.db")
    append(tmp_path / "raw" / "2026-11-27.jsonl.1", *said)  # copytruncate's copy, read again
    stats = catch_up(db, tmp_path / "raw")
    assert (stats.messages, stats.duplicates) == (0, 60)
    assert [row[0] for row in db.execute("SELECT split FROM messages ORDER BY id")] == flipped  # kept, not rewritten


def test_a_deleted_file_keeps_its_messages(db, tmp_path, daily):
    append(daily, line("a"), line("b"))
    catch_up(db, tmp_path / "engram")
    daily.unlink()
    assert catch_up(db, tmp_path / "engram").files == 0
    assert texts(db) == ["a", "b"]


def test_a_refused_commit_stores_nothing_and_keeps_the_offset(db, daily):
    """Lines and offset are one transaction: if the database refuses, neither moves."""
    append(daily, line("a"), line("poison"), line("c"))
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.text = 'poison' "
        "BEGIN SELECT RAISE(ABORT, 'simulated refusal'); END"
    )
    with pytest.raises(sqlite3.DatabaseError, match="simulated refusal"):
        ingest(db, daily)
    assert texts(db) == []
    assert db.execute("SELECT coalesce(max(committed_offset), 0) FROM files").fetchone()[0] == 0
    db.execute("DROP TRIGGER refuse")
    assert ingest(db, daily).messages == 3
    assert texts(db) == ["a", "poison", "c"]


def test_a_refusal_mid_pass_rolls_back_the_shared_commit_and_the_next_pass_stores_all(db, tmp_path):
    """Many small files share a commit (reader.CommitGroup): a refusal at one rolls back the reads since
    the last commit, offsets with them, and nothing is lost or stored twice."""
    for day in range(1, 31):
        append(tmp_path / "engram" / "raw" / f"2026-11-{day:02d}.jsonl", line(f"file {day}"))
    db.execute(
        "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.text = 'file 17' "
        "BEGIN SELECT RAISE(ABORT, 'simulated refusal'); END"
    )
    with pytest.raises(sqlite3.DatabaseError, match="simulated refusal"):
        catch_up(db, tmp_path / "engram")
    stored = set(texts(db))
    read = {f"file {int(path[-8:-6])}" for (path,) in db.execute("SELECT path FROM files WHERE committed_offset > 0")}
    assert stored == read and "file 17" not in stored  # every offset with its line, and no more
    db.execute("DROP TRIGGER refuse")
    catch_up(db, tmp_path / "engram")
    assert sorted(texts(db)) == sorted(f"file {day}" for day in range(1, 31))


CHILD = """
import sys
from engram_ff.ingest import reader
from engram_ff.state.db import open_db
reader.BATCH_LINES = 200  # many commits, so a kill lands between and inside them
reader.PARALLEL_MIN_BYTES = int(sys.argv[3])
reader.catch_up(open_db(sys.argv[1]), sys.argv[2])
"""


def test_the_parsing_process_stores_what_in_process_reading_stores(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "engram"
    append(
        folder / "raw" / "2026-11-27.jsonl",
        *(line(f"m{i}") for i in range(500)),
        b"junk\n",
        b"\n",
        line("last"),
        line("half")[:9],
    )
    in_process = open_db(tmp_path / "a.db")
    catch_up(in_process, folder)
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(reader, "BATCH_LINES", 100)
    worker = open_db(tmp_path / "b.db")
    with caplog.at_level(logging.DEBUG, logger="engram_ff.ingest.reader"):
        stats = catch_up(worker, folder)
    assert (stats.messages, stats.quarantined, stats.skipped) == (501, 1, 1)
    query = "SELECT line_offset, day, ts, session, role, sender, text, hash, split FROM messages ORDER BY id"
    assert list(worker.execute(query)) == list(in_process.execute(query))
    assert quarantined(worker) == quarantined(in_process)
    assert list(worker.execute("SELECT committed_offset, head_hash FROM files")) == list(
        in_process.execute("SELECT committed_offset, head_hash FROM files")
    )
    assert "quarantined: malformed JSON" in caplog.text and "skipped: empty line" in caplog.text


DYING_WORKER = """
import os, pickle, sys
from engram_ff.ingest.reader import read_batches, write_frame
path, identity, *args = pickle.load(sys.stdin.buffer)
fd = os.open(path, os.O_RDONLY)
b = next(read_batches(fd, *args))
write_frame(sys.stdout.buffer, "batch", (b.messages, b.events, b.quarantine, b.skipped, b.lines, b.end, b.skipping))
sys.stdout.buffer.flush()
os._exit(3)  # one good batch, then dead as if OOM-killed
"""


def test_a_dying_parsing_process_is_replaced_by_reading_here(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "engram"
    append(folder / "raw" / "2026-11-27.jsonl", *(line(f"m{i}") for i in range(300)))
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(reader, "BATCH_LINES", 100)
    monkeypatch.setattr(reader, "WORKER_COMMAND", [sys.executable, "-c", DYING_WORKER])
    db = open_db(tmp_path / "state.db")
    with caplog.at_level(logging.WARNING, logger="engram_ff.ingest.reader"):
        stats = catch_up(db, folder)
    assert "the parsing process died (exit code 3); reading on in this process from byte" in caplog.text
    assert (stats.messages, stats.duplicates, stats.errors) == (300, 0, 0)
    assert texts(db) == [f"m{i}" for i in range(300)]


COUNTED_WORKER = """
import sys
with open(sys.argv[1], "a") as log:
    log.write("started\\n")
from engram_ff.ingest.worker import main
sys.exit(main())
"""


def test_one_parsing_process_serves_a_whole_pass_and_a_stop_mid_file_replaces_it(tmp_path, monkeypatch):
    folder, starts = tmp_path / "engram", tmp_path / "starts"
    for day in range(3):
        append(folder / "raw" / f"2026-11-2{day}.jsonl", *(line(f"day {day} m{i}") for i in range(250)))
    monkeypatch.setattr(reader, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(reader, "BATCH_LINES", 100)
    monkeypatch.setattr(reader, "PIECE_LINES", 30)
    monkeypatch.setattr(reader, "WORKER_COMMAND", [sys.executable, "-c", COUNTED_WORKER, str(starts)])
    db = open_db(tmp_path / "state.db")
    assert catch_up(db, folder).messages == 750
    assert starts.read_text().splitlines() == ["started"]
    for day in range(3):
        append(folder / "raw" / f"2026-11-2{day}.jsonl", *(line(f"day {day} more {i}") for i in range(250)))
    commits = []
    stop_once = lambda: not commits and not commits.append(1)  # noqa: E731 - stop after the first commit
    with reader.ParsingProcess() as parser:
        first = reader.ingest_file(db, folder / "raw" / "2026-11-20.jsonl", should_stop=stop_once, parser=parser)
        rest = [reader.ingest_file(db, folder / "raw" / f"2026-11-2{day}.jsonl", parser=parser) for day in range(3)]
    assert 100 <= first.messages < 250 and first.messages + sum(r.messages for r in rest) == 750
    assert len(starts.read_text().splitlines()) == 3  # the abandoned one was killed, a new one took over
    assert sorted(texts(db)) == sorted(
        [f"day {d} m{i}" for d in range(3) for i in range(250)]
        + [f"day {d} more {i}" for d in range(3) for i in range(250)]
    )


@pytest.mark.parametrize("parallel_min_bytes", [1 << 40, 0], ids=["in-process", "parsing-process"])
def test_sigkill_mid_ingest_loses_and_repeats_nothing(tmp_path, parallel_min_bytes):
    n = 20_000
    folder = tmp_path / "engram"
    for day in range(4):
        append(
            folder / "raw" / f"2026-11-2{day}.jsonl",
            *(line(f"day {day} message {i}", f"s{i % 3}") for i in range(n // 4)),
        )
    db_path = tmp_path / "state.db"
    open_db(db_path).close()
    watcher_db = sqlite3.connect(db_path)
    kills = 0
    progress = 0
    for delay in (0.0, 0.01, 0.03):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(db_path), str(folder), str(parallel_min_bytes)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and child.poll() is None:
            done = watcher_db.execute("SELECT coalesce(sum(committed_offset), 0) FROM files").fetchone()[0]
            if done > progress:
                time.sleep(delay)
                break
            time.sleep(0.002)
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait()
        progress = watcher_db.execute("SELECT coalesce(sum(committed_offset), 0) FROM files").fetchone()[0]
    assert kills >= 1, "the child finished before any kill: make the input larger"
    subprocess.run([sys.executable, "-c", CHILD, str(db_path), str(folder), str(parallel_min_bytes)], check=True)
    db = open_db(db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    stored = texts(db)
    assert len(stored) == n and len(set(stored)) == n
    expected = {f"day {d} message {i}" for d in range(4) for i in range(n // 4)}
    assert set(stored) == expected
    sizes = sum(p.stat().st_size for p in (folder / "raw").iterdir())
    assert db.execute("SELECT sum(committed_offset) FROM files").fetchone()[0] == sizes


def test_ingest_and_status_commands(tmp_path):
    folder, data = tmp_path / "engram", tmp_path / "data"
    append(
        folder / "raw" / "2026-11-27.jsonl",
        line("a"),
        line("b"),
        b"junk\n",
        b'{"timestamp": "2026-11-27T10:00:00Z", "type": "gateway", "action": "startup"}\n',
    )
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}

    def run(*argv):
        command = [sys.executable, "-m", "engram_ff.daemon.cli", *argv, "--watch", str(folder), "--data", str(data)]
        return subprocess.run(command, capture_output=True, text=True, env=env)

    ingested = run("ingest")
    assert ingested.returncode == 0, ingested.stderr
    assert "4 lines read: 2 new messages, 1 events, 0 skipped, 0 already stored, 1 quarantined" in ingested.stdout
    assert f"raw/2026-11-27.jsonl @ byte {2 * len(line('a'))}: quarantined: malformed JSON" in ingested.stderr
    assert "1 files, 0 lines read: 0 new messages" in run("ingest").stdout  # offsets kept: nothing re-read
    status = run("status")
    assert status.returncode == 0, status.stderr
    for expected in (
        "2026-11-27.jsonl",
        "2026-11-27  train",
        "gateway  startup  1",
        "quarantine 1 line",
        "malformed JSON",
    ):
        assert " ".join(expected.split()) in " ".join(status.stdout.split())  # columns widen with their keys


def test_odd_file_names(db, tmp_path):
    raw = tmp_path / "engram" / "raw"
    names = [b"2026-11-27 with spaces.jsonl", b"new\nline.jsonl", b"latin1-\xe9t\xe9.jsonl", "ünï-cödé.jsonl".encode()]
    raw.mkdir(parents=True)
    for i, name in enumerate(names):
        with open(os.path.join(os.fsencode(raw), name), "wb") as f:
            f.write(line(f"from file {i}"))
    stats = catch_up(db, tmp_path / "engram")
    assert (stats.files, stats.messages, stats.errors) == (4, 4, 0)
    paths = {row[0] for row in db.execute("SELECT path FROM files")}
    assert str(raw / "latin1-\\xe9t\\xe9.jsonl") in paths and str(raw / "new\nline.jsonl") in paths
    assert catch_up(db, tmp_path / "engram").lines == 0  # the same rows are found again
