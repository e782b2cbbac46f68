"""What a hostile or broken writer puts in the folder, beyond the kinds tests/test_ingest.py covers.

Every kind is handled with a log line naming the file (and offset, for a line), quarantined where it
is a line, and never costs a line stored before or after it. Also the security side of bad input: SQL
in names and texts is stored as data, and a checkpoint that would run code when unpickled is refused.
"""

import gzip
import hashlib
import json
import logging
import os
import socket
import subprocess
import sys

import orjson
import pytest
import torch

from engram_ff.ingest import reader
from engram_ff.ingest.reader import catch_up, ingest_file
from engram_ff.model.checkpoint import CheckpointError, digest_path, load_checkpoint
from engram_ff.state.db import open_db
from tests.test_ingest import LIMIT, append, ingest, line, quarantined, texts

# --- lines: quarantined with a reason, the lines around them stored ---------------------------------
DEEP = b'{"content": "deep", "x": ' + b"[" * 1500 + b"]" * 1500 + b"}"  # orjson stops at depth 1024


@pytest.mark.parametrize(
    "bad,reason",
    [
        (DEEP, "depth limit exceeded"),  # deeply nested JSON: refused by the parser, no RecursionError
        (b'{"content": "big", "timestamp": 1e400}', "infinity"),  # a number beyond a double
        (b'{"content": NaN}', "malformed JSON"),  # JavaScript's NaN/Infinity are not JSON
        (b'{"content": "a\x01b"}', "control character"),  # a raw control byte inside a string
        (b'{"content": "half an emoji \\ud83d"}', "surrogate"),  # a UTF-16 string cut between surrogates
        (b'{"content": "a"}{"content": "b"}', "unexpected content after document"),  # two objects, one line
        (b'"just a string"', "not a JSON object: str"),  # a JSON scalar
        (b"null", "not a JSON object: NoneType"),
        (b"{'content': 'python repr'}", "malformed JSON"),  # a dict printed by Python
        (b'{"content": "a",}', "trailing comma"),
        ('{"content": "hi"}'.encode("utf-16"), "invalid UTF-8 at byte 0"),  # a UTF-16 file's line
    ],
)
def test_a_bad_line_is_quarantined_with_its_reason_and_the_rest_stored(db, daily, caplog, bad, reason):
    append(daily, line("before"), bad + b"\n", line("after"))
    with caplog.at_level(logging.WARNING, logger="engram_ff.ingest.reader"):
        result = ingest(db, daily)
    assert texts(db) == ["before", "after"]
    ((offset, stored_reason),) = quarantined(db)
    assert offset == len(line("before")) and reason in stored_reason
    assert f"{daily} @ byte {offset}: quarantined: " in caplog.text and reason in caplog.text
    assert result.offset == daily.stat().st_size


@pytest.mark.parametrize(
    "odd,expected",
    [
        (b'{"content": "first", "content": "second"}', "second"),  # duplicate keys: the last wins, as in JS
        (b'{"content": "huge", "n": 123456789012345678901234567890}', "huge"),  # big int in a field we ignore
        (b'{"content": "far", "timestamp": 1e300}', "far"),  # an impossible epoch: the file's day
        (b'{"content": "year", "timestamp": "9999-12-31T23:59:59-14:00"}', "year"),  # overflows once in UTC
        (b'{"content": "month", "timestamp": "2026-13-45T00:00:00Z"}', "month"),
        (b'{"content": "nul\\u0000inside"}', "nul\x00inside"),  # an escaped NUL is text: kept verbatim
        ('{"content": "sep\u2028ar\u2029ators \U0001f600"}'.encode(), "sep\u2028ar\u2029ators \U0001f600"),
        (b'{"content": "obj sender", "sender": {"id": 1}, "session_key": ["x"]}', "obj sender"),
        (b'{"content": "list direction", "direction": ["in"], "session_key": "s"}', "list direction"),  # unhashable
        (b'\xef\xbb\xbf{"content": "after a byte order mark"}', "after a byte order mark"),
    ],
)
def test_odd_but_usable_lines_are_stored(db, daily, odd, expected):
    append(daily, odd + b"\n", line("after"))
    ingest(db, daily)
    assert texts(db) == [expected, "after"]
    assert quarantined(db) == []
    assert db.execute("SELECT DISTINCT day FROM messages").fetchall() == [("2026-11-27",)]


