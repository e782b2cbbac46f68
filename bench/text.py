"""Text benchmark: FF-SSM against backprop and the baselines on TinyShakespeare, same CPU budget.

    python -m engram_ff.bench.text                        # every model, 10 CPU-minutes each (variants a quarter)
    python -m engram_ff.bench.text --quick                # ~1-2 minute smoke run
    python -m engram_ff.bench.text --models ff-ssm --json a.json   # one model, raw results only
    python -m engram_ff.bench.text --from-json a.json b.json       # merge runs and render the report

Budgets are CPU time (process CPU seconds / threads), not wall time, so helpers sharing the machine
slow a run down without changing what it learns. Each model trains in a fresh process (its peak RSS
is its own). Writes bench/results/text.md and text.png (validation loss against training time).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engram_ff.bench.common import DATA, save_figure

RESULTS = Path(__file__).resolve().parent / "results"
TINY_SHAKESPEARE = DATA / "tinyshakespeare.txt"
THREADS = 2
CURVE_BYTES = 20_000  # validation bytes for the loss-against-time curve (the final figure uses all)
SAMPLE_PROMPT = b"ROMEO:\n"


def model_specs() -> dict[str, dict]:
    """name -> how to build it; `budget` is a fraction of the run's budget."""
    return {
        "ff-ssm": {
            "model": "ssm",
            "trainer": "ff",
            "budget": 1.0,
            "about": "FF, linear goodness, softmax over all 256 candidates per layer (main)",
        },
        "bp-ssm": {
            "model": "ssm",
            "trainer": "bp",
            "budget": 1.0,
            "about": "same stack, end-to-end backprop on the final cross-entropy",
        },
        "ff-window": {
            "model": "window",
            "trainer": "ff",
            "budget": 1.0,
            "about": "Phase 2: FF MLP over the previous 16 bytes, same heads and losses",
        },
        "ff-ssm-relu": {
            "model": "ssm",
            "trainer": "ff",
            "budget": 0.25,
            "goodness": "relu",
            "about": "nonlinear goodness sum relu(q + E[c])^2, softmax over 256",
        },
        "ff-ssm-pair": {
            "model": "ssm",
            "trainer": "ff",
            "budget": 0.25,
            "trainer_args": {"loss": "pair", "negatives": "model", "n_negatives": 16},
            "about": "Hinton-style pair loss, 16 hard negatives sampled from the layers below",
        },
        "ff-ssm-sampled": {
            "model": "ssm",
            "trainer": "ff",
            "budget": 0.25,
            "trainer_args": {"loss": "sampled", "negatives": "unigram", "n_negatives": 16},
            "about": "softmax over the true byte + 16 unigram negatives, log q corrected",
        },
    }


def load_text() -> tuple[bytes, bytes]:
    data = TINY_SHAKESPEARE.read_bytes()
    n = int(len(data) * 0.9)
    return data[:n], data[n:]


def cpu_clock() -> float:
    return time.process_time() / THREADS


def build(spec: dict, lr: float | None = None):
    """The model and its trainer; lr None: the trainer's default, its best in a sweep."""
    from dataclasses import replace

    from engram_ff.model.lm import FFLM, PRESETS
    from engram_ff.model.train import BPTrainer, FFTrainer
    from engram_ff.model.window_mlp import WindowConfig, WindowMLP

    model: FFLM | WindowMLP
    if spec["model"] == "window":
        model = WindowMLP(WindowConfig())
    else:
        # the layers FF and BP train: not the match model, which has no weights and would copy for both alike
        model = FFLM(replace(PRESETS["daemon"], goodness=spec.get("goodness", "linear"), match=False))
    rate: dict[str, Any] = {} if lr is None else {"lr": lr}
    if spec["trainer"] == "bp":
        return model, BPTrainer(model, **rate)
    return model, FFTrainer(model, **rate, **spec.get("trainer_args", {}))


BATCH, SEQ = 16, 256  # learning rates: each trainer's default, its best in a sweep (see model/train.py)


