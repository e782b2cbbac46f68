"""`engram-ff bench ingest`: lines per second, append-to-row latency, and peak memory for 1 GB.

1. throughput: N recorder lines in daily files, one catch-up pass into a fresh database (parse +
   commit, fsync per batch), in a process of its own;
2. latency: the watcher running over that database, one line appended at a time; the time from the
   append to the moment its row can be read on another connection (p50, p95);
3. memory: a fresh process ingests a generated ~1 GB folder; its peak RSS and that of the parsing
   process it starts.
Targets on 2 cores: >= 100,000 lines/s, p95 <= 1 s, peak RSS <= 300 MB for 1 GB.
Run it under the shared lock: flock /tmp/engram-bench.lock python -m engram_ff.bench.ingest
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import orjson

from engram_ff.bench.common import RESULTS, markdown_table, run_isolated, write_result

WORDS = [
    "the",
    "a",
    "to",
    "and",
    "of",
    "I",
    "you",
    "it",
    "is",
    "that",
    "in",
    "we",
    "this",
    "for",
    "not",
    "on",
    "be",
    "with",
    "have",
    "are",
    "do",
    "what",
    "but",
    "can",
    "so",
    "just",
    "like",
    "will",
    "if",
    "about",
    "my",
    "your",
    "was",
    "at",
    "as",
    "think",
    "know",
    "how",
    "get",
    "there",
    "all",
    "would",
    "one",
    "they",
    "when",
    "model",
    "daemon",
    "night",
    "logs",
    "byte",
    "state",
    "train",
    "forward",
    "probe",
    "memory",
    "session",
    "update",
    "checkpoint",
]


def write_lines(folder: Path, n_lines: int, days: int, seed: int = 0) -> int:
    """n_lines recorder lines spread over daily files raw/2026-11-DD.jsonl; returns bytes written."""
    rng = random.Random(seed)
    raw = folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    per_day, written = -(-n_lines // days), 0
    for day in range(days):
        count = min(per_day, n_lines - day * per_day)
        lines = []
        for i in range(count):
            lines.append(
                orjson.dumps(
                    {
                        "timestamp": f"2026-11-{day + 1:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z",
                        "session_key": f"agent:main:telegram:{i % 13}",
                        "direction": "in" if i % 2 else "out",
                        "channel": "telegram",
                        "sender": "alice" if i % 2 else "assistant",
                        "content": " ".join(rng.choices(WORDS, k=rng.randint(4, 30))) + f" #{day}.{i}",
                        "tool_calls": [],
                    }
                )
            )
            if len(lines) == 50_000:
                written += _append(raw / f"2026-11-{day + 1:02d}.jsonl", lines)
                lines = []
        written += _append(raw / f"2026-11-{day + 1:02d}.jsonl", lines)
    return written


def _append(path: Path, lines: list[bytes]) -> int:
    data = b"".join(line + b"\n" for line in lines)
    with open(path, "ab") as f:
        f.write(data)
    return len(data)


def ingest_folder(folder: str, db_path: str) -> dict:
    """One catch-up pass (run in a fresh process): wall and CPU seconds, and peak memory.

    Peak memory is sampled from /proc every 20 ms as this process plus its parsing process, at the
    same instant; this process's own peak is also read exactly (VmHWM). getrusage's ru_maxrss is not
    used: a spawned process inherits its parent's peak through fork+exec.
    """
    from engram_ff.ingest.reader import catch_up
    from engram_ff.state.db import open_db

    db = open_db(db_path)
    sampler = _RssSampler()
    sampler.start()
    start, cpu = time.perf_counter(), time.process_time()
    stats = catch_up(db, folder)
    wall = time.perf_counter() - start
    sampler.stop()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "lines": stats.lines,
        "messages": stats.messages,
        "wall_s": wall,
        "writer_cpu_s": time.process_time() - cpu,
        "parser_cpu_s": children.ru_utime + children.ru_stime,
        "peak_rss_mib": sampler.peak,
        "writer_hwm_mib": _status_mib("self", "VmHWM"),
    }


def _status_mib(pid: int | str, key: str) -> float:
    """A memory line of /proc/PID/status, in MiB (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _child_pids() -> list[str]:
    pids = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/children") as f:
                pids += f.read().split()
        except OSError:
            pass
    return pids


class _RssSampler(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self._done = 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.02):
            children = sum(_status_mib(pid, "VmRSS") for pid in _child_pids())
            self.peak = max(self.peak, _status_mib("self", "VmRSS") + children)

    def stop(self) -> None:
        self._done.set()
        self.join()


def append_latencies(folder: Path, db_path: Path, appends: int, debounce_s: float) -> list[float]:
    """Seconds from each append to its row, with the watcher running; appends at random intervals."""
    from engram_ff.ingest.watcher import Watcher
    from engram_ff.state.db import open_db

    watcher = Watcher(db_path, folder, debounce_s=debounce_s)
    watcher.start()
    db = open_db(db_path)
    path = folder / "raw" / "2026-12-01.jsonl"
    rng = random.Random(1)
    latencies = []
    try:
        time.sleep(1.0)  # let the start-up scan of the big folder finish
        for i in range(appends):
            text = f"latency probe {i}"
            line = (
                orjson.dumps(
                    {
                        "timestamp": "2026-12-01T00:00:00Z",
                        "session_key": "bench",
                        "direction": "in",
                        "sender": "bench",
                        "content": text,
                    }
                )
                + b"\n"
            )
            with open(path, "ab") as f:
                f.write(line)
            sent = time.perf_counter()
            while db.execute("SELECT 1 FROM messages WHERE text = ? AND day = '2026-12-01'", [text]).fetchone() is None:
                if time.perf_counter() - sent > 30:
                    raise RuntimeError(f"append {i} not stored after 30 s")
                time.sleep(0.002)
            latencies.append(time.perf_counter() - sent)
            time.sleep(rng.uniform(0.0, 0.1))
    finally:
        watcher.stop()
    return latencies


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def plot_latency(latencies: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [x * 1000 for x in latencies]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.hist(ms, bins=40, color="#4477aa")
    for q, style in ((50, "--"), (95, ":")):
        ax.axvline(percentile(ms, q), color="k", linestyle=style, label=f"p{q} {percentile(ms, q):.0f} ms")
    ax.set(
        xlabel="append -> committed row (ms)",
        ylabel="appends",
        title=f"Ingest latency under the watcher ({len(ms)} appends)",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engram-ff bench ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines for the throughput run")
    parser.add_argument("--appends", type=int, default=150, help="appends for the latency run")
    parser.add_argument("--gb", type=float, default=1.0, help="size of the memory run's folder (0: skip)")
    parser.add_argument("--quick", action="store_true", help="100,000 lines, 40 appends, 0.05 GB")
    parser.add_argument("--debounce", type=float, default=0.2, help="the watcher's debounce (the default)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where ingest.md and the PNG go")
    parser.add_argument(
        "--status",
        action="store_true",
        help="instead: the queries behind `status` at 10 M messages and 100,000 files (--quick: 1 M, 10,000), "
        "and what keeping their counts costs ingest; writes ingest-status.md",
    )
    parser.add_argument("--work-dir", help="--status: where the database is built (needs about 3 GB; default: /tmp)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.status:
        from engram_ff.bench.status_scale import run

        name = "ingest-status-quick.md" if args.quick else "ingest-status.md"
        print(f"wrote {write_result(name, run(args.quick, args.work_dir), args.out)}")
        return 0
    if args.quick:
        args.lines, args.appends, args.gb = 100_000, 40, min(args.gb, 0.05)
    load = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="engram-ff-bench-") as tmp_name:
        tmp = Path(tmp_name)
        size = write_lines(tmp / "engram", args.lines, days=8)
        result, _ = run_isolated(ingest_folder, str(tmp / "engram"), str(tmp / "state.db"))
        assert result["messages"] == args.lines, result
        rate = result["lines"] / result["wall_s"]
        writer_us, parser_us = (result[k] / result["lines"] * 1e6 for k in ("writer_cpu_s", "parser_cpu_s"))
        print(
            f"throughput: {result['lines']:,} lines ({size / 1e6:.0f} MB) in {result['wall_s']:.1f} s = "
            f"{rate:,.0f} lines/s; CPU a line: writer {writer_us:.1f} us, parser {parser_us:.1f} us"
        )
        rows.append(
            [
                f"lines per second, {args.lines:,} lines (catch-up: parse + commit)",
                f"{rate:,.0f}",
                ">= 100,000",
                _verdict(rate >= 100_000),
            ]
        )
        rows.append(
            ["CPU a line: SQLite writer process / parsing process", f"{writer_us:.1f} / {parser_us:.1f} us", "", ""]
        )
        rows.append(
            [
                "lines per second if each process had a core to itself (1 / the larger CPU a line)",
                f"{1e6 / max(writer_us, parser_us):,.0f}",
                "",
                "estimate",
            ]
        )

        latencies = append_latencies(tmp / "engram", tmp / "state.db", args.appends, args.debounce)
        p50, p95 = percentile(latencies, 50), percentile(latencies, 95)
        print(
            f"latency over {len(latencies)} appends: p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms"
        )
        rows.append([f"append -> row, p50 (debounce {args.debounce} s)", f"{p50 * 1000:.0f} ms", "", ""])
        rows.append(
            [
                f"append -> row, p95 (debounce {args.debounce} s)",
                f"{p95 * 1000:.0f} ms",
                "<= 1000 ms",
                _verdict(p95 <= 1.0),
            ]
        )
        args.out.mkdir(parents=True, exist_ok=True)
        plot_latency(latencies, args.out / "ingest_latency.png")

    if args.gb > 0:
        with tempfile.TemporaryDirectory(prefix="engram-ff-bench-") as tmp_name:
            tmp = Path(tmp_name)
            n = int(args.gb * 1e9 / (size / args.lines))
            size_gb = write_lines(tmp / "engram", n, days=8, seed=2)
            result, _ = run_isolated(ingest_folder, str(tmp / "engram"), str(tmp / "state.db"))
            assert result["messages"] == n, result
            peak = result["peak_rss_mib"]
            print(
                f"memory: {size_gb / 1e9:.2f} GB ({n:,} lines) ingested in {result['wall_s']:.0f} s, peak RSS "
                f"{peak:.0f} MiB (writer alone {result['writer_hwm_mib']:.0f} MiB)"
            )
            rows.append(
                [
                    f"peak RSS ingesting {size_gb / 1e9:.2f} GB, writer + parsing process",
                    f"{peak * 1.048576:.0f} MB",
                    "<= 300 MB",
                    _verdict(peak * 1.048576 <= 300),
                ]
            )
            rows.append(
                ["  of which the writer process (VmHWM)", f"{result['writer_hwm_mib'] * 1.048576:.0f} MB", "", ""]
            )
            rows.append([f"lines per second for {size_gb / 1e9:.2f} GB", f"{n / result['wall_s']:,.0f}", "", ""])

    text = (
        f"# Ingest benchmark\n\n`python -m engram_ff.bench.ingest{''.join(' ' + a for a in argv)}`\n\n"
        f"Machine: {os.cpu_count()} CPUs, 1-minute load average {load:.1f} at start "
        f"(other jobs share the CPUs).\n\n"
        + markdown_table(["measure", "measured", "target", ""], rows)
        + "\n![latency histogram](ingest_latency.png)\n"
    )
    print(f"wrote {write_result('ingest.md', text, args.out)}")
    return 0


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


if __name__ == "__main__":
    raise SystemExit(main())