def test_nul_bytes_left_by_a_power_loss_do_not_swallow_the_next_line(db, daily):
    """ext4 and others can leave a file's unflushed tail as NUL bytes after a crash; the writer then
    appends its next line right after them, so that line starts with the NULs."""
    append(daily, line("before the crash"), b"\x00" * 3000, line("after the reboot"))
    ingest(db, daily)
    assert texts(db) == ["before the crash", "after the reboot"]


@pytest.mark.parametrize("where", ["mid-file", "file start"])
def test_a_hole_of_nul_bytes_longer_than_max_line_bytes_swallows_no_line(db, daily, monkeypatch, where):
    """copytruncate under a writer without O_APPEND: the writer's next line lands at its old offset, after
    a hole of NUL bytes as long as the file was (here 3x max_line_bytes, read in small chunks)."""
    monkeypatch.setattr(reader, "CHUNK_BYTES", 1000)
    hole = b"\x00" * (3 * LIMIT + 7)
    append(daily, *([line("before")] if where == "mid-file" else []), hole, line("after"), hole + b"\n")
    result = ingest(db, daily)
    assert texts(db) == (["before"] if where == "mid-file" else []) + ["after"]
    assert quarantined(db) == [] and result.offset == daily.stat().st_size
    first = db.execute("SELECT line_offset FROM messages WHERE text = 'after'").fetchone()[0]
    assert daily.read_bytes()[first : first + 1] == b"{"  # the message starts where the line does
    append(daily, line("next"))
    assert not ingest(db, daily).reread  # an offset after a hole still counts as a line end


def test_cr_only_line_ends_are_line_ends(db, daily):
    """Issue #20.9: a file with old Mac line ends stored 0 rows and quarantined 0 lines. A CR before the
    next line's `{`, or at the end of the file, ends a line; a CR elsewhere is JSON's whitespace, and
    CRLF is one line end. Appending goes on from there, each line stored once."""
    data = b"".join(line(t).replace(b"\n", b"\r") for t in ("a", "b", "c"))
    append(daily, data)
    result = ingest(db, daily)
    assert texts(db) == ["a", "b", "c"] and result.offset == len(data) and quarantined(db) == []
    append(daily, line("d").replace(b"\n", b"\r"), line("e").replace(b"\n", b"\r\n"))
    assert not ingest(db, daily).reread  # an offset after a CR is a line end
    spaced = line("f").replace(b'{"', b'{\r"', 1)  # CR as JSON whitespace inside a line
    append(daily, spaced)
    ingest(db, daily)
    assert texts(db) == ["a", "b", "c", "d", "e", "f"] and quarantined(db) == []


def test_an_edit_of_a_line_already_read_is_not_read_again_but_a_rewritten_file_is(db, daily, monkeypatch):
    """Decided: a log is appended to, not edited; the database keeps what it read. A same-length edit
    past the fingerprinted first bytes goes unseen; `sed -i` writes a new file, which is read again
    from the start: the edited line is a new message beside the one it replaced."""
    monkeypatch.setattr(reader, "HEAD_BYTES", 16)
    append(daily, line("first"), line("typo"), line("third"))
    ingest(db, daily)
    data = daily.read_bytes()
    with open(daily, "r+b") as f:
        f.seek(data.index(b"typo"))
        f.write(b"type")  # same length, same inode, past the head
    assert ingest(db, daily).lines == 0 and texts(db) == ["first", "typo", "third"]
    edited = daily.with_suffix(".sed")
    edited.write_bytes(data.replace(b"typo", b"fixed"))
    os.replace(edited, daily)  # what sed -i does
    result = ingest(db, daily)
    assert result.reread and (result.messages, result.duplicates) == (1, 2)
    assert texts(db) == ["first", "typo", "third", "fixed"]


