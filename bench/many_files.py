"""The daemon over a folder of many one-line files (part of `engram-ff bench chaos`): how soon it is READY,
how long the catch-up takes, and what it costs once idle.

The files are written before the daemon starts, as after an upgrade or a long stop. Measured from the
daemon's start: READY=1 (target: within 30 s whatever the backlog; systemd's TimeoutStartSec is 600),
every line stored, then the catch-up update and its probes; then, idle, the daemon process's own CPU
time (utime + stime from /proc, its update children excluded) over `idle_s` (target: under 1 % of a
core), during which it rescans the folder every rescan_seconds or less often (ingest/watcher.py).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass
class ManyFilesResult:
    files: int
    ready_s: float
    stored_s: float
    idle_s: float
    idle_cpu_percent: float
    log_lines_idle: int
    rss_mib: float


def write_files(raw: Path, files: int) -> None:
    """One recorder line a file, spread over 30 days; names without a date (the lines carry it)."""
    raw.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        day = 1 + i % 30
        line = orjson.dumps(
            {
                "timestamp": f"2026-11-{day:02d}T10:00:00Z",
                "session_key": f"s{i % 7}",
                "direction": "in",
                "sender": "user",
                "content": f"file {i}: one line, as the issue's 100,000 files had",
            }
        )
        (raw / f"note-{i:06d}.jsonl").write_bytes(line + b"\n")


def cpu_seconds(pid: int) -> float:
    """The process's own user + system time (children not included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def many_files_run(root: Path, files: int, idle_s: float, env: dict, timeout: float = 3600.0) -> ManyFilesResult:
    from engram_ff.bench.chaos import Daemon, read_db, rss_peak_mib

    watch, data = root / "engram", root / "data"
    write_files(watch / "raw", files)
    db = data / "engram-ff.db"
    daemon = Daemon(watch, data, env, root / "daemon.log")
    try:
        deadline = daemon.started + timeout
        while not daemon.ready():
            _alive(daemon, deadline)
            time.sleep(0.05)
        ready_s = time.monotonic() - daemon.started
        while (read_db(db, "SELECT coalesce(sum(messages), 0) FROM day_counts") or [(0,)])[0][0] < files:
            _alive(daemon, deadline)
            time.sleep(0.5)
        stored_s = time.monotonic() - daemon.started
        settled = "SELECT count(*) FROM runs WHERE kind = 'probe' AND status != 'running'"
        while not read_db(db, settled)[0][0] or read_db(db, "SELECT count(*) FROM runs WHERE status = 'running'")[0][0]:
            _alive(daemon, deadline)
            time.sleep(0.5)
        time.sleep(5.0)  # the update child is reaped and the daemon's last writes are done
        log_before = (root / "daemon.log").read_bytes().count(b"\n")
        cpu, start = cpu_seconds(daemon.proc.pid), time.monotonic()
        time.sleep(idle_s)
        idle = time.monotonic() - start
        idle_cpu = cpu_seconds(daemon.proc.pid) - cpu
        rss = rss_peak_mib(daemon.proc.pid)
    finally:
        daemon.stop()
    lines_logged = (root / "daemon.log").read_bytes().count(b"\n") - log_before
    return ManyFilesResult(files, ready_s, stored_s, idle, 100 * idle_cpu / idle, lines_logged, rss)


def _alive(daemon, deadline: float) -> None:
    if daemon.proc.poll() is not None:
        raise RuntimeError(f"the daemon exited with {daemon.proc.returncode}")
    if time.monotonic() > deadline:
        raise RuntimeError("the daemon did not get there in time")


def section(result: ManyFilesResult, args) -> str:
    from engram_ff.bench.common import markdown_table

    rows: list[list[object]] = [
        ["one-line files in the folder at start", f"{result.files:,}", ""],
        ["start to READY=1", f"{result.ready_s:.1f} s", f"<= 30 s: {'met' if result.ready_s <= 30 else '**missed**'}"],
        ["start to every line stored (the catch-up, after READY)", f"{result.stored_s:.0f} s", ""],
        [
            f"idle daemon's own CPU over {result.idle_s:.0f} s (rescans every >= rescan_seconds)",
            f"{result.idle_cpu_percent:.2f} % of a core",
            f"< 1 %: {'met' if result.idle_cpu_percent < 1 else '**missed**'}",
        ],
        ["log lines written while idle", result.log_lines_idle, ""],
        ["daemon peak RSS (VmHWM)", f"{result.rss_mib:.0f} MiB", ""],
    ]
    return (
        "## Many files\n\nbench/many_files.py: the files written before `engram-ff run` starts (as after a long "
        "stop); its catch-up update and probes finish before the idle measurement.\n\n"
        + markdown_table(["measure", "value", "target"], rows)
    )
