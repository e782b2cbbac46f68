"""The match model (model/match.py) alone: what it takes off a new day's cost, read by the model of the night before.

It reads the checkpoints of a bench learning run kept with --data, at most five nights so that the daemon kept
every night's checkpoint (keep_checkpoints), and makes the run's days again from the same seed and sizes:

    engram-ff bench learning --nights 5 --checkpoints 0 --trainer ff --data DIR --stem learning-match-sweep
    python -m engram_ff.bench.match_sweep DIR --variant none --variant default --variant minimum=6

Night n's checkpoint scores day n + 1 as bench learning's prequential column does (the whole day as one stream),
with the match model of each variant over the same layers and memory, beside each compressor's cost of the day
given all the days before it. A variant is `none` (no match model), `default`, or key=value,... over minimum
(the match lengths tried, longest first, colon-separated), prior (what the model's own p(c*) counts for in a
cell) and history (bytes of the stream searched).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from engram_ff.bench.common import RESULTS, markdown_table, plot_series, write_result
from engram_ff.bench.learning import FACTS, compressor_bpb, load_facts, make_days
from engram_ff.model.checkpoint import load_model
from engram_ff.model.generate import generate
from engram_ff.model.match import MatchModel, left_out
from engram_ff.model.train import EVAL_CHUNK, evaluate_nats
from engram_ff.state.db import open_db

KEYS: dict[str, Callable[[str], object]] = {
    "minimum": lambda v: tuple(int(n) for n in v.split(":")),
    "prior": float,
    "history": int,
}


def parse_variant(text: str) -> dict:
    if text in ("none", "default"):
        return {"name": text}
    fields: dict = {"name": text}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or key not in KEYS:
            raise SystemExit(f"variant {text!r}: each part is KEY=VALUE with KEY one of {', '.join(KEYS)}")
        fields[key] = KEYS[key](value)
    return fields


def checkpoints(data: Path, method: str) -> list[Path]:
    """The model of the night before for nights 2, 3, ...: each night's final checkpoint in turn, or where the gate
    rejected a night, the one before it (as the daemon keeps it); an error where a night's file was pruned."""
    folders = sorted(p for p in data.iterdir() if p.is_dir() and p.name.split("-", 1)[-1] == method)
    if len(folders) != 1:
        raise SystemExit(f"{data}: no folder of method {method!r} (bench learning names them N-METHOD)")
    db = open_db(folders[0] / "data" / "engram-ff.db")
    try:
        rows = db.execute("SELECT path, status FROM checkpoints WHERE kind = 'final' ORDER BY id").fetchall()
    finally:
        db.close()
    if any(status not in ("good", "rejected") for _, status in rows) or rows[0][1] != "good":
        raise SystemExit(f"{data}: a night's checkpoint was pruned; run at most 5 nights (keep_checkpoints)")
    paths: list[Path] = []
    for path, status in rows:
        paths.append(Path(path) if status == "good" else paths[-1])
    return paths