def test_the_same_bad_line_is_listed_once_in_each_file_that_holds_it(db, tmp_path, daily):
    """Decided: the quarantine answers "what is wrong with this file"; a re-read of the file adds nothing."""
    other = daily.with_name("2026-11-28.jsonl")
    for path in (daily, other):
        append(path, b"{broken\n", line(f"ok {path.name}"))
    catch_up(db, tmp_path / "engram")
    daily.write_bytes(b"{broken\n")  # shorter: read again from the start
    catch_up(db, tmp_path / "engram")
    rows = list(db.execute("SELECT f.path, q.line_offset FROM quarantine q JOIN files f ON f.id = q.file_id"))
    assert sorted(rows) == sorted([(str(daily), 0), (str(other), 0)])


def test_a_jsonl_gz_file_is_read(db, tmp_path, daily):
    daily.parent.mkdir(parents=True, exist_ok=True)
    daily.with_name("2026-11-20.jsonl.gz").write_bytes(gzip.compress(line("zipped") + b"junk\n", mtime=0))
    stats = catch_up(db, tmp_path / "engram")
    assert texts(db) == ["zipped"] and (stats.quarantined, stats.errors) == (1, 0)
    ((offset, reason),) = quarantined(db)
    assert offset == len(line("zipped")) and reason.startswith("malformed JSON")


def test_a_gz_past_the_ratio_limit_is_read_up_to_it_and_the_rest_is_quarantined(db, tmp_path, daily, monkeypatch):
    """Issue #20.10: 8 MB that expanded to 2.1 GB of repeated lines took 14 minutes of CPU. Here the
    floor is lowered so that a small file shows it: what fits is stored, the rest is one quarantined row
    that says why, and reading it again adds nothing."""
    monkeypatch.setattr(reader, "GZ_FLOOR_BYTES", 64 << 10)
    daily.parent.mkdir(parents=True, exist_ok=True)
    text = b"".join(line(f"same {i % 10}") for i in range(20_000))  # about 2 MB, a few kB compressed
    bomb = daily.with_name("2026-11-20.jsonl.gz")
    bomb.write_bytes(gzip.compress(text, mtime=0))
    limit = max(reader.GZ_FLOOR_BYTES, reader.GZ_MAX_RATIO * bomb.stat().st_size)
    assert limit < len(text)
    stats = catch_up(db, tmp_path / "engram")
    assert stats.messages == 10 and stats.duplicates > 0 and stats.quarantined == 1
    ((offset, reason),) = quarantined(db)
    assert offset <= limit and "more than 50 times" in reason and "the rest is skipped" in reason
    assert catch_up(db, tmp_path / "engram").quarantined == 0 and len(quarantined(db)) == 1


def test_file_names_reach_the_log_escaped(db, tmp_path, caplog):
    """A newline in a name would forge a log line, an ESC would drive the terminal that shows the log."""
    raw = tmp_path / "engram" / "raw"
    raw.mkdir(parents=True)
    name = b"2026-11-27 \nengram-ff: FORGED\x1b[2J\xff\\.jsonl"
    with open(os.path.join(os.fsencode(raw), name), "wb") as f:
        f.write(b"junk\n" + line("kept"))
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest"):
        stats = catch_up(db, tmp_path / "engram")
    assert stats.messages == 1
    assert f"{raw}/2026-11-27 \\nengram-ff: FORGED\\x1b[2J\\xff\\\\.jsonl @ byte 0: quarantined" in caplog.text
    assert "\x1b" not in caplog.text and "\nengram-ff: FORGED" not in caplog.text


def test_a_file_gone_before_it_could_be_read_is_no_error(db, tmp_path, caplog):
    """A rotation's passing name (logrotate compresses X.1 and deletes it) may be gone by the time an
    event for it is handled: nothing to log above DEBUG, no row with an error."""
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest"):
        result = ingest_file(db, tmp_path / "engram" / "raw" / "2026-11-27.jsonl.1")
    assert result.error is None and caplog.text == ""
    assert db.execute("SELECT count(*) FROM files").fetchone()[0] == 0


def test_a_compressed_file_is_quarantined_line_by_line_and_nothing_else_lost(db, tmp_path, daily, caplog):
    zipped = daily.with_name("2026-11-26.jsonl")
    zipped.parent.mkdir(parents=True, exist_ok=True)
    zipped.write_bytes(gzip.compress(b"".join(line(f"zipped {i}") for i in range(200)), mtime=0))
    append(daily, line("plain"))
    with caplog.at_level(logging.WARNING, logger="engram_ff.ingest.reader"):
        stats = catch_up(db, tmp_path / "engram")
    assert texts(db) == ["plain"]
    assert stats.quarantined >= 1 and stats.errors == 0
    assert f"{zipped} @ byte 0: quarantined: invalid UTF-8" in caplog.text


