"""`engram-ff bench update --backlog-gb 0.1,1`: the nightly update after a backlog of new text, and its
peak memory, which must not grow with the backlog (target: <= 700 MiB at 1 GB).

For each size: that many bytes of new text (`sender: speech` lines, the speeches of TinyShakespeare and
the plays, cycled) written as Engram daily files over a year, ingested with `engram-ff ingest`; then
the daemon's own update child (`python -m engram_ff.daemon.child`) with the default configuration but
a short training budget (memory peaks while the night's text is built and in the first steps, not
later), and a facts file with one more fact whose prompt is --fact-prompt-mb MB of text, so the probe
pass's worst case is in the same night. Each child's own peak RSS comes from wait4(), not from the
benchmark's other children (the ingest).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import orjson

from engram_ff.bench.common import DATA, markdown_table, write_result
from engram_ff.bench.make_stream import PLAYS, play_speeches, tiny_speeches
from engram_ff.daemon.facts import BUNDLED_FACTS

MIB, GB = 1 << 20, 10**9
DAYS = 365


def speeches() -> list[tuple[str, str]]:
    texts = [tiny_speeches((DATA / "tinyshakespeare.txt").read_text())]
    texts += [play_speeches((DATA / "plays" / f"{name}.txt").read_text()) for name in PLAYS]
    return [(speaker, speech) for text in texts for _, speaker, speech in text]


def write_backlog(raw: Path, n_bytes: int) -> int:
    """Daily files from 2025-01-01 whose message lines add up to n_bytes; returns the lines written."""
    pool, per_day = speeches(), n_bytes / DAYS
    raw.mkdir(parents=True, exist_ok=True)
    written, lines, k = 0, 0, 0
    for d in range(DAYS):
        day = date(2025, 1, 1) + timedelta(d)
        with open(raw / f"{day}.jsonl", "wb") as f:
            second = 0
            while written < per_day * (d + 1):
                speaker, speech = pool[k % len(pool)]
                k, second = k + 1, second + 1
                stamp = f"{day}T{second // 3600 % 24:02d}:{second // 60 % 60:02d}:{second % 60:02d}.{k % 1000:03d}Z"
                line: dict[str, object] = {
                    "timestamp": stamp,
                    "session_key": f"s:{day}:{second // 600}",
                    "direction": "in",
                }
                line |= {"channel": "bench", "sender": speaker, "content": speech, "tool_calls": []}
                f.write(orjson.dumps(line) + b"\n")
                written += len(speaker) + len(speech) + 3
                lines += 1
    return lines


def facts_file(path: Path, prompt_mb: float) -> Path:
    """The bundled facts and one whose prompt is prompt_mb MB of TinyShakespeare."""
    text = (DATA / "tinyshakespeare.txt").read_text()
    prompt = (text * (1 + int(prompt_mb * 1e6) // len(text)))[: int(prompt_mb * 1e6)]
    path.write_text(
        BUNDLED_FACTS.read_text()
        + f'\n[[fact]]\nname = "long-prompt"\nprompt = {json.dumps(prompt)}\nanswer = "Victor."\n'
        + 'distractors = ["Romeo.", "Juliet."]\n'
    )
    return path


def child_run(env: dict) -> tuple[float, float, int]:
    """(wall seconds, this child's peak RSS in MiB, exit code) of one update child."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen([sys.executable, "-m", "engram_ff.daemon.child"], env=env, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-3000:])
    return wall, usage.ru_maxrss / 1024, proc.returncode


def measure(size_gb: float, budget_minutes: float, prompt_mb: float, tmp: Path) -> list[dict]:
    """The first two nights after the backlog arrived: the first has nothing older to replay, the second
    replays twice its new text (replay_ratio 2), the most text a night holds."""
    watch, data = tmp / f"engram-{size_gb}", tmp / f"data-{size_gb}"
    lines = write_backlog(watch / "raw", int(size_gb * GB))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGRAM_FF_")}
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the daemon's child gets it
    env.update(ENGRAM_FF_WATCH_DIR=str(watch), ENGRAM_FF_DATA_DIR=str(data))
    env["ENGRAM_FF_UPDATE_BUDGET_MINUTES"] = str(budget_minutes)
    env["ENGRAM_FF_FACTS_FILE"] = str(facts_file(tmp / "facts.toml", prompt_mb))
    subprocess.run([sys.executable, "-m", "engram_ff.daemon.cli", "ingest"], env=env, check=True, capture_output=True)
    nights: list[dict[str, object]] = []
    for night in (1, 2):
        wall, peak, code = child_run(env)
        db = sqlite3.connect(data / "engram-ff.db")
        db.row_factory = sqlite3.Row
        update = dict(db.execute("SELECT * FROM runs WHERE kind = 'update' ORDER BY id DESC LIMIT 1").fetchone())
        facts = db.execute(
            "SELECT count(*) FROM probe_scores WHERE kind = 'fact' AND run_id = (SELECT max(run_id) FROM probe_scores)"
        ).fetchone()[0]
        db.close()
        nights.append(dict(size_gb=size_gb, lines=lines, night=night, wall_s=wall, peak_mib=peak, code=code))
        nights[-1].update(update=update, fact_rows=facts)
    for folder in (watch, data):  # a gigabyte of files and its database: gone before the next size
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    return nights


def run(sizes: list[float], budget_minutes: float, prompt_mb: float, out: Path) -> int:
    results, load_before = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="engram-backlog-") as tmp:
        for size in sizes:
            results += measure(size, budget_minutes, prompt_mb, Path(tmp))
            for r in results[-2:]:
                print(f"{size} GB, night {r['night']}: peak {r['peak_mib']:.0f} MiB, exit {r['code']}", flush=True)
    rows = [
        [
            f"{r['size_gb']:g} GB ({r['lines']:,} lines)",
            r["night"],
            r["update"]["status"],
            f"{(r['update']['new_bytes'] or 0) / MIB:.1f} MiB",
            f"{(r['update']['replay_bytes'] or 0) / MIB:.1f} MiB",
            f"{(r['update']['waiting_bytes'] or 0) / MIB:,.1f} MiB",
            r["update"]["steps"],
            f"{r['fact_rows'] // 2} of 4",
            f"{r['wall_s'] / 60:.1f} min",
            f"**{r['peak_mib']:,.0f} MiB**",
        ]
        for r in results
    ]
    table = markdown_table(
        [
            "backlog of new text",
            "night",
            "status",
            "new text trained",
            "replayed",
            "left waiting",
            "steps",
            "facts scored",
            "wall",
            "peak RSS",
        ],
        rows,
    )
    sizes_arg = ",".join(f"{s:g}" for s in sizes)
    text = (
        "# The nightly update after a backlog\n\n"
        f"`engram-ff bench update --backlog-gb {sizes_arg} --budget-minutes {budget_minutes:g} "
        f"--fact-prompt-mb {prompt_mb:g}` on {os.cpu_count()} cores: the first two nights after the backlog "
        "arrived (the second replays twice its new text), each the daemon's update child with the default "
        f"configuration (update_max_new_mib = 16) but a {budget_minutes:g}-minute training budget, and a facts "
        f"file whose fourth fact has a {prompt_mb:g} MB prompt. Target: peak RSS <= 700 MiB for 1 GB of new "
        f"text, whatever the backlog. Load average {load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at "
        "the end: other jobs shared the cores, which changes the wall times, not the memory.\n\n" + table
    )
    print(table)
    write_result(out.name, text, out.parent)
    print(f"wrote {out}")
    return 0 if all(r["code"] == 0 for r in results) else 1
