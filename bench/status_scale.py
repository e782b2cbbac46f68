"""`engram-ff bench ingest --status`: the queries behind `engram-ff status` on a database of 10 M messages
from 100,000 files, and what keeping them cheap costs ingest.

1. A database is built synthetically (direct inserts, as ingest's own statements would leave it:
   files with their message counters, day_counts, events, quarantined lines, a year of runs and
   checkpoints), and each query `status` runs is timed in a fresh process: the first call and the
   median of three. The command itself is timed end to end too (interpreter start included).
   For comparison: the day_splits view (which reads every message's text) and the correlated count
   that `status` ran per file before (timed on a few files, times the number of files: an estimate).
2. What storing a line costs (ingest's own insert and commit statements over parsed rows, each run in
   a fresh process, three runs of each interleaved) with each way to keep the counts: counters added
   in each commit (what engram-ff does: files.messages and day_counts), a trigger on every inserted
   row (the same counts), an index on messages(file_id) (per-file counts only: the bytes per day
   would still need a read of every message), and no counts at all, as the floor.
Target: the status queries under 1 s at 10 M messages and 100,000 files.
"""

from __future__ import annotations

import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engram_ff.bench.common import markdown_table, run_isolated

TEXT_WORDS = ["the", "model", "night", "logs", "byte", "state", "train", "probe", "memory", "update", "victor", "boat"]
COUNT_DESIGNS = ("none", "commit counters", "trigger per row", "index on file_id")
BATCH = 20_000  # ingest/reader.py BATCH_LINES