# --- files: what the folder can hold besides regular JSONL files ------------------------------------
def test_special_files_named_jsonl_are_logged_and_passed_over(db, tmp_path, daily, caplog):
    raw = daily.parent
    append(daily, line("a"))
    os.mkfifo(raw / "fifo.jsonl")  # opening must not block on a FIFO with no writer
    os.symlink("/dev/zero", raw / "zero.jsonl")  # a device: reading it would never end
    os.symlink(raw / "gone.jsonl", raw / "dangling.jsonl")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(raw / "sock.jsonl"))
    try:
        with caplog.at_level(logging.INFO, logger="engram_ff.ingest"):
            stats = catch_up(db, tmp_path / "engram")
    finally:
        server.close()
    assert texts(db) == ["a"] and stats.messages == 1
    assert f"{raw / 'fifo.jsonl'}: skipped: not a regular file" in caplog.text
    assert f"{raw / 'zero.jsonl'}: skipped: a symlink to /dev/zero, outside the watched folder" in caplog.text
    assert f"{raw / 'dangling.jsonl'}: cannot read: No such file or directory" in caplog.text
    assert f"{raw / 'sock.jsonl'}: cannot read: No such device or address" in caplog.text


def test_the_same_file_under_two_names_stores_each_line_once(db, tmp_path, daily):
    append(daily, line("a"), line("b"))
    os.link(daily, daily.with_name("2026-11-27.copy.jsonl"))  # a hard link: same inode, two paths
    stats = catch_up(db, tmp_path / "engram")
    assert texts(db) == ["a", "b"] and stats.duplicates == 2


LINE = len(line("x0"))


def _swap_after_first_commit(monkeypatch, action):
    """Run `action` once, right after the first batch of a read is committed (mid-read)."""
    monkeypatch.setattr(reader, "BATCH_LINES", 2)
    monkeypatch.setattr(reader, "CHUNK_BYTES", 2 * LINE)  # so the rest is read from the file after the swap
    commit = reader._FileReader._commit
    done = []

    def commit_then_act(self):
        commit(self)
        if not done and self.result.lines:
            done.append(action())

    monkeypatch.setattr(reader._FileReader, "_commit", commit_then_act)


def test_a_file_replaced_while_being_read(db, daily, monkeypatch, caplog):
    append(daily, *(line(f"a{i}") for i in range(6)))
    new = daily.with_suffix(".new")

    def replace():
        append(new, *(line(f"a{i}") for i in range(6)), *(line(f"b{i}") for i in range(3)))
        os.replace(new, daily)  # the open descriptor keeps reading the old inode

    _swap_after_first_commit(monkeypatch, replace)
    first = ingest(db, daily)
    assert first.messages == 6  # the whole of the old file
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest.reader"):
        second = ingest(db, daily)
    assert second.reread and (second.messages, second.duplicates) == (3, 6)
    assert f"{daily}: truncated, replaced or rotated" in caplog.text
    assert texts(db) == [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(3)]


def test_a_file_truncated_and_rewritten_while_being_read(db, daily, monkeypatch, caplog):
    """logrotate's copytruncate: the file is cut to nothing and the writer goes on, all mid-read. The
    first bytes recorded must be the ones this read started from, or the new file's first lines,
    which the read skipped by reading on at its old offset, would look already read."""
    append(daily, *(line(f"a{i}") for i in range(6)))

    def truncate_and_write():
        with open(daily, "r+b") as f:
            f.truncate(0)
            f.write(b"".join(line(f"b{i}") for i in range(10)))

    _swap_after_first_commit(monkeypatch, truncate_and_write)
    ingest(db, daily)
    monkeypatch.undo()
    with caplog.at_level(logging.INFO, logger="engram_ff.ingest.reader"):
        again = ingest(db, daily)
    assert again.reread and f"{daily}: truncated, replaced or rotated" in caplog.text
    stored = texts(db)
    assert sorted(stored) == sorted(["a0", "a1"] + [f"b{i}" for i in range(10)])  # a2..a5 were gone unread
    assert len(stored) == len(set(stored))


