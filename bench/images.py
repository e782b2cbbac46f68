"""Phase 1: Forward-Forward against backprop on MNIST-format images (Fashion-MNIST by default).

FF (both readouts) and a BP MLP of the same shape train on the same data, epochs, batches and seed, each
in a process of its own so that its peak RSS is its own, taking turns epoch by epoch so that both meet
the same load from the rest of the machine. Seconds per epoch count training only; the test error after
each epoch and the final train error are timed apart. Writes bench/results/images*.md and a
PNG of test error per epoch.

    python -m engram_ff.bench.images                   # default preset
    python -m engram_ff.bench.images --quick           # under 2 minutes, a subset
    python -m engram_ff.bench.images --preset hinton --epochs 2   # Hinton's 4x2000 net, timed per epoch
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from engram_ff.bench.common import RESULTS, lockstep, markdown_table, plot_series, stopwatch, write_result
from engram_ff.model.images.bp_mlp import BPMLP, BPMLPConfig
from engram_ff.model.images.ff import pick_device
from engram_ff.model.images.ff_mlp import FFMLP, FFMLPConfig
from engram_ff.model.images.idx import SPLITS, find_file, load_split

DATA_DIR = "/usr/share/datasets/fashion-mnist"


@dataclass
class Setup:
    """One benchmark run's settings, shared by FF and BP."""

    hidden: tuple[int, ...] = (1000, 1000)
    epochs: int = 20
    batch_size: int = 250
    lr: float = 5e-4  # both models; constant for the first half, then linearly down to 0
    goodness: str = "sum"
    loss: str = "softmax"
    theta: float = 2.0
    negatives: str = "model"
    n_negatives: int = 1
    label_scale: float = 1.0
    train_limit: int = 0  # use only the first N training / test images (0: all)
    test_limit: int = 0
    seed: int = 0
    threads: int = 2


PRESETS = {
    "default": Setup(),
    "hinton": Setup(hidden=(2000,) * 4, epochs=60),
    "quick": Setup(hidden=(500, 500), epochs=3, train_limit=20_000, test_limit=5_000),
}


def load_images(data_dir: str, split: str, limit: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, rows*cols) floats in [0, 1] and (N,) labels."""
    images, labels = load_split(data_dir, split)
    if limit:
        images, labels = images[:limit], labels[:limit]
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{data_dir}: {split} labels must be 0..9, found {labels.min()}..{labels.max()}")
    return images.flatten(1).float().div(255).to(device), labels.to(device)


@torch.no_grad()
def error_rates(model, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000) -> dict[str, float]:
    """Percent wrong for each of the model's readouts."""
    wrong: dict[str, int] = {}
    for i in range(0, len(y), chunk):
        for name, pred in model.predict(x[i : i + chunk]).items():
            wrong[name] = wrong.get(name, 0) + (pred != y[i : i + chunk]).sum().item()
    return {name: 100.0 * w / len(y) for name, w in wrong.items()}


def build(kind: str, s: Setup) -> BPMLP | FFMLP:
    if kind == "bp":
        return BPMLP(BPMLPConfig(hidden=s.hidden, lr=s.lr))
    return FFMLP(
        FFMLPConfig(
            hidden=s.hidden,
            goodness=s.goodness,
            loss=s.loss,
            theta=s.theta,
            negatives=s.negatives,
            n_negatives=s.n_negatives,
            label_scale=s.label_scale,
            lr=s.lr,
            readout_lr=s.lr,
        )
    )


