"""A plain adaptive count model on `engram-ff bench learning`'s days: where a context model's bar sits.

The daemon's model predicts a new day worse than bz2 codes it (bench/results/learning-month-bits23.md).
Is bz2 doing something a language model should not be expected to do? This reads the same days with the
simplest context model there is, counts of the bytes that followed each context of the last n bytes,
n = 0..order, blended by interpolated absolute discounting:

    p_n(c | s) = (max(count_n(s, c) - D(c), 0) + escape_n(s) * p_{n-1}(c | s')) / total_n(s)
    escape_n(s) = sum over the bytes b seen after s of min(count_n(s, b), D(b))

(s' is s less its oldest byte; a context never seen passes p_{n-1} on unchanged; p_{-1} is uniform). D(c)
is D1, D2 or D3 for a byte counted once, twice, three times or more (modified Kneser-Ney's discounts,
without its continuation counts); D1 = D2 = D3 is plain absolute discounting. No neural network, no
training pass: if this beats bz2, so can a memory whose rows work like counts.

Two protocols. 'reading' learns byte by byte as it codes, as a compressor does, so it adapts within the
day as bz2 does. 'night before' codes the whole day with the counts of the days before, then counts it:
the daemon's prequential score, whose model learns only at night.

    python -m engram_ff.bench.counts [--nights 32] [--orders 3,4,5] [--discounts 0.6,0.6,0.6 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from engram_ff.bench import learning
from engram_ff.bench.common import RESULTS, markdown_table, plot_series, write_result
from engram_ff.model.counts import DISCOUNTS

PROTOCOLS = ("reading", "night before")


class CountModel:
    """Counts of next bytes per context, orders 0..order; `cost_bits` codes a text and then has counted it."""

    def __init__(self, order: int, discounts: tuple[float, float, float] = DISCOUNTS):
        self.order, self.discounts = order, discounts
        self.tables: list[dict[bytes, dict[int, int]]] = [defaultdict(dict) for _ in range(order + 1)]
        self.totals: list[dict[bytes, int]] = [defaultdict(int) for _ in range(order + 1)]
        self.escapes: list[dict[bytes, float]] = [defaultdict(float) for _ in range(order + 1)]  # sum of min(c, D)
        self.history = b""

    def _discount(self, count: int) -> float:
        return self.discounts[min(count, 3) - 1]

    def _contexts(self) -> list[bytes]:
        return [self.history[len(self.history) - n :] if n else b"" for n in range(self.order + 1)]

    def _probability(self, contexts: list[bytes], byte: int) -> float:
        p = 1 / 256
        for n, s in enumerate(contexts):
            total = self.totals[n].get(s)
            if total:
                count = self.tables[n][s].get(byte, 0)
                kept = max(count - self._discount(count), 0) if count else 0
                p = (kept + self.escapes[n][s] * p) / total
        return p

    def _count(self, contexts: list[bytes], byte: int) -> None:
        for n, s in enumerate(contexts):
            seen = self.tables[n][s]
            count = seen.get(byte, 0)
            self.escapes[n][s] += min(count + 1, self._discount(count + 1)) - (
                min(count, self._discount(count)) if count else 0
            )
            seen[byte] = count + 1
            self.totals[n][s] += 1

    def _step(self, byte: int) -> None:
        self.history = (self.history + bytes((byte,)))[-self.order :] if self.order else b""

    def cost_bits(self, text: bytes, reading: bool = True) -> float:
        """Bits to code `text` after everything counted before: reading, each byte is counted once coded;
        otherwise (the night before) the whole text is coded first and counted after."""
        bits, start = 0.0, self.history
        for byte in text:
            contexts = self._contexts()
            bits -= math.log2(self._probability(contexts, byte))
            if reading:
                self._count(contexts, byte)
            self._step(byte)
        if not reading:
            self.history = start
            for byte in text:
                self._count(self._contexts(), byte)
                self._step(byte)
        return bits


def day_texts(nights: int, day_kb: float, seed: int) -> list[bytes]:
    """The days bench learning writes, as the daemon's text (its facts on night 2)."""
    days = learning.make_days(nights, round(day_kb * 1000), learning.load_facts(), [2], seed)
    return [d.text for d in days]


def variant_name(order: int, discounts: tuple[float, ...], protocol: str) -> str:
    return f"order {order}, D {'/'.join(f'{d:g}' for d in discounts)}, {protocol}"