CHMOD_CHILD = """
import json, os, sys
from engram_ff.ingest import reader
from engram_ff.state.db import open_db

db_path, path, uid = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = open_db(db_path)
os.setgid(uid)
os.setuid(uid)  # from here on the kernel checks permissions for us: root would read anything
reader.BATCH_LINES, reader.CHUNK_BYTES = 2, 2 * int(sys.argv[4])
commit = reader._FileReader._commit
def commit_then_revoke(self):
    commit(self)
    os.chmod(path, 0)  # mid-read: the descriptor already open keeps working
reader._FileReader._commit = commit_then_revoke
first = reader.ingest_file(db, path)
reader._FileReader._commit = commit
second = reader.ingest_file(db, path)  # a new open: refused now
print(json.dumps([first.messages, first.error, second.messages, second.error]))
"""


def test_permission_revoked_mid_read_by_the_kernel(tmp_path, caplog):
    """Run as an unprivileged user (tests run as root, which no chmod stops): revoking read access
    mid-read lets the open descriptor finish; the next open is refused, logged and noted; once access
    is back, the read goes on from the committed offset."""
    nobody = 65534
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chown(folder, nobody, nobody)
    for parent in (tmp_path, *tmp_path.parents):  # let that user reach the folder
        if parent != parent.parent:
            os.chmod(parent, os.stat(parent).st_mode | 0o001)
    path, db_path = folder / "2026-11-27.jsonl", folder / "state.db"
    append(path, *(line(f"m{i}") for i in range(6)))
    os.chown(path, nobody, nobody)
    child = subprocess.run(
        [sys.executable, "-c", CHMOD_CHILD, str(db_path), str(path), str(nobody), str(LINE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == [6, None, 0, "Permission denied"]
    assert f"{path}: cannot read: Permission denied" in child.stderr
    db = open_db(db_path)
    assert db.execute("SELECT error FROM files").fetchone()[0] == "Permission denied"
    os.chmod(path, 0o644)
    append(path, line("m6"))
    assert ingest_file(db, path).messages == 1
    assert texts(db) == [f"m{i}" for i in range(7)]


BIG_LINE_CHILD = """
import sys
from pathlib import Path
from engram_ff.ingest import reader
from engram_ff.state.db import open_db
reader.PARALLEL_MIN_BYTES = 1 << 40  # read here, so this process's peak is the reader's (the parsing
result = reader.ingest_file(open_db(sys.argv[1]), sys.argv[2])  # process runs the same read_batches)
peak = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM")).split()[1]
print(result.messages, result.quarantined, int(peak) // 1024)
"""


def test_a_100_mb_line_without_newline_is_read_in_bounded_memory(tmp_path, daily):
    append(daily, line("before"), b'{"content": "')
    with open(daily, "r+b") as f:
        f.truncate(100 << 20)  # a sparse 100 MB line: NUL bytes, written in no time
    append(daily, b'"}\n', line("after"))
    child = subprocess.run(
        [sys.executable, "-c", BIG_LINE_CHILD, str(tmp_path / "state.db"), str(daily)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr
    messages, quarantined_lines, peak_mib = map(int, child.stdout.split())
    assert (messages, quarantined_lines) == (2, 1)
    assert peak_mib < 100, f"peak RSS {peak_mib} MiB while reading a 100 MB line"
    db = open_db(tmp_path / "state.db")
    assert texts(db) == ["before", "after"]
    assert db.execute("SELECT reason, length FROM quarantine").fetchone()[0] == "line over 1048576 bytes"
    assert f"{daily} @ byte {len(line('before'))}: quarantined: line over" in child.stderr


# --- security ---------------------------------------------------------------------------------------
HOSTILE = ["'); DROP TABLE messages;--", 'Robert"); DELETE FROM files; --', "1 OR 1=1", "%s %d ? :name $1"]


def test_sql_in_file_names_senders_and_texts_is_stored_verbatim(db, tmp_path):
    raw = tmp_path / "engram" / "raw"
    raw.mkdir(parents=True)
    for evil in HOSTILE:
        name = evil.replace("/", "_") + ".jsonl"
        (raw / name).write_bytes(
            orjson.dumps({"session_key": evil, "direction": "in", "sender": evil, "content": evil})
            + b"\n"
            + f"{evil}\n".encode()
        )
    stats = catch_up(db, tmp_path / "engram")
    assert (stats.messages, stats.quarantined) == (len(HOSTILE), len(HOSTILE))
    assert sorted(db.execute("SELECT text, sender, session FROM messages")) == sorted((e, e, e) for e in HOSTILE)
    assert sorted(r[0] for r in db.execute("SELECT path FROM files")) == sorted(
        str(raw / (e + ".jsonl")) for e in HOSTILE
    )
    assert sorted(r[0] for r in db.execute("SELECT excerpt FROM quarantine")) == sorted(HOSTILE)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"files", "messages", "quarantine", "events"} <= tables


class Bomb:
    """Unpickling this runs a shell command: what a checkpoint from a hostile source could hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_runs_code_when_unpickled_is_refused_even_with_a_valid_digest(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "run000001-final-0000010.pt"
    torch.save({"model": {}, "config": {}, "meta": Bomb(marker)}, path)
    digest_path(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    with pytest.raises(CheckpointError, match=f"checkpoint {path} cannot be loaded"):
        load_checkpoint(path)
    assert not marker.exists()


# --- the fact probes file: refused whole with a line naming the fact and key -------------------------
GOOD_FACT = '[[fact]]\nname = "a"\nprompt = "user: q\\n"\nanswer = "the answer"\n'


@pytest.mark.parametrize(
    "text,message",
    [
        ('fact = "x"', "'fact' must be [[fact]] tables, got a string"),
        ("fact = [1, 2]", "fact 1 must be a [[fact]] table, got an integer"),
        ("fact = [[1]]", "fact 1 must be a [[fact]] table, got a list"),
        ("fact = " + "[" * 5000 + "]" * 5000, "nested too deeply"),  # tomllib's RecursionError
        (GOOD_FACT + "distractors = [1]", "fact 1 ('a'): distractor 1 must be a non-empty string, got an integer"),
        (GOOD_FACT + "distractors = [" + "[" * 100 + "]" * 100 + "]", "distractor 1 must be a non-empty string"),
        (GOOD_FACT + 'distractors = "b"', "distractors must be a list of strings, got a string"),
        (GOOD_FACT + 'distractor = ["b"]', "fact 1: unknown key 'distractor'"),
        (GOOD_FACT.replace("facts", "fact").replace("[[fact]]", "[[facts]]"), "unknown key 'facts'"),
        ('[[fact]]\nname = "a"\nprompt = "q"\nanswer = ""', "fact 1 needs a non-empty string 'answer'"),
        ('[[fact]]\nname = "a"\nprompt = "q"\nanswer = {x = 1}', "needs a non-empty string 'answer', got a table"),
        ('[[fact]]\nprompt = "q"\nanswer = "b"', "fact 1 needs a non-empty string 'name', got nothing"),
        (GOOD_FACT + GOOD_FACT, "fact 2 ('a'): the name is used twice"),
        ("fact = [", "Invalid"),  # not TOML at all
    ],
)
def test_a_bad_facts_file_is_refused_naming_the_fact(tmp_path, text, message):
    from engram_ff.daemon.facts import FactsError, load_facts

    path = tmp_path / "facts.toml"
    path.write_text(text + "\n")
    with pytest.raises(FactsError) as caught:
        load_facts(path)
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_daemon_refuses_to_start_with_a_bad_facts_file(tmp_path):
    facts = tmp_path / "facts.toml"
    facts.write_text(GOOD_FACT + "distractors = [1]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_FF_")}
    env["ENGRAM_FF_FACTS_FILE"] = str(facts)
    args = ["run", "--watch", str(tmp_path / "w"), "--data", str(tmp_path / "d")]
    done = subprocess.run(
        [sys.executable, "-m", "engram_ff.daemon.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"engram-ff: bad configuration: facts_file: fact probes file {facts}: fact 1 ('a'): distractor 1 must be "
        "a non-empty string, got an integer"
    ]