def train(kind: str, s: Setup, data_dir: str) -> Iterator[dict]:
    """Train one model ('ff' or 'bp'), yielding after each epoch its training seconds and test errors, and
    after the last epoch its train error too."""
    torch.set_num_threads(s.threads)
    torch.manual_seed(s.seed)
    device = pick_device()
    x, y = load_images(data_dir, "train", s.train_limit, device)
    x_test, y_test = load_images(data_dir, "test", s.test_limit, device)
    model = build(kind, s).to(device)
    order = torch.Generator().manual_seed(s.seed)  # the same batches for both models
    steps, step = s.epochs * -(-len(y) // s.batch_size), 0
    for epoch in range(1, s.epochs + 1):
        perm = torch.randperm(len(y), generator=order).to(device)
        with stopwatch() as train_time:
            for i in range(0, len(y), s.batch_size):
                model.scale_lr(min(1.0, 2.0 * (1.0 - step / steps)))
                batch = perm[i : i + s.batch_size]
                model.train_batch(x[batch], y[batch])
                step += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
        with stopwatch() as eval_time:
            errors = error_rates(model, x_test, y_test)
        shown = "  ".join(f"{name} {e:.2f}%" for name, e in errors.items())
        print(f"[{kind}] epoch {epoch}/{s.epochs}  train {train_time[0]:.1f}s  test error {shown}", flush=True)
        result = {"seconds": train_time[0], "eval_seconds": eval_time[0], "test_error": errors, "device": str(device)}
        if epoch == s.epochs:
            result["train_error"] = error_rates(model, x, y)
        yield result


def run(s: Setup, data_dir: str) -> tuple[dict[str, dict], dict[str, float]]:
    """Train FF and BP epoch by epoch in turn, each in a process of its own -> summaries, peak RSS MiB."""
    epochs: dict[str, list[dict]] = {"ff": [], "bp": []}
    rss: dict[str, float] = {}
    for answers in lockstep(*[(train, (kind, s, data_dir)) for kind in epochs]):
        for kind, (result, peak) in zip(epochs, answers):
            epochs[kind].append(result)
            rss[kind] = peak
    results = {}
    for kind, history in epochs.items():
        seconds = [e["seconds"] for e in history]
        results[kind] = {
            "curves": {name: [e["test_error"][name] for e in history] for name in history[-1]["test_error"]},
            "train_error": history[-1]["train_error"],
            "seconds_per_epoch": sum(seconds) / len(seconds),
            "fastest_epoch": min(seconds),
            "eval_seconds": sum(e["eval_seconds"] for e in history) / len(history),
            "device": history[-1]["device"],
        }
    return results, rss


def report(s: Setup, results: dict[str, dict], rss: dict[str, float], command: str) -> str:
    """The Markdown report: the table, the targets and how they fared, the setup."""
    rows = []
    for kind, r in results.items():
        for name, curve in r["curves"].items():
            rows.append(
                [
                    f"{kind.upper()} ({name})" if kind == "ff" else "BP",
                    f"{curve[-1]:.2f}",
                    f"{min(curve):.2f}",
                    f"{r['train_error'][name]:.2f}",
                    f"{r['seconds_per_epoch']:.1f}",
                    f"{r['fastest_epoch']:.1f}",
                    f"{r['eval_seconds']:.1f}",
                    f"{rss[kind]:.0f}",
                ]
            )
    headers = [
        "model",
        "test error %",
        "best epoch's test error %",
        "train error %",
        "train s/epoch",
        "fastest epoch s",
        "test eval s",
        "peak RSS MiB",
    ]
    bp = results["bp"]["curves"]["bp"][-1]
    ratio = results["ff"]["seconds_per_epoch"] / results["bp"]["seconds_per_epoch"]
    fastest = results["ff"]["fastest_epoch"] / results["bp"]["fastest_epoch"]
    checks = [
        f"- FF seconds per epoch / BP's: {ratio:.2f} (target <= 2): {'met' if ratio <= 2 else 'MISSED'}; "
        f"fastest epochs' ratio {fastest:.2f}"
    ]
    for name, curve in results["ff"]["curves"].items():
        ff = curve[-1]
        met = ff <= 11.0 and ff <= 1.10 * bp
        checks.append(
            f"- FF ({name}) test error {ff:.2f}% vs BP {bp:.2f}% (x{ff / bp:.2f}; target <= 11.0% "
            f"and <= x1.10): {'met' if met else 'MISSED'}"
        )
    setup = ", ".join(f"{k}={v}" for k, v in asdict(s).items())
    return (
        f"# Forward-Forward vs backprop on images\n\n`{command}` on {results['ff']['device']}, "
        f"{s.threads} threads.\n\n{markdown_table(headers, rows)}\n"
        + "\n".join(checks)
        + f"\n\nSetup: {setup}.\nErrors are after the last epoch; train error is on the training set "
        f"used.\n"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engram-ff bench images", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=["default", "hinton"], default="default")
    p.add_argument("--quick", action="store_true", help="a small net on a subset, under 2 minutes")
    p.add_argument("--data-dir", default=DATA_DIR, help="folder with the four MNIST-format IDX files")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    p.add_argument("--seed", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--hidden", type=lambda v: tuple(int(w) for w in v.split("x")), help="e.g. 1000x1000")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--loss", choices=["softmax", "pair"], help='model/losses.py ("multi" before 2026-11-30)')
    p.add_argument("--goodness", choices=["mean", "sum"])
    p.add_argument("--theta", type=float)
    p.add_argument("--negatives", choices=["model", "uniform"], help="how wrong labels are drawn (model/losses.py)")
    p.add_argument("--n-negatives", type=int, help="wrong labels per image (9: all)")
    p.add_argument("--label-scale", type=float)
    p.add_argument("--train-limit", type=int)
    p.add_argument("--test-limit", type=int)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    name = "quick" if args.quick else args.preset
    overrides = {k: v for k, v in vars(args).items() if k in Setup.__dataclass_fields__ and v is not None}
    s = replace(PRESETS[name], **overrides)
    try:
        for split in SPLITS.values():  # fail at once, before any worker starts, if a file is missing
            for kind in ("images-idx3", "labels-idx1"):
                find_file(args.data_dir, f"{split}-{kind}-ubyte")
        results, rss = run(s, args.data_dir)
    except (OSError, ValueError) as e:  # missing or malformed data, named in the message
        print(f"engram-ff bench images: {e}", file=sys.stderr)
        return 2
    stem = "images" if name == "default" else f"images-{name}"
    command = "python -m engram_ff.bench.images " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(s, results, rss, command.strip())
    curves = {f"FF ({n})": c for n, c in results["ff"]["curves"].items()} | {"BP": results["bp"]["curves"]["bp"]}
    plot_series(args.results_dir / f"{stem}.png", curves, "epoch", "test error %", f"Test error per epoch ({name})")
    write_result(f"{stem}.md", text + f"\n![test error per epoch]({stem}.png)\n", args.results_dir)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