def run(args) -> dict:
    texts = day_texts(args.nights, args.day_kb, args.seed)
    began = time.perf_counter()
    variants = {}
    for order in args.orders:
        for discounts in args.discounts:
            for protocol in PROTOCOLS:
                model = CountModel(order, discounts)
                reading = protocol == "reading"
                bpb = [model.cost_bits(t, reading) / len(t) for t in texts]
                variants[variant_name(order, discounts, protocol)] = bpb
                print(f"{variant_name(order, discounts, protocol)}: {_mean(bpb[1:]):.3f}", flush=True)
    compressors, _ = learning.compressor_bpb(texts)
    against = None
    if args.against:
        result = json.loads(args.against.read_text())
        against = {r["night"]: r["prequential_bpb"] for r in result["methods"]["ff"]}
    return dict(
        nights=args.nights,
        day_kb=args.day_kb,
        seed=args.seed,
        model_discounts=list(DISCOUNTS),
        seconds=time.perf_counter() - began,
        bytes=[len(t) for t in texts],
        variants=variants,
        bz2=[c["bz2 -9"] for c in compressors],
        xz=[c["xz -9e"] for c in compressors],
        against=str(args.against) if args.against else None,
        ff={str(n): v for n, v in against.items()} if against else None,
    )


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def _bpb(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _against(values: list[float], reference: list[float]) -> tuple[int, str]:
    """(days at or below the reference, the worst day above it as 'night N +x', or '-'), nights 2 on."""
    gaps = [(v - r, night) for night, (v, r) in enumerate(zip(values, reference), start=1) if night >= 2]
    worst = max(gaps)
    return sum(gap <= 0 for gap, _ in gaps), f"night {worst[1]} +{worst[0]:.3f}" if worst[0] > 0 else "-"


def report(result: dict, command: str) -> str:
    last = len(result["bytes"])
    spans = ((2, min(24, last)), (2, last))
    headers = ["variant", *[f"mean, nights {lo}-{hi}" for lo, hi in spans], "days at or below bz2", "worst day"]
    summary = []
    for name, values in result["variants"].items():
        below, worst = _against(values, result["bz2"])
        summary.append([name, *[_bpb(_mean(values[lo - 1 : hi])) for lo, hi in spans], f"{below}/{last - 1}", worst])
    for name in ("bz2", "xz"):
        summary.append(
            [
                f"{name} -9" + ("e" if name == "xz" else ""),
                *[_bpb(_mean(result[name][lo - 1 : hi])) for lo, hi in spans],
                "",
                "",
            ]
        )
    ff = result["ff"] or {}
    if ff:
        values = [ff.get(str(n)) for n in range(1, last + 1)]
        summary.append(
            ["ff (the daemon, night before)", *[_bpb(_mean(values[lo - 1 : hi])) for lo, hi in spans], "", ""]
        )
    shown = [n for n in result["variants"] if f"D {'/'.join(f'{d:g}' for d in result['model_discounts'])}," in n]
    shown = shown or list(result["variants"])
    nightly = [["night", "kB", *shown, "bz2 -9", "xz -9e", *(["ff"] if ff else [])]]
    for i, size in enumerate(result["bytes"]):
        row = [i + 1, f"{size / 1000:.1f}", *[f"{result['variants'][n][i]:.3f}" for n in shown]]
        row += [f"{result['bz2'][i]:.3f}", f"{result['xz'][i]:.3f}", *([_bpb(ff.get(str(i + 1)))] if ff else [])]
        nightly.append(row)
    return "\n".join(
        [
            "# A plain count model on bench learning's days",
            "",
            f"`{command}` (bench/counts.py): {result['nights']} days of about {result['day_kb']:g} kB, seed "
            f"{result['seed']}, the facts on night 2; {result['seconds']:.0f} s on one core.",
            "",
            "Bits per byte of each day given all earlier days. Counts: next-byte counts per context of the last "
            "0..n bytes, interpolated absolute discounting, D for a byte counted once, twice, three times or more "
            "(D1/D2/D3). 'reading': counted byte by byte as they code, within the day too, as bz2 does. 'night "
            "before': the day coded with the counts of the days before, then counted, as the daemon's "
            "prequential score is taken. The model's discounts (model/counts.py DISCOUNTS) are "
            f"{'/'.join(f'{d:g}' for d in result['model_discounts'])}."
            + (f" ff: the daemon's model in `{result['against']}`." if ff else ""),
            "",
            markdown_table(headers, summary),
            "",
            "## Every night",
            "",
            markdown_table(nightly[0], nightly[1:]),
            "",
        ]
    )


def _discounts(text: str) -> tuple[float, float, float]:
    values = tuple(float(x) for x in text.split(","))
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not all(0 < d <= n + 1 for n, d in enumerate(values)):
        raise argparse.ArgumentTypeError(f"{text}: D1,D2,D3 (or one D), each above 0, D1 <= 1, D2 <= 2, D3 <= 3")
    return values


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m engram_ff.bench.counts", description=__doc__.split("\n")[0])
    parser.add_argument("--nights", type=int, default=32)
    parser.add_argument("--day-kb", type=float, default=35.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--orders", type=lambda s: [int(x) for x in s.split(",")], default=[4])
    parser.add_argument(
        "--discounts",
        type=_discounts,
        action="append",
        help=f"D1,D2,D3 or one D (repeat; default 0.6 and the model's {','.join(f'{d:g}' for d in DISCOUNTS)})",
    )
    parser.add_argument("--against", type=Path, help="a bench learning JSON whose ff nights to show beside")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", default="counts")
    args = parser.parse_args(argv)
    args.discounts = args.discounts or [(0.6, 0.6, 0.6), DISCOUNTS]
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
    series = {name: values[1:] for name, values in result["variants"].items()}
    series["bz2 -9"] = result["bz2"][1:]
    if result["ff"]:
        series["ff"] = [result["ff"].get(str(n)) or math.nan for n in range(2, args.nights + 1)]
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