@torch.inference_mode()
def log_probs(model, text: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """The day as one stream through the layers and the memory: (bytes [1, n], log p [1, n, 256])."""
    x = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()[None]
    out, state = [], None
    with left_out(model):
        for i in range(0, x.shape[1], 1024):
            logits, state = model(x[:, i : i + 1024], state)
            out.append(F.log_softmax(logits.float(), -1))
    return x, torch.cat(out, 1)


def bpb(x: torch.Tensor, lp: torch.Tensor, variant: dict) -> float:
    if variant["name"] != "none":
        rule = MatchModel(**{k: v for k, v in variant.items() if k != "name"})
        state, chunks = rule.empty_state(1), []
        for i in range(0, x.shape[1], 1024):
            adjusted, state = rule(x[:, i : i + 1024], lp[:, i : i + 1024], state)
            chunks.append(adjusted)
        lp = torch.cat(chunks, 1)
    nats = -lp[0, :-1].gather(-1, x[0, 1:, None]).sum().item()
    return nats / (x.shape[1] - 1) / math.log(2)


def costs(model, text: bytes, generated: int = 2000) -> list[list]:
    """What the match model costs, on one thread: seconds to score `text` as `evaluate_nats` does, in chunks of
    1 kB and of its default 4 kB, and bytes a second generated one at a time; with it and without it."""
    match, rows = model.match, []
    torch.set_num_threads(1)  # as the daemon's helpers and `ask` read: one stream, one core
    for label, rule in (("with the match model", MatchModel()), ("without", None)):  # a checkpoint may predate it
        model.match = rule
        seconds = []
        for chunk in (1024, EVAL_CHUNK):
            started = time.perf_counter()
            evaluate_nats(model, text, seq_len=chunk)
            seconds.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in generate(model, text[:200], generated, 0.8, torch.Generator().manual_seed(1)):
            pass
        rate = generated / (time.perf_counter() - started)
        rows.append([label, f"{seconds[0]:.2f}", f"{seconds[1]:.2f}", f"{rate:,.0f}"])
    model.match = match
    torch.set_num_threads(2)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engram_ff.bench.match_sweep", description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="a bench learning run's --data folder")
    parser.add_argument("--variant", action="append", type=parse_variant, required=True)
    parser.add_argument("--method", default="ff", help="the run's method whose checkpoints to read (default ff)")
    parser.add_argument("--day-kb", type=float, default=35.0, help="as the run had it (default 35)")
    parser.add_argument("--seed", type=int, default=0, help="as the run had it (default 0)")
    parser.add_argument("--fact-nights", default="2", help="as the run had it (default 2)")
    parser.add_argument("--note", action="append", default=[], help="a line for the report: how DIR was made")
    parser.add_argument("--out", default="match-sweep")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    paths = checkpoints(args.data, args.method)
    fact_nights = [int(n) for n in args.fact_nights.split(",")]
    days = make_days(len(paths) + 1, round(args.day_kb * 1000), load_facts(FACTS), fact_nights, args.seed)
    codes, notes = compressor_bpb([d.text for d in days])
    rows = []
    for night, path in enumerate(paths, start=2):
        x, lp = log_probs(load_model(path).model.eval(), days[night - 1].text)
        row = {"night": night, **{v["name"]: bpb(x, lp, v) for v in args.variant}, **codes[night - 1]}
        rows.append(row)
        print(f"night {night}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k != "night"), flush=True)
    timing = costs(load_model(paths[-1]).model.eval(), b"".join(d.text for d in days))
    names = [v["name"] for v in args.variant] + list(codes[0])
    means = {n: sum(r[n] for r in rows) / len(rows) for n in names}
    table = markdown_table(
        ["night", *names],
        [[r["night"], *(f"{r[n]:.3f}" for n in names)] for r in rows]
        + [["**mean**", *(f"**{means[n]:.3f}**" for n in names)]],
    )
    figure = plot_series(
        args.results / f"{args.out}.png",
        {n: [r[n] for r in rows] for n in names},
        f"night - 1 (night {rows[0]['night']} is 1)",
        "bits per byte of the new day",
        "the match model over the night before's model",
    )
    given = sys.argv[1:] if argv is None else argv
    shown = [a for i, a in enumerate(given) if a != "--note" and (i == 0 or given[i - 1] != "--note")]
    command = shlex.join(["python", "-m", "engram_ff.bench.match_sweep", *shown])  # the notes are listed below
    text = (
        "# The match model alone: a new day read by the model of the night before\n\n"
        f"`{command}`\n\n"
        "Bits per byte of each day, the whole day read as one stream by the checkpoint of the night before (the "
        "layers and the memory as the run left them), under each variant of the match model (bench/match_sweep.py "
        "says what a variant is); each compressor's cost of the day given all the days before it. "
        + " ".join(notes)
        + "\n\n"
        + "".join(f"- {note}\n" for note in args.note)
        + f"\n{table}\n![bits per byte by night]({figure.name})\n"
        + "\n## What it costs\n\n"
        + f"The last checkpoint, one thread: seconds to score all {len(days)} days ("
        + f"{sum(len(d.text) for d in days) / 1000:.0f} kB) as one text, as `evaluate_nats` scores the gate's and the "
        + "probes' texts, in chunks of 1 kB and 4 kB (its default); and bytes a second generated one at a time after "
        + "200 bytes of the first day, as `ask` and `generate` do.\n\n"
        + markdown_table(["", "score, 1 kB chunks (s)", "score, 4 kB chunks (s)", "generate (bytes/s)"], timing)
    )
    print(table)
    write_result(f"{args.out}.json", json.dumps({"nights": rows, "costs": timing}, indent=1), args.results)
    print(write_result(f"{args.out}.md", text, args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