def build_status_db(path: str, messages: int, files: int, seed: int = 0) -> dict:
    """The synthetic database (see the module docstring); returns its shape. Runs in a process of its own."""
    from engram_ff.state.db import open_db

    rng = random.Random(seed)
    db = open_db(path)
    conn = db.conn
    days = [f"2026-{1 + d // 28:02d}-{1 + d % 28:02d}" for d in range(336)]  # a year of days
    per_file = max(1, messages // files)
    day_counts: dict[tuple[str, str], list[int]] = {}
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO files (id, path, device, inode, size, committed_offset, head_len, messages) "
        "VALUES (?, ?, 1, ?, ?, ?, 64, ?)",
        [
            (i + 1, f"/srv/engram/raw/{days[i % len(days)]}-{i:06d}.jsonl", i + 1, 900, 900, per_file)
            for i in range(files)
        ],
    )
    conn.commit()
    sql = (
        "INSERT INTO messages (file_id, line_offset, day, ts, session, role, sender, text, hash, split, shape)"
        " VALUES (?, ?, ?, ?, 's', 'user', 'alice', ?, ?, ?, 'recorder')"
    )
    rows = []
    for n in range(messages):
        file_id = 1 + n // per_file if n // per_file < files else files
        day = days[(file_id - 1) % len(days)]
        text = " ".join(rng.choices(TEXT_WORDS, k=rng.randint(4, 24))) + f" {n}"
        split = "probe" if n % 10 == 0 else "train"
        counts = day_counts.setdefault((day, split), [0, 0])
        counts[0] += 1
        counts[1] += len(text.encode())
        rows.append((file_id, n % per_file * 100, day, f"{day}T10:00:00Z", text, rng.getrandbits(63), split))
        if len(rows) == 100_000:
            _insert(conn, sql, rows)
    _insert(conn, sql, rows)
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO day_counts (day, split, messages, bytes) VALUES (?, ?, ?, ?)",
        [(day, split, n, size) for (day, split), (n, size) in day_counts.items()],
    )
    conn.executemany(
        "INSERT INTO events (file_id, line_offset, day, type, action, hash) VALUES (?, 0, ?, 'command', 'new', ?)",
        [(1 + i % files, days[i % len(days)], rng.getrandbits(63)) for i in range(messages // 100)],
    )
    conn.executemany(
        "INSERT INTO quarantine (file_id, line_offset, length, reason, excerpt, hash) "
        "VALUES (?, 0, 9, 'malformed JSON', '{broken', ?)",
        [(1 + i % files, rng.getrandbits(63)) for i in range(messages // 1000)],
    )
    for night, day in enumerate(days):
        for kind in ("update", "probe"):
            run = conn.execute(
                "INSERT INTO runs (kind, started_at, ended_at, status, steps) VALUES (?, ?, ?, 'ok', 300)",
                (kind, f"{day}T03:00:00+00:00", f"{day}T03:10:00+00:00"),
            ).lastrowid
        assert run is not None, "an INSERT sets lastrowid"
        conn.execute(
            "INSERT INTO checkpoints (run_id, path, sha256, kind, steps, status, created_at) "
            "VALUES (?, ?, 'x', 'final', 300, 'good', ?)",
            (run - 1, f"/srv/engram-ff/checkpoints/run{night:06d}-final.pt", day),
        )
    conn.commit()
    db.close()
    return {"messages": messages, "files": files, "bytes": os.path.getsize(path)}


def _insert(conn, sql: str, rows: list) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(sql, rows)
    conn.commit()
    rows.clear()


def time_status_queries(path: str, sample_files: int = 5) -> list[tuple[str, float, float]]:
    """(query, first call s, median of three s) for each query `status` runs, then the slow references.
    Runs in a fresh process, so nothing of the database is in SQLite's own cache at the first call."""
    from engram_ff.state import queries, runs
    from engram_ff.state.db import open_db

    db = open_db(path)
    calls = {  # what daemon/status.py's gather runs, in its order
        "message_summary (from day_counts)": lambda: queries.message_summary(db),
        "file_totals": lambda: queries.file_totals(db),
        "counts": lambda: queries.counts(db),
        "last update": lambda: runs.last_update(db),
        "current checkpoint": lambda: runs.current_checkpoint(db),
        "day_splits_since: the newest 7 days": lambda: queries.day_splits_since(db, "2026-12-22"),
        "event_counts_since: the newest 7 days": lambda: queries.event_counts_since(db, "2026-12-22"),
        "files: the 5 most recently read": lambda: queries.files(db, 5),
        "unreadable_files: 5": lambda: queries.unreadable_files(db, 5),
        "quarantine: the 5 latest": lambda: queries.quarantine(db, 5),
    }
    timed = []
    for name, call in calls.items():
        seconds = []
        for _ in range(4):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        timed.append((name, seconds[0], statistics.median(seconds[1:])))
    timed.append(("all of the above", sum(t[1] for t in timed), sum(t[2] for t in timed)))
    start = time.perf_counter()
    list(db.query("SELECT * FROM day_splits"))
    timed.append(("reference: the day_splits view (reads every text)", time.perf_counter() - start, float("nan")))
    ids = [row[0] for row in db.execute("SELECT id FROM files ORDER BY id LIMIT ?", [sample_files])]
    start = time.perf_counter()
    for file_id in ids:
        db.execute("SELECT count(*) FROM messages m WHERE m.file_id = ?", [file_id]).fetchone()
    per_file = (time.perf_counter() - start) / len(ids)
    files = db.execute("SELECT count(*) FROM files").fetchone()[0]
    name = f"reference: the old per-file count, {per_file:.3f} s a file x {files:,} files (estimate)"
    timed.append((name, per_file * files, float("nan")))
    return timed


def time_status_command(data_dir: str) -> float:
    """`engram-ff status` end to end, interpreter start and imports included (its output discarded)."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "engram_ff.daemon.cli", "status", "--data", data_dir, "--watch", data_dir],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    return time.perf_counter() - start


def storage_cost(design: str, db_path: str, lines: int, seed: int = 0) -> float:
    """CPU microseconds a line of ingest's storing alone (files.insert_messages + files.commit_read in
    transactions of BATCH rows, as the reader stores them; the rows are made beforehand, so parsing is
    not in it), with one way of keeping the counts `status` reads. Runs in a fresh process."""
    from engram_ff.state import files
    from engram_ff.state.db import open_db

    rng = random.Random(seed)
    rows = [
        (1, n * 100, f"2026-11-{1 + n * 8 // lines:02d}", "2026-11-01T10:00:00Z", "s", "user", "alice",
         " ".join(rng.choices(TEXT_WORDS, k=rng.randint(4, 30))) + f" {n}", rng.getrandbits(63),
         "probe" if n % 10 == 0 else "train", "recorder")
        for n in range(lines)
    ]  # fmt: skip
    db = open_db(db_path)
    conn = db.conn
    files.add(conn, "/srv/engram/raw/2026-11-01.jsonl")
    if design != "commit counters":
        files._COUNT_DAYS = "SELECT ? WHERE 0"  # the same calls, none of the counting
    if design == "trigger per row":
        conn.execute(
            """CREATE TRIGGER count_rows AFTER INSERT ON messages BEGIN
            INSERT INTO day_counts (day, split, messages, bytes)
            VALUES (NEW.day, NEW.split, 1, length(CAST(NEW.text AS BLOB)))
            ON CONFLICT (day, split) DO UPDATE SET messages = messages + 1, bytes = bytes + excluded.bytes;
            UPDATE files SET messages = messages + 1 WHERE id = NEW.file_id; END"""
        )
    if design == "index on file_id":
        conn.execute("CREATE INDEX messages_file ON messages (file_id)")
    conn.commit()
    cpu = time.process_time()
    for start in range(0, lines, BATCH):
        files.begin(conn)
        after = files.last_message_id(conn)
        added = files.insert_messages(conn, rows[start : start + BATCH])
        files.commit_read(
            conn, 1, offset=start, skipping=False, size=start, device=1, inode=1, generation=0, head_len=0,
            head_hash=None, new_messages=added, messages_after=after,
        )  # fmt: skip
    return (time.process_time() - cpu) / lines * 1e6


def run(quick: bool, work_dir: str | None = None) -> str:
    """Both parts; the Markdown report."""
    messages, files = (1_000_000, 10_000) if quick else (10_000_000, 100_000)
    lines = 200_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="engram-ff-status-", dir=work_dir) as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        start = time.perf_counter()
        shape, _ = run_isolated(build_status_db, str(data / "engram-ff.db"), messages, files)
        built = time.perf_counter() - start
        print(f"built {messages:,} messages in {files:,} files ({shape['bytes'] / 1e9:.2f} GB) in {built:.0f} s")
        timed, _ = run_isolated(time_status_queries, str(data / "engram-ff.db"))
        command = time_status_command(str(data))
        for name, first, median in timed:
            print(f"{name}: first {first * 1000:.1f} ms, median {median * 1000:.1f} ms")
        print(f"engram-ff status, end to end: {command:.2f} s")
        costs: dict[str, list[float]] = {design: [] for design in COUNT_DESIGNS}
        for rep in range(3):  # interleaved, so that the machine's load falls on every design alike
            for i, design in enumerate(COUNT_DESIGNS):
                cost, _ = run_isolated(storage_cost, design, str(Path(tmp) / f"cost-{rep}-{i}.db"), lines)
                print(f"storing, {design}: {cost:.2f} us CPU a line", flush=True)
                costs[design].append(cost)
    queries_total = next(first for name, first, _ in timed if name == "all of the above")
    best = {design: min(values) for design, values in costs.items()}
    rows = [
        [name, f"{first * 1000:,.1f}", "" if median != median else f"{median * 1000:,.1f}"]
        for name, first, median in timed
    ]
    cost_rows = [
        [d, " / ".join(f"{v:.2f}" for v in costs[d]), f"{best[d]:.2f}", f"{best[d] - best['none']:+.2f}"]
        for d in COUNT_DESIGNS
    ]
    return (
        f"# `status` at scale\n\n`python -m engram_ff.bench.ingest --status{' --quick' if quick else ''}` on "
        f"{os.cpu_count()} CPUs, 1-minute load average {os.getloadavg()[0]:.1f} at the end (other jobs share the "
        f"CPUs).\n\n## The queries behind `engram-ff status`\n\n{messages:,} messages from {files:,} files "
        f"({shape['bytes'] / 1e9:.2f} GB, built in {built:.0f} s by direct inserts, bench/status_scale.py), "
        f"{messages // 100:,} events, {messages // 1000:,} quarantined lines, a year of nightly runs.\n\n"
        + markdown_table(["query", "first call, ms", "median of 3 more, ms"], rows)
        + f"\nAll of them at the first call: **{queries_total:.3f} s** (target < 1 s: "
        f"{'met' if queries_total < 1 else '**missed**'}). `engram-ff status` end to end, interpreter start "
        f"included: {command:.2f} s.\n\n## What keeping the counts costs ingest\n\n"
        f"Storing {lines:,} parsed lines (files.insert_messages + files.commit_read, {BATCH:,} rows a "
        "transaction, in a fresh process each; parsing, about as much again, is not in it), three runs of "
        "each interleaved, CPU a line:\n\n"
        + markdown_table(["counts kept by", "us CPU a line, each run", "best", "best vs none"], cost_rows)
        + "\nengram-ff keeps them with commit counters (state/schema.py 0200).\n"
    )
