"""The context memory alone (model/memory.py): how many facts it holds the next morning and 12 days later.

One base model (bench/fact_night.py's: the daemon preset's SSM layers trained on three days of dialogue),
frozen, so that only the memory learns: it reads the three days, then a fourth into which twelve facts
are planted (said 1, 2, 4 or 8 times, three facts each), then `--after` more days of dialogue, each once,
as the daemon's nights do. The facts are asked as `ask` asks (greedy; the key words must all be there)
after the fact day and after the last day. Held-out: 16 kB of a play none of the days came from.

    python -m engram_ff.bench.memory_sweep --variant default --variant row_lr=6 --variant claim_nats=0

A variant is `default` or key=value,... over row_lr, claim_nats, power (of the order scale), rule ("adagrad"
or "count"), settle (extra steps for the bytes a step still gets wrong), bits, dim, ways (rows a context may
use), orders (colon-separated), discounts (the counts' D1:D2:D3), count_weight (the counts' share of the log
prediction), age (a factor on every row's `seen` after each night: its step size and its claim against
eviction), reread (the days back, colon-separated, that each day's night reads again after the day itself: the
daemon's memory_reread_nights = 5 is 1:2:4:8:16), claim_orders (a byte's new contexts that get rows in a full
set: that many of the shortest; 0, all), claim_longest (0 or 1: and the longest), claim_free (1: a context
whose set has an empty row gets it whatever claim_orders says; 0: claim_orders holds in every set, as
bench/results/memory-sweep-17a.md and -17b.md ran), evict ("stamp": the row stepped longest ago; "seen": the
row that learned least) and prefill (days of shuffled TinyShakespeare words the memory reads first, so that
the fact day finds the table full, as after two months of chat).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch

from engram_ff.bench import fact_night as fn
from engram_ff.bench.common import DATA, RESULTS
from engram_ff.model.config import PRESETS
from engram_ff.model.lm import FFLM
from engram_ff.model.memory import learn
from engram_ff.model.train import evaluate_nats


def _discounts(text: str) -> tuple[float, float, float]:
    try:
        once, twice, more = map(float, text.split(":"))
    except ValueError:
        raise SystemExit(f"discounts: three numbers D1:D2:D3, not {text!r}") from None
    return once, twice, more


KEYS: dict[str, Callable[[str], object]] = {
    "row_lr": float,
    "claim_nats": float,
    "claim_orders": int,
    "evict": str,
    "prefill": int,
    "claim_longest": int,
    "claim_free": int,
    "power": float,
    "rule": str,
    "bits": int,
    "dim": int,
    "orders": str,
    "settle": int,
    "ways": int,
    "reread": str,
    "age": float,
    "discounts": _discounts,
    "count_weight": float,
}


def parse_variant(text: str) -> dict:
    fields: dict = {}
    for item in filter(None, text.split(",")):
        if item == "default":
            continue
        key, _, value = item.partition("=")
        if key not in KEYS or not value:
            raise SystemExit(f"a variant is `default` or key=value,... over {', '.join(KEYS)}; not {item!r}")
        fields[key] = KEYS[key](value)
    return fields


def run(fields: dict, base_path: Path, base_steps: int, after: int) -> dict:
    torch.manual_seed(0)
    days, held = fn.make_days(tiny=True)  # the plays' 17 days, then TinyShakespeare's: the first 17 as without
    history = b"\n".join(fn.text_of(d) for d in days[:3])
    fact_day = fn.text_of(fn.with_facts(days[3], random.Random(1)))
    preset = PRESETS["daemon"]
    config = replace(
        preset,
        match=False,  # the memory alone: what its rows hold, not what the match model copies as the text is read
        memory_bits=fields.get("bits", preset.memory_bits),
        memory_dim=fields.get("dim", preset.memory_dim),
        memory_ways=fields.get("ways", preset.memory_ways),
        memory_orders=tuple(map(int, fields["orders"].split(":"))) if "orders" in fields else preset.memory_orders,
    )
    base = fn.base_model(base_path, history, base_steps, "ff")  # the SSM layers, cached: every variant's start
    model = FFLM(config)
    model.load_state_dict(base.state_dict(), strict=False)  # the memory starts empty
    assert model.memory is not None, "the daemon preset has a context memory"
    model.memory.row_lr = fields.get("row_lr", model.memory.row_lr)
    model.memory.claim_nats = fields.get("claim_nats", model.memory.claim_nats)
    model.memory.order_power = fields.get("power", model.memory.order_power)
    model.memory.row_rule = fields.get("rule", model.memory.row_rule)
    model.memory.settle = fields.get("settle", model.memory.settle)
    model.memory.claim_orders = fields.get("claim_orders", model.memory.claim_orders)
    model.memory.evict = fields.get("evict", model.memory.evict)
    model.memory.claim_longest = bool(fields.get("claim_longest", model.memory.claim_longest))
    model.memory.claim_free = bool(fields.get("claim_free", model.memory.claim_free))
    if model.memory.counts is not None:
        counts = model.memory.counts
        counts.discounts = fields.get("discounts", counts.discounts)
        counts.weight = fields.get("count_weight", counts.weight)
    seen = model.memory.seen  # what each row has learned: `age` scales it after every night
    began = time.perf_counter()
    lags = [int(lag) for lag in fields.get("reread", "").split(":") if lag]
    read: list[bytes] = []  # every day's text so far, in order: what a reread reaches back into

    def night(text: bytes) -> float:
        """The memory's night: the new day, then the days `lags` nights back again (spaced rereading)."""
        bpb = learn(model, text)
        read.append(text)
        for lag in lags:
            if lag < len(read):
                learn(model, read[-1 - lag], count_bytes=0)  # counted on its own night
        seen.mul_(fields.get("age", 1.0))  # what a row has learned counts less each night
        return bpb

    for filler in _filler(fields.get("prefill", 0)):
        learn(model, filler)
    for day in days[:3]:
        night(fn.text_of(day))
    fact_bpb = night(fact_day)
    next_morning = fn.judge(model, held, history)
    later = [night(fn.text_of(day)) for day in days[4 : 4 + after]]
    final = fn.judge(model, held, history)
    return dict(
        fields=fields,
        seconds=time.perf_counter() - began,
        ssm_held_out_bpb=evaluate_nats(base, held, max_bytes=16_000) / math.log(2),
        fact_day_bpb=fact_bpb,
        next=next_morning,
        later_days=len(later),
        later_bpb=sum(later) / len(later) if later else None,
        final=final,
        used_rows=model.memory.used_rows(),
        rows=1 << config.memory_bits,
    )