def run_model(name: str, budget_s: float, lr: float | None = None) -> dict:
    """Train one model for budget_s CPU-seconds in this process; everything the report needs."""
    import torch

    from engram_ff.model.generate import generate
    from engram_ff.model.train import byte_batches, evaluate_nats, train

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    spec = model_specs()[name]
    train_text, val_text = load_text()
    model, trainer = build(spec, lr)
    curve: list[tuple[float, float]] = [(0.0, evaluate_nats(model, val_text, max_bytes=CURVE_BYTES))]
    every = budget_s / 20

    def on_step(step, losses, result):
        if result.seconds >= len(curve) * every:
            curve.append((result.seconds, evaluate_nats(model, val_text, max_bytes=CURVE_BYTES)))

    batches = byte_batches(train_text, BATCH, SEQ, torch.Generator().manual_seed(0))
    result = train(trainer, batches, budget_s, 10**9, on_step=on_step, clock=cpu_clock)
    curve.append((result.seconds, evaluate_nats(model, val_text, max_bytes=CURVE_BYTES)))
    val = evaluate_nats(model, val_text)

    n_gen = 3000
    torch.set_num_threads(1)  # one stream: thread hand-offs cost more than they save at batch 1
    start = time.perf_counter()
    generated = b"".join(generate(model, SAMPLE_PROMPT, n_gen, 0.8, torch.Generator().manual_seed(1)))
    gen_bps = n_gen / (time.perf_counter() - start)
    return {
        "name": name,
        "about": spec["about"],
        "budget_s": budget_s,
        "steps": result.steps,
        "train_seconds": result.seconds,
        "train_bytes": result.bytes,
        "train_bytes_per_s": result.bytes / result.seconds,
        "layer_losses": result.losses,
        "val_nats": val,
        "val_bits": val / math.log(2),
        "curve": curve,
        "gen_bytes_per_s": gen_bps,
        "sample": (SAMPLE_PROMPT + generated[:300]).decode("utf-8", "replace"),
        "params": sum(p.numel() for p in model.parameters()),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def memory_probe(trainer: str, n_layers: int, seq_len: int) -> dict:
    """Peak RSS of this (fresh) process after building the model and two training steps at batch 1."""
    from dataclasses import replace

    import torch

    from engram_ff.model.lm import FFLM, PRESETS
    from engram_ff.model.train import BPTrainer, FFTrainer

    torch.set_num_threads(THREADS)
    model = FFLM(replace(PRESETS["daemon"], n_layers=n_layers))
    t = BPTrainer(model) if trainer == "bp" else FFTrainer(model)
    x = torch.randint(0, 256, (1, seq_len))
    for _ in range(2):  # the second step runs with the optimiser state in place
        t.train_step(x, x)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"trainer": trainer, "n_layers": n_layers, "seq_len": seq_len, "peak_mib": peak}


def step_speed(rounds: int = 40, steps: int = 5) -> dict:
    """Training bytes per CPU-second of FF and BP on the daemon preset, measured in ONE process that
    alternates blocks of `steps` steps between them, so both meet the same machine state; the separate
    runs' bytes/s also carry whatever else the machine did during each. The first round is warm-up."""
    import torch

    from engram_ff.model.train import byte_batches

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    batches = byte_batches(load_text()[0], BATCH, SEQ, torch.Generator().manual_seed(0))
    trainers = {"ff": build(model_specs()["ff-ssm"])[1], "bp": build(model_specs()["bp-ssm"])[1]}
    seconds = dict.fromkeys(trainers, 0.0)
    for round_ in range(rounds + 1):
        for name, trainer in trainers.items():
            for _ in range(steps):
                x, y = next(batches)
                start = cpu_clock()
                trainer.train_step(x, y)
                if round_:
                    seconds[name] += cpu_clock() - start
    return {f"{name}_bytes_per_s": rounds * steps * BATCH * SEQ / s for name, s in seconds.items()}


