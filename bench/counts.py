"""A plain adaptive count model on `engram-ff bench learning`'s days: where a context model's bar sits.

The daemon's model predicts a new day worse than bz2 codes it (bench/results/learning-month-bits23.md).
Is bz2 doing something a language model should not be expected to do? This reads the same days with the
simplest context model there is, counts of the bytes that followed each context of the last n bytes,
n = 0..order, blended by interpolated absolute discounting:

    p_n(c | s) = (max(count_n(s, c) - D, 0) + D * distinct_n(s) * p_{n-1}(c | s')) / total_n(s)

(s' is s less its oldest byte; a context never seen passes p_{n-1} on unchanged; p_{-1} is uniform). It
learns online, byte by byte, as a compressor does, so it adapts within the day as the 'reading' column of
bench learning does and as bz2 does. No neural network, no training pass: if this beats bz2, so can a
memory whose rows work like counts.

    python -m engram_ff.bench.counts [--nights 32] [--orders 3,4,5] [--against bench/results/learning-month-bits23.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from pathlib import Path

from engram_ff.bench import learning
from engram_ff.bench.common import RESULTS, markdown_table, plot_series, write_result

DISCOUNT = 0.6  # D: 0.5-0.7 within 0.01 bits per byte on these days (development runs)


class CountModel:
    """Counts of next bytes per context, orders 0..order, read and learned one byte at a time."""

    def __init__(self, order: int, discount: float = DISCOUNT):
        self.order, self.discount = order, discount
        self.tables: list[dict[bytes, dict[int, int]]] = [defaultdict(dict) for _ in range(order + 1)]
        self.totals: list[dict[bytes, int]] = [defaultdict(int) for _ in range(order + 1)]
        self.history = b""

    def cost_bits(self, text: bytes) -> float:
        """Bits to code `text` after everything read before, learning each byte once it is coded."""
        bits = 0.0
        for byte in text:
            contexts = [self.history[len(self.history) - n :] if n else b"" for n in range(self.order + 1)]
            p = 1 / 256
            for n, s in enumerate(contexts):
                total = self.totals[n].get(s)
                if total:
                    seen = self.tables[n][s]
                    p = (max(seen.get(byte, 0) - self.discount, 0) + self.discount * len(seen) * p) / total
            bits -= math.log2(p)
            for n, s in enumerate(contexts):
                seen = self.tables[n][s]
                seen[byte] = seen.get(byte, 0) + 1
                self.totals[n][s] += 1
            self.history = (self.history + bytes((byte,)))[-self.order :] if self.order else b""
        return bits


def day_texts(nights: int, day_kb: float, seed: int) -> list[bytes]:
    """The days bench learning writes, as the daemon's text (its facts on night 2)."""
    days = learning.make_days(nights, round(day_kb * 1000), learning.load_facts(), [2], seed)
    return [d.text for d in days]


def run(args) -> dict:
    texts = day_texts(args.nights, args.day_kb, args.seed)
    began = time.perf_counter()
    per_order = {}
    for order in args.orders:
        model = CountModel(order)
        per_order[order] = [model.cost_bits(t) / len(t) for t in texts]
    compressors, _ = learning.compressor_bpb(texts)
    against = None
    if args.against:
        result = json.loads(args.against.read_text())
        records = result["methods"]["ff"]
        against = {r["night"]: (r["prequential_bpb"], r.get("reading_bpb")) for r in records}
    return dict(
        nights=args.nights,
        day_kb=args.day_kb,
        seed=args.seed,
        discount=DISCOUNT,
        seconds=time.perf_counter() - began,
        bytes=[len(t) for t in texts],
        counts={str(o): v for o, v in per_order.items()},
        bz2=[c["bz2 -9"] for c in compressors],
        xz=[c["xz -9e"] for c in compressors],
        against=str(args.against) if args.against else None,
        ff={str(n): v for n, v in against.items()} if against else None,
    )


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _bpb(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def report(result: dict, command: str) -> str:
    orders = list(result["counts"])
    ff = result["ff"] or {}
    headers = ["night", "kB"] + [f"counts, order {o}" for o in orders] + ["bz2 -9", "xz -9e"]
    if ff:
        headers += ["ff", "ff, reading"]
    rows: list[list] = []
    for i, size in enumerate(result["bytes"]):
        night = i + 1
        row = [night, f"{size / 1000:.1f}"] + [f"{result['counts'][o][i]:.3f}" for o in orders]
        row += [f"{result['bz2'][i]:.3f}", f"{result['xz'][i]:.3f}"]
        if ff:
            row += [_bpb(v) for v in ff.get(str(night), (None, None))]
        rows.append(row)
    last = len(result["bytes"])
    for lo, hi in ((2, min(24, last)), (2, last)):
        span = range(lo - 1, hi)
        columns = [result["counts"][o] for o in orders] + [result["bz2"], result["xz"]]
        means = [_mean([column[i] for i in span]) for column in columns]
        if ff:
            means += [_mean([ff.get(str(i + 1), (None, None))[k] for i in span]) for k in (0, 1)]
        rows.append([f"**mean, nights {lo}-{hi}**", ""] + [f"**{_bpb(m)}**" for m in means])
    return "\n".join(
        [
            "# A plain count model on bench learning's days",
            "",
            f"`{command}` (bench/counts.py): {result['nights']} days of about {result['day_kb']:g} kB, seed "
            f"{result['seed']}, the facts on night 2; {result['seconds']:.0f} s on one core.",
            "",
            "Bits per byte of each day given all earlier days. Counts: next-byte counts per context of the last "
            f"0..n bytes, interpolated absolute discounting (D = {result['discount']}), learned byte by byte as "
            "they code (so within the day too, as bz2 and 'ff, reading' do). "
            + (
                f"ff: the daemon's model in `{result['against']}`, the day scored by the model of the night "
                "before; 'reading': the same with its context memory learning as it reads the day."
                if ff
                else ""
            ),
            "",
            markdown_table(headers, rows),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m engram_ff.bench.counts", description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=32)
    parser.add_argument("--day-kb", type=float, default=35.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--orders", type=lambda s: [int(x) for x in s.split(",")], default=[3, 4, 5])
    parser.add_argument("--against", type=Path, help="a bench learning JSON whose ff nights to show beside")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="counts")
    args = parser.parse_args(argv)
    if args.nights < 2 or not args.orders or min(args.orders) < 0:
        parser.error("--nights must be at least 2 and --orders non-negative")
    if args.against and not args.against.is_file():
        parser.error(f"--against: no file {args.against}")
    result = run(args)
    command = "python -m engram_ff.bench.counts " + " ".join(argv)
    text = report(result, command.strip())
    print(text)
    write_result(f"{args.stem}.json", json.dumps(result, indent=1), args.results)
    write_result(f"{args.stem}.md", text + f"\n![bits per byte by night]({args.stem}.png)\n", args.results)
    series = {f"counts, order {o}": v[1:] for o, v in result["counts"].items()}
    series["bz2 -9"] = result["bz2"][1:]
    if result["ff"]:
        series["ff"] = [result["ff"].get(str(n), (math.nan,))[0] or math.nan for n in range(2, args.nights + 1)]
    plot_series(
        args.results / f"{args.stem}.png",
        series,
        "nights after the first",
        "bits per byte",
        "each day given the days before",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