def _filler(days: int, day_bytes: int = 35_000) -> list[bytes]:
    """`days` days of TinyShakespeare's words shuffled (seeded): text whose short contexts are English and whose
    long ones are new, to fill the table as months of chat would before the fact day."""
    words = (DATA / "tinyshakespeare.txt").read_text().split()
    rng, out = random.Random(7), list[bytes]()
    while len(out) < days:
        rng.shuffle(words)
        text = " ".join(words).encode()
        out += [text[i : i + day_bytes] for i in range(0, len(text) - day_bytes, day_bytes)]
    return out[:days]


def report(rows: list[tuple[str, dict]], out: str, command: str) -> str:
    after = rows[0][1]["later_days"]
    lines = [
        "# The context memory alone: facts the next morning and after more days",
        "",
        f"`{command}` (bench/memory_sweep.py), one core. The SSM layers are frozen (bench/fact_night.py's base);",
        "only the memory learns, one pass per day. Facts: 3 each said k = 1, 2, 4, 8 times on the fact day;",
        f"answered = `ask`'s greedy answer holds the key words; asked after the fact day and {after} days later.",
        "Held-out: 16 kB of a play no day came from. 'Days after': the memory's own test-then-train bits per byte",
        "on the later days.",
        "",
        "| variant | next k=1 | k=2 | k=4 | k=8 | answer bpb | held-out bpb | "
        f"+{after} days k=1 | k=2 | k=4 | k=8 | answer bpb | held-out bpb | days after bpb | rows used | s |",
        "|---|" + "---|" * 15,
    ]
    for name, r in rows:
        a, b = r["next"]["answered"], r["final"]["answered"]
        later = "-" if r["later_bpb"] is None else f"{r['later_bpb']:.3f}"
        lines.append(
            f"| {name} | {a[1]}/3 | {a[2]}/3 | {a[4]}/3 | {a[8]}/3 | {r['next']['answer_bpb']:.2f} | "
            f"{r['next']['held_out_bpb']:.3f} | {b[1]}/3 | {b[2]}/3 | {b[4]}/3 | {b[8]}/3 | "
            f"{r['final']['answer_bpb']:.2f} | {r['final']['held_out_bpb']:.3f} | {later} | "
            f"{r['used_rows'] / r['rows']:.0%} of {r['rows']:,} | {r['seconds']:.0f} |"
        )
    ssm = rows[0][1]["ssm_held_out_bpb"]
    lines += ["", f"The SSM layers alone (no memory): held-out {ssm:.3f} bits per byte, no fact answered."]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{out}.md").write_text(text, encoding="utf-8")
    (RESULTS / f"{out}.json").write_text(json.dumps(dict(rows), indent=1, default=str), encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engram_ff.bench.memory_sweep", description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", help="`default` or key=value,... (repeatable)")
    parser.add_argument(
        "--after", type=int, default=12, help="days after the fact day (default 12; past 13, from TinyShakespeare)"
    )
    parser.add_argument("--base", type=Path, default=Path("fact-night-base.pt"), help="the base model's cache")
    parser.add_argument("--base-steps", type=int, default=400)
    parser.add_argument("--out", default="memory-sweep")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    variants = [(text, parse_variant(text)) for text in args.variant or ["default"]]
    rows = []
    for text, fields in variants:
        rows.append((text, run(fields, args.base, args.base_steps, args.after)))
        r = rows[-1][1]
        print(text, r["next"]["answered"], r["final"]["answered"], round(r["final"]["held_out_bpb"], 3), flush=True)
    command = " ".join(["python -m engram_ff.bench.memory_sweep", *(sys.argv[1:] if argv is None else argv)])
    print(report(rows, args.out, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