def in_fresh_process(function: str, *args) -> dict:
    """Run bench.text.<function>(*args) in a new interpreter; its JSON result."""
    code = (
        f"import json, sys; from bench.text import {function}; print(json.dumps({function}(*json.loads(sys.argv[1]))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    if out.returncode != 0:
        raise RuntimeError(f"{function}{args} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def scan_timings(lengths: list[int]) -> list[dict]:
    """Forward+backward time of the associative scan against a Python loop over time."""
    import torch

    from engram_ff.model.ssm import scan, scan_loop

    torch.set_num_threads(THREADS)
    rows = []
    for T in lengths:
        u = torch.randn(8, T, 128, requires_grad=True)
        a = torch.rand(128) * 0.5 + 0.49
        row: dict[str, float] = {"T": T}
        for label, fn in (("scan_ms", scan), ("loop_ms", scan_loop)):
            fn(u, a).sum().backward()  # warm up
            start = time.perf_counter()
            for _ in range(3):
                fn(u, a).square().sum().backward()
            row[label] = (time.perf_counter() - start) / 3 * 1e3
        rows.append(row)
    return rows


def render(results: dict, out_dir: Path) -> str:
    from engram_ff.bench.common import markdown_table

    models = results.get("models", {})
    lines = ["# Text benchmark: TinyShakespeare, 90/10 split, bytes\n"]
    if models:
        bp = models.get("bp-ssm", {}).get("val_nats")
        rows = []
        for r in models.values():
            ratio = f"{r['val_nats'] / bp:.3f}" if bp else "-"
            rows.append(
                [
                    r["name"],
                    f"{r['budget_s']:.0f}",
                    r["steps"],
                    f"{r['val_nats']:.3f}",
                    f"{r['val_bits']:.3f}",
                    ratio,
                    f"{r['train_bytes_per_s']:,.0f}",
                    f"{r['peak_rss_mib']:.0f}",
                    f"{r['gen_bytes_per_s']:,.0f}",
                    f"{r['params']:,}",
                ]
            )
        lines.append(
            "Budgets are CPU seconds (process CPU time / 2 threads). Validation: all of the last "
            "10%, read as one stream in recurrent mode.\n"
        )
        lines.append(
            markdown_table(
                [
                    "model",
                    "CPU s",
                    "steps",
                    "val nats/byte",
                    "val bits/byte",
                    "/ BP",
                    "train bytes/s",
                    "peak RSS MiB",
                    "gen bytes/s",
                    "params",
                ],
                rows,
            )
        )
        lines.append("\n" + "\n".join(f"- `{r['name']}`: {r['about']}" for r in models.values()) + "\n")
        lines.append("![validation loss against training CPU time](text.png)\n")
        plot_curves(models, out_dir / "text.png")
    if results.get("memory"):
        mem = {(m["trainer"], m["n_layers"], m["seq_len"]): m for m in results["memory"] if "peak_mib" in m}
        keys = sorted({(d, s) for _, d, s in mem})
        rows = [
            [
                d,
                s,
                f"{mem[('ff', d, s)]['peak_mib']:.0f}",
                f"{mem[('bp', d, s)]['peak_mib']:.0f}",
                f"{mem[('ff', d, s)]['peak_mib'] / mem[('bp', d, s)]['peak_mib']:.2f}",
            ]
            for d, s in keys
            if ("ff", d, s) in mem and ("bp", d, s) in mem
        ]
        lines.append("\n## Peak training memory (batch 1, a fresh process for each point)\n")
        lines.append(
            "Peak resident set (ru_maxrss) of a process that builds the model and takes two training "
            "steps: torch itself and the model are included (about 320 MiB at 2 layers x 256), so "
            "the ratio understates FF's saving on activations. tracemalloc cannot see torch's C++ "
            "allocations, hence a fresh process per point.\n"
        )
        lines.append(markdown_table(["layers", "seq len", "FF peak MiB", "BP peak MiB", "FF / BP"], rows))
    targets = target_rows(results)
    if targets:
        lines.append("\n## Targets\n")
        lines.append(markdown_table(["target", "measured", "met"], targets))
    if results.get("scan"):
        lines.append("\n## Associative scan against a Python loop over time (forward + backward, B=8, N=128)\n")
        lines.append(
            markdown_table(
                ["T", "scan ms", "loop ms", "speed-up"],
                [
                    [r["T"], f"{r['scan_ms']:.1f}", f"{r['loop_ms']:.1f}", f"{r['loop_ms'] / r['scan_ms']:.1f}x"]
                    for r in results["scan"]
                ],
            )
        )
    if models:
        lines.append("\n## Samples (temperature 0.8, prompt `ROMEO:`)\n")
        for r in models.values():
            lines.append(f"### {r['name']}\n\n```\n{r['sample']}\n```\n")
    return "\n".join(lines)


def target_rows(results: dict) -> list[list[str]]:
    """The issue's targets, checked against whatever this run measured."""
    models, rows = results.get("models", {}), []
    ff, bp, window = models.get("ff-ssm"), models.get("bp-ssm"), models.get("ff-window")

    def row(target: str, measured: str, ok: bool) -> None:
        rows.append([target, measured, "yes" if ok else "**no**"])

    if ff and bp:
        ratio = ff["val_nats"] / bp["val_nats"]
        row("FF-SSM val <= 1.05 x BP-SSM", f"{ff['val_nats']:.3f} / {bp['val_nats']:.3f} = {ratio:.3f}", ratio <= 1.05)
        speed = ff["train_bytes_per_s"] / bp["train_bytes_per_s"]
        row(
            "FF train bytes/s >= BP (the two runs)",
            f"{ff['train_bytes_per_s']:,.0f} vs {bp['train_bytes_per_s']:,.0f} ({speed:.2f}x)",
            speed >= 1,
        )
    if results.get("speed"):
        ff_bps, bp_bps = results["speed"]["ff_bytes_per_s"], results["speed"]["bp_bytes_per_s"]
        row(
            "FF train bytes/s >= BP (interleaved in one process)",
            f"{ff_bps:,.0f} vs {bp_bps:,.0f} ({ff_bps / bp_bps:.2f}x)",
            ff_bps >= bp_bps,
        )
    if ff:
        row(
            f"FF-SSM val <= 1.75 nats/byte in {ff['budget_s']:.0f} CPU s",
            f"{ff['val_nats']:.3f}",
            ff["val_nats"] <= 1.75,
        )
        row("generation >= 5,000 bytes/s, one stream", f"{ff['gen_bytes_per_s']:,.0f}", ff["gen_bytes_per_s"] >= 5000)
    if ff and window:
        row(
            "FF-SSM well ahead of the FF window MLP",
            f"{ff['val_nats']:.3f} vs {window['val_nats']:.3f}",
            ff["val_nats"] < window["val_nats"] - 0.1,
        )
    mem = {
        (m["trainer"], m["n_layers"], m["seq_len"]): m["peak_mib"] for m in results.get("memory", []) if "peak_mib" in m
    }
    if ("ff", 8, 4096) in mem and ("bp", 8, 4096) in mem:
        ratio = mem[("ff", 8, 4096)] / mem[("bp", 8, 4096)]
        row(
            "FF peak training memory <= 0.6 x BP at 8 layers, seq 4096",
            f"{mem[('ff', 8, 4096)]:.0f} / {mem[('bp', 8, 4096)]:.0f} MiB = {ratio:.2f}",
            ratio <= 0.6,
        )
    return rows


def plot_curves(models: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in models.values():
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, label=r["name"])
    ax.set(
        xlabel="training CPU seconds (2 threads)",
        ylabel=f"validation nats/byte (first {CURVE_BYTES:,} bytes)",
        title="TinyShakespeare: validation loss against training time",
        ylim=(1.3, 3.5),
    )
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engram-ff bench text", description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=600, help="CPU seconds per model (variants get a fraction)")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 s per model, small memory grid")
    p.add_argument("--models", help=f"comma-separated subset of {','.join(model_specs())}")
    p.add_argument("--skip-memory", action="store_true", help="leave out the memory and scan tables")
    p.add_argument("--lr", type=float, help="learning rate for every model (default: each trainer's own)")
    p.add_argument("--json", metavar="OUT", help="also dump the raw results here")
    p.add_argument("--from-json", nargs="+", metavar="FILE", help="merge earlier --json runs and render only")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.from_json:
        results: dict = {"models": {}, "memory": [], "scan": []}
        for f in args.from_json:
            part = json.loads(Path(f).read_text())
            results["models"].update(part.get("models", {}))
            results["memory"] += part.get("memory", [])
            results["scan"] = part.get("scan") or results["scan"]
            results["speed"] = part.get("speed") or results.get("speed")
    else:
        names = args.models.split(",") if args.models else list(model_specs())
        unknown = set(names) - set(model_specs())
        if unknown:
            build_parser().error(f"unknown models {sorted(unknown)}; choose from {', '.join(model_specs())}")
        budget = 10 if args.quick else args.budget
        results = {"models": {}, "memory": [], "scan": []}
        if {"ff-ssm", "bp-ssm"} <= set(names):
            results["speed"] = in_fresh_process("step_speed", *((2, 2) if args.quick else ()))
            print(
                "interleaved steps: FF {ff_bytes_per_s:,.0f} B/s, BP {bp_bytes_per_s:,.0f} B/s".format(
                    **results["speed"]
                ),
                flush=True,
            )
        for name in names:
            r = in_fresh_process("run_model", name, budget * model_specs()[name]["budget"], args.lr)
            results["models"][name] = r
            print(
                f"{name:15s} val {r['val_nats']:.3f} nats/byte ({r['val_bits']:.3f} bits)  "
                f"train {r['train_bytes_per_s']:,.0f} B/s  gen {r['gen_bytes_per_s']:,.0f} B/s  "
                f"RSS {r['peak_rss_mib']:.0f} MiB",
                flush=True,
            )
        if not args.skip_memory:
            depths, lengths = ((2, 8), (256, 4096)) if args.quick else ((2, 4, 8), (256, 1024, 4096))
            for d in depths:
                for s in lengths:
                    for trainer in ("ff", "bp"):
                        results["memory"].append(in_fresh_process("memory_probe", trainer, d, s))
            results["scan"] = scan_timings([256, 1024] if args.quick else [256, 1024, 4096])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    report = render(results, args.results_dir)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "text.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
