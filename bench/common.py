"""Small helpers the benchmarks share: peak memory, running a job in a process of its own, timing,
and writing Markdown tables and PNG plots under bench/results/."""

from __future__ import annotations

import argparse
import multiprocessing
import re
import resource
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")
RESULTS = Path(__file__).resolve().parent / "results"
# Public-domain text the benchmarks and tests read, carried with the project (data/README.md).
DATA = Path(__file__).resolve().parent / "data"


def peak_rss_mib() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start a new peak: writing 5 to clear_refs resets VmHWM (Linux 4.0+), so each night's peak is its own."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_since_reset_mib() -> float:
    """VmHWM, in MiB: this process's peak resident memory since reset_peak_rss (ru_maxrss never resets)."""
    found = re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text())
    assert found is not None, "Linux's /proc/self/status has VmHWM"
    return int(found.group(1)) / 1024


@contextmanager
def stopwatch() -> Iterator[list[float]]:
    """`with stopwatch() as t: ...` then t[0] holds the seconds the block took."""
    t = [0.0]
    start = time.perf_counter()
    try:
        yield t
    finally:
        t[0] = time.perf_counter() - start


def _measured(fn: Callable[..., T], args: tuple) -> tuple[T, float]:
    return fn(*args), peak_rss_mib()


def run_isolated(fn: Callable[..., T], *args) -> tuple[T, float]:
    """fn(*args) in a fresh process, so the peak RSS is that job's alone; returns (result, peak MiB).
    fn must be importable by name (a module-level function)."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_measured, fn, args).result()


def _serve(conn, make: Callable[..., Iterable], args: tuple) -> None:
    """Advance make(*args) one item per request; answer (item or None when done, peak MiB, error)."""
    try:
        items = iter(make(*args))
        while conn.recv():
            conn.send((next(items, None), peak_rss_mib(), None))
    except Exception as e:  # handed to the parent, which raises it
        conn.send((None, peak_rss_mib(), e))


def lockstep(*jobs: tuple[Callable[..., Iterable[T]], tuple]) -> Iterator[list[tuple[T, float]]]:
    """Run each (make, args) job, a generator, in a fresh process of its own and advance them in turn, one
    item each per round: they then share whatever load the rest of the machine puts on them, so their
    timings compare fairly, while each peak RSS stays its own. Yields [(item, peak MiB), ...] per round
    until a job is done. make must be importable by name (a module-level function)."""
    ctx = multiprocessing.get_context("spawn")
    links, workers = [], []
    for make, args in jobs:
        link, their_end = ctx.Pipe()
        workers.append(ctx.Process(target=_serve, args=(their_end, make, args), daemon=True))
        workers[-1].start()
        links.append(link)
    try:
        while True:
            answers = []
            for link in links:
                link.send(True)
                item, rss, error = link.recv()
                if error is not None:
                    raise error
                answers.append((item, rss))
            if any(item is None for item, _ in answers):
                return
            yield answers
    finally:
        for link, worker in zip(links, workers):
            with suppress(OSError):  # a worker that failed has hung up already
                link.send(False)
            worker.join(timeout=10)


def parse_args(parser: argparse.ArgumentParser, argv: list[str], quick: dict) -> argparse.Namespace:
    """`--quick` sets its own defaults, which flags given beside it still override."""
    if "--quick" in argv:
        parser.set_defaults(**quick)
    return parser.parse_args(argv)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_result(name: str, text: str, results_dir: Path = RESULTS) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / name
    path.write_text(text)
    return path


def plot_series(path: Path, series: dict[str, Sequence[float]], xlabel: str, ylabel: str, title: str) -> Path:
    """One line per named series against 1, 2, ... (e.g. epochs), saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, ys in series.items():
        ax.plot(range(1, len(ys) + 1), ys, marker="o", markersize=3, label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    """Lay out, write as PNG (creating the folder) and free a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
