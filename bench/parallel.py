"""`engram-ff bench parallel`: training on every core, for FF and BP: data parallelism, FF's layer pipeline
and torch's pipelining for BP, in bytes/s and in validation loss at equal wall-clock time.

    engram-ff bench parallel            # the full run: about 50 minutes on 2 cores (bench/results/parallel.md, .png)
    engram-ff bench parallel --quick    # about 3 minutes, a smoke run (parallel-quick.md, .png)

1. Throughput, interleaved: every setup (one process with 1 and 2 threads, 2 data-parallel ranks, a
   2-stage pipeline) is started at once and they take turns, a block of steps each, round after round,
   so that whatever else the machine does falls on all of them alike. A block's speed is its steady
   pace: the time between step ends on the rank that finishes the batches (rank 0, or the last stage's),
   leaving out as many steps as the pipe has stages (one without) at each end of the block. A night is
   one long run, so a pipeline's fill and drain are not charged to every block; nor are they counted in
   its favour: with more processes than cores, a filling or draining pipe runs its few busy stages
   faster than it can for long. The same for one process alone with 2 to 16 rows (how many rows keep a
   core busy: daemon/ranks.py's MIN_ROWS_PER_RANK).
2. Validation nats/byte on TinyShakespeare's last 10 % after equal WALL-clock budgets (150 s and
   600 s), each trainer in its fastest setup of part 1, one run after another; the learning rate anneals
   over the budget as the daemon's does.
3. Scaling: 1 to 4 processes for 3, 4 and 8 layers, data parallelism against FF's pipeline (and both,
   stages x replicas) and against torch's pipelining for BP, one setup at a time. Rows with more
   processes x threads than usable cores are labelled oversubscribed.
4. The systemd units' exposure (`systemd-analyze security --offline=true`), which the ranks' loopback
   changes.

Daemon preset (width 128), batch 16 x 256 bytes (3 ranks take 5 rows each: 16 does not split in 3),
each trainer at its default learning rate, OMP_WAIT_POLICY=PASSIVE.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from engram_ff.bench.common import DATA, RESULTS, markdown_table, save_figure

SEQ = 256
ROWS = 16
TINY_SHAKESPEARE = DATA / "tinyshakespeare.txt"


@dataclass(frozen=True)
class Setup:
    trainer: str  # "ff" or "bp"
    layers: int = 3
    ranks: int = 1  # data-parallel replicas (of each stage, in a pipeline)
    stages: int = 1  # > 1: FF's layer pipeline, or torch's pipelining for BP
    threads: int = 1  # torch threads per process
    rows: int = ROWS  # the global batch
    micro_batches: int = 4  # BP's pipeline only

    @property
    def processes(self) -> int:
        return self.ranks * self.stages

    @property
    def cores(self) -> int:
        return self.processes * self.threads

    @property
    def label(self) -> str:
        name = self.trainer.upper()
        if self.stages > 1 and self.trainer == "bp":
            return f"{name}, torch pipelining, {self.stages} stages x {self.micro_batches} micro-batches"
        if self.stages > 1:
            cut = " / ".join(_span(r) for r in _split(self.layers, self.stages))
            each = f" x {self.ranks} replicas of {self.rows // self.ranks} rows" if self.ranks > 1 else ""
            return f"{name}, layer pipeline, {self.stages} stages (layers {cut}){each}"
        if self.ranks > 1:
            return f"{name}, data parallel, {self.ranks} ranks x {self.rows // self.ranks} rows"
        return f"{name}, one process, {self.threads} thread{'s' if self.threads > 1 else ''}, {self.rows} rows"


def _split(n_layers: int, stages: int) -> list[range]:
    from engram_ff.bench.ff_pipeline import split_layers

    return split_layers(n_layers, stages)


def _span(layers: range) -> str:
    return f"{layers.start}" if len(layers) == 1 else f"{layers.start}-{layers.stop - 1}"


def load_text() -> tuple[bytes, bytes]:
    data = TINY_SHAKESPEARE.read_bytes()
    n = int(len(data) * 0.9)
    return data[:n], data[n:]


# --- one process of a setup ------------------------------------------------------------------------
class Runner:
    """This rank's part of a setup: its model (the same initial weights everywhere), its trainer or stage."""

    def __init__(self, setup: Setup, rank: int):
        import torch

        from engram_ff.model.lm import FFLM, PRESETS
        from engram_ff.model.parallel import Replicas
        from engram_ff.model.train import TRAINERS, byte_batches

        torch.manual_seed(0)
        self.setup, self.rank = setup, rank
        self.model = FFLM(replace(PRESETS["daemon"], n_layers=setup.layers))
        self.batches = byte_batches(load_text()[0], setup.rows, SEQ, torch.Generator().manual_seed(0))
        self.replicas = self.pipe = self.bp_pipe = None
        if setup.stages > 1 and setup.trainer == "ff":
            from engram_ff.bench.ff_pipeline import build

            self.pipe = build(self.model, rank, setup.stages, setup.ranks)
        elif setup.stages > 1:
            from engram_ff.bench.bp_pipeline import BPPipeline

            self.bp_pipe = BPPipeline(self.model, rank, setup.stages, setup.micro_batches)
        else:
            self.trainer = TRAINERS[setup.trainer](self.model)
            if setup.ranks > 1:
                self.replicas = Replicas(rank, setup.ranks)
                self.trainer.distribute(self.replicas)

    def block(self, steps: int) -> list[float]:
        """`steps` training steps at a constant learning rate; time.monotonic() at the end of each."""
        if self.pipe is not None:
            from engram_ff.bench.ff_pipeline import run

            self.pipe.step_ends = []
            run(self.pipe, self.batches, steps, schedule=None)
            return self.pipe.step_ends
        ends = []
        for _ in range(steps):
            x, y = next(self.batches)
            if self.bp_pipe is not None:
                self.bp_pipe.step(x, y)
            else:
                if self.replicas is not None:
                    x, y = self.replicas.shard(x), self.replicas.shard(y)
                self.trainer.train_step(x, y)
            ends.append(time.monotonic())
        return ends

    def peak_rss(self, _=None) -> float:
        """This process's peak resident memory so far, MiB."""
        from engram_ff.bench.common import peak_rss_mib

        return peak_rss_mib()

    def train(self, budget_s: float) -> dict:
        """Train for budget_s seconds of wall time as the daemon does (the lr annealed over the budget); the
        weights this rank holds for the report (the union over the stages is the model)."""
        from engram_ff.model.train import train

        start = time.monotonic()
        if self.pipe is not None:
            from engram_ff.bench.ff_pipeline import layer_state, run

            steps = run(self.pipe, self.batches, 10**9, budget_s=budget_s)
            state = layer_state(self.model, self.pipe.layers) if self.pipe.replica == 0 else None
        elif self.bp_pipe is not None:
            raise ValueError("torch's pipelining is measured for speed only")
        else:
            steps = train(self.trainer, self.batches, budget_s, 10**9, replicas=self.replicas).steps
            state = self.model.state_dict() if self.rank == 0 else None
        return {"steps": steps, "seconds": time.monotonic() - start, "state": state}


def serve(setup: Setup, rank: int, store: str, conn) -> None:
    """A process of a setup: join its ranks, then answer the coordinator's commands until told to stop."""
    import torch

    from engram_ff.model.parallel import Replicas

    torch.set_num_threads(setup.threads)
    replicas = None
    try:
        if setup.processes > 1:
            replicas = Replicas.join(f"file://{store}", rank, setup.processes, loopback=True)
        runner = Runner(setup, rank)
        conn.send(("ready", None))
        while True:
            command, arg = conn.recv()
            if command == "stop":
                break
            conn.send(("ok", getattr(runner, command)(arg)))
    except Exception as exc:  # reported to the coordinator, which stops the benchmark with it
        conn.send(("error", f"rank {rank} of {setup.label}: {type(exc).__name__}: {exc}"))
    finally:
        if replicas is not None:
            replicas.close()


class Group:
    """The running processes of one setup, waiting for commands."""

    def __init__(self, setup: Setup, folder: str):
        ctx = multiprocessing.get_context("spawn")
        self.setup = setup
        store = os.path.join(folder, f"store-{time.monotonic_ns()}")  # FileStore wants a path not there yet
        self.links, self.procs = [], []
        for rank in range(setup.processes):
            link, theirs = ctx.Pipe()
            proc = ctx.Process(target=serve, args=(setup, rank, store, theirs), daemon=True)
            proc.start()
            self.links.append(link)
            self.procs.append(proc)
        self._answers()  # ready

    def ask(self, command: str, arg=None) -> list:
        for link in self.links:
            link.send((command, arg))
        return self._answers()

    def _answers(self) -> list:
        answers = []
        for link in self.links:
            status, value = link.recv()
            if status == "error":
                raise RuntimeError(value)
            answers.append(value)
        return answers

    def pace(self, steps: int) -> tuple[int, float]:
        """A block of `steps` steps: its steady (steps, seconds) on the rank that finishes the batches (rank 0,
        or the last stage's first replica)."""
        reporter = (self.setup.stages - 1) * self.setup.ranks if self.setup.trainer == "ff" else 0
        return pace(self.ask("block", steps)[reporter], skip=max(1, self.setup.stages))

    def close(self) -> None:
        for link in self.links:
            link.send(("stop", None))
        for proc in self.procs:
            proc.join(30)


def pace(ends: list[float], skip: int) -> tuple[int, float]:
    """(steps, seconds) of a block in steady state: between the step ends, `skip` steps in from each end."""
    middle = ends[skip : len(ends) - skip]
    return len(middle) - 1, middle[-1] - middle[0]


# --- part 1: throughput, interleaved ---------------------------------------------------------------
def interleaved(setups: list[Setup], rounds: int, steps: int, folder: str, rss: dict | None = None):
    """Train bytes/s of each setup, all alive at once, taking turns a block at a time (the first round is
    warm-up), the order rotated every round; into `rss`, the peak MiB of each of its processes."""
    groups = [Group(s, folder) for s in setups]
    done = {s: [0, 0.0] for s in setups}
    try:
        for round_ in range(rounds + 1):
            order = groups[round_ % len(groups) :] + groups[: round_ % len(groups)]
            for group in order:
                n, seconds = group.pace(steps)
                if round_:
                    done[group.setup][0] += n
                    done[group.setup][1] += seconds
                print(f"  round {round_}: {group.setup.label}: {steps} steps", flush=True)
        if rss is not None:
            rss.update({group.setup: group.ask("peak_rss") for group in groups})
    finally:
        for group in groups:
            group.close()
    return {s: n * s.rows * SEQ / seconds for s, (n, seconds) in done.items()}


# --- part 2: validation at equal wall clock --------------------------------------------------------
def validation(setup: Setup, budget_s: float, folder: str) -> dict:
    """Train one setup for budget_s wall seconds, then its validation nats/byte (the whole last 10 %)."""
    import torch

    from engram_ff.model.lm import FFLM, PRESETS
    from engram_ff.model.train import evaluate_nats

    group = Group(setup, folder)
    try:
        answers = group.ask("train", budget_s)
    finally:
        group.close()
    model = FFLM(replace(PRESETS["daemon"], n_layers=setup.layers))
    state = {k: v for a in answers if a["state"] is not None for k, v in a["state"].items()}
    model.load_state_dict(state)
    torch.set_num_threads(2)
    steps, seconds = answers[0]["steps"], max(a["seconds"] for a in answers)
    return {
        "setup": setup,
        "budget_s": budget_s,
        "steps": steps,
        "seconds": seconds,
        "bytes_per_s": steps * setup.rows * SEQ / seconds,
        "val_nats": evaluate_nats(model, load_text()[1]),
    }


# --- part 3: scaling -------------------------------------------------------------------------------
def scaling_setups(layers: int, quick: bool) -> list[Setup]:
    """1 to 4 processes: data parallelism, FF's pipeline alone and with replicas, torch's for BP."""
    setups = []
    for trainer in ("ff", "bp"):
        for ranks in (1, 2) if quick else (1, 2, 3, 4):
            setups.append(Setup(trainer, layers, ranks=ranks, rows=ROWS if ROWS % ranks == 0 else 15))
        for stages in (2,) if quick else (2, 3, 4):
            if stages <= layers:
                setups.append(Setup(trainer, layers, stages=stages))
        if trainer == "ff" and layers >= 2 and not quick:
            setups.append(Setup(trainer, layers, ranks=2, stages=2))
    return setups


def measure_alone(setup: Setup, steps: int, folder: str) -> float:
    """Train bytes/s of one setup running alone: a warm-up block of 3 steps, then one of `steps`."""
    group = Group(setup, folder)
    try:
        group.ask("block", 3)
        n, seconds = group.pace(steps)
    finally:
        group.close()
    return n * setup.rows * SEQ / seconds


# --- the report ------------------------------------------------------------------------------------
def usable_cores() -> int:
    from engram_ff.daemon.ranks import usable_cores as cores

    return cores()


def conditions(load_before: tuple[float, ...], started: float) -> str:
    import torch

    load_after = os.getloadavg()
    return (
        f"{usable_cores()} usable cores, torch {torch.__version__}, Python {sys.version.split()[0]}; load average "
        f"(1/5/15 min) {' / '.join(f'{x:.1f}' for x in load_before)} before, "
        f"{' / '.join(f'{x:.1f}' for x in load_after)} after; {(time.time() - started) / 60:.0f} minutes in all."
    )


def target_rows(speed: dict[Setup, float], runs: list[dict], scaling: dict[int, dict[Setup, float]]) -> list:
    rows = []

    def row(target: str, measured: str, verdict: str) -> None:
        rows.append([target, measured, verdict])

    today = {t: speed.get(Setup(t, threads=2), 0.0) for t in ("ff", "bp")}
    for trainer in ("ff", "bp"):
        dp = speed.get(Setup(trainer, ranks=2))
        if dp and today[trainer]:
            ratio = dp / today[trainer]
            row(
                f"{trainer.upper()} bytes/s on 2 ranks >= 1.4x one process of 2 threads (same learning per step)",
                f"{dp:,.0f} / {today[trainer]:,.0f} = {ratio:.2f}x",
                "met" if ratio >= 1.4 else "**missed**",
            )
    longest = max((r["budget_s"] for r in runs), default=None)
    final = {r["setup"].trainer: r for r in runs if r["budget_s"] == longest}
    if "ff" in final and longest is not None:
        ff = final["ff"]
        met = ("met" if ff["val_nats"] <= 1.60 else "**missed**") if longest == 600 else "- (the target is for 600 s)"
        row(f"FF validation in {longest:.0f} s of wall clock <= 1.60 nats/byte", f"{ff['val_nats']:.3f}", met)
    if {"ff", "bp"} <= set(final):
        ff, bp = final["ff"], final["bp"]
        ratio = ff["val_nats"] / bp["val_nats"]
        winner = "FF wins" if ratio < 1 else "BP wins" if ratio > 1 else "a tie"
        row(
            f"FF / BP validation at {longest:.0f} s wall clock, each in its fastest setup (moonshot <= 1.00)",
            f"{ff['val_nats']:.3f} / {bp['val_nats']:.3f} = {ratio:.3f}",
            winner,
        )
    for layers, results in scaling.items():
        for processes in sorted({s.processes for s in results if s.processes > 1}):
            ff = {s: v for s, v in results.items() if s.trainer == "ff" and s.processes == processes}
            dp = max((v for s, v in ff.items() if s.stages == 1), default=None)
            pipe = max(((v, s) for s, v in ff.items() if s.stages > 1), default=None, key=lambda t: t[0])
            if dp and pipe:
                over = " (oversubscribed)" if processes > usable_cores() else ""
                row(
                    f"FF's layer pipeline faster than data parallelism alone: {layers} layers, "
                    f"{processes} processes{over}",
                    f"{pipe[1].label}: {pipe[0]:,.0f} against {dp:,.0f} bytes/s ({pipe[0] / dp:.2f}x)",
                    "yes" if pipe[0] > dp else "no",
                )
    return rows


def render(
    speed: dict[Setup, float],
    rss: dict[Setup, list[float]],
    rows_speed: dict[Setup, float],
    runs: list[dict],
    scaling: dict[int, dict[Setup, float]],
    security: dict[str, str],
    header: str,
    png: str,
) -> str:
    lines = [f"# Parallel training: every core, FF and BP\n\n{header}\n"]
    if speed:
        lines.append("## Train bytes/s, interleaved (daemon preset, 3 layers, batch 16 x 256)\n")
        base = {t: speed.get(Setup(t, threads=2), 0.0) for t in ("ff", "bp")}
        table = [
            [
                s.label,
                s.cores,
                f"{v:,.0f}",
                f"{v / base[s.trainer]:.2f}x" if base[s.trainer] else "-",
                " + ".join(f"{m:.0f}" for m in rss.get(s, [])) or "-",
            ]
            for s, v in speed.items()
        ]
        headers = ["setup", "cores", "bytes/s", "/ one process of 2 threads (today)", "peak RSS MiB, each process"]
        lines.append(markdown_table(headers, table))
    if rows_speed:
        lines.append("\n## One process, one thread: bytes/s by rows per batch (how many rows keep a core busy)\n")
        best = max(rows_speed.values())
        table = [
            [s.rows, f"{v:,.0f}", f"{v / best:.2f}"] for s, v in sorted(rows_speed.items(), key=lambda t: t[0].rows)
        ]
        lines.append(markdown_table(["rows", "bytes/s", "/ best"], table))
    if runs:
        lines.append(
            "\n## Validation on TinyShakespeare after equal wall-clock budgets, each trainer in its fastest setup\n"
        )
        table = [
            [
                r["setup"].label,
                f"{r['budget_s']:.0f}",
                r["steps"],
                f"{r['seconds']:.0f}",
                f"{r['bytes_per_s']:,.0f}",
                f"{r['val_nats']:.3f}",
            ]
            for r in runs
        ]
        lines.append(markdown_table(["setup", "budget s", "steps", "wall s", "bytes/s", "val nats/byte"], table))
    if scaling:
        lines.append("\n## Scaling: 1 to 4 processes (one thread each), one setup at a time\n")
        cores = usable_cores()
        for layers, results in scaling.items():
            lines.append(f"\n### {layers} layers\n")
            single = {t: results.get(Setup(t, layers), 0.0) for t in ("ff", "bp")}
            table = []
            for s, v in results.items():
                note = "oversubscribed" if s.cores > cores else ""
                ratio = f"{v / single[s.trainer]:.2f}x" if single[s.trainer] else "-"
                table.append([s.label, s.processes, f"{v:,.0f}", ratio, note])
            lines.append(markdown_table(["setup", "processes", "bytes/s", "/ one process, 1 thread", ""], table))
        lines.append(f"\n![bytes/s against processes]({png})\n")
    targets = target_rows(speed, runs, scaling)
    if targets:
        lines.append("\n## Targets\n")
        lines.append(markdown_table(["target", "measured", "verdict"], targets))
    if security:
        lines.append("\n## systemd-analyze security --offline=true\n")
        lines.append(markdown_table(["unit", "overall exposure"], list(security.items())))
    return "\n".join(lines)


def plot(scaling: dict[int, dict[Setup, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(scaling), figsize=(5 * len(scaling), 4), squeeze=False)
    for ax, (layers, results) in zip(axes[0], scaling.items()):
        kinds = {
            "FF, data parallel": lambda s: s.trainer == "ff" and s.stages == 1,
            "FF, layer pipeline": lambda s: s.trainer == "ff" and s.stages > 1 and s.ranks == 1,
            "FF, pipeline x replicas": lambda s: s.trainer == "ff" and s.stages > 1 and s.ranks > 1,
            "BP, data parallel": lambda s: s.trainer == "bp" and s.stages == 1,
            "BP, torch pipelining": lambda s: s.trainer == "bp" and s.stages > 1,
        }
        for name, keep in kinds.items():
            points = sorted((s.processes, v) for s, v in results.items() if keep(s))
            if points:
                ax.plot(*zip(*points), marker="o", label=name)
        ax.axvline(usable_cores() + 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set(
            title=f"{layers} layers",
            xlabel="processes (right of the dotted line: oversubscribed)",
            ylabel="train bytes/s",
        )
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="engram-ff bench parallel", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a smoke run of every part, about 3 minutes")
    p.add_argument("--budgets", default="150,600", help="wall-clock seconds of the validation runs, comma-separated")
    p.add_argument("--rounds", type=int, default=12, help="rounds of 12 steps each in the interleaved throughput part")
    p.add_argument("--skip", default="", help="parts to leave out, comma-separated: throughput,validation,scaling")
    p.add_argument("--stem", help="results file name without suffix (default parallel, or parallel-quick)")
    p.add_argument("--results-dir", type=Path, default=RESULTS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - {"throughput", "validation", "scaling"}
    if unknown:
        build_parser().error(f"unknown parts {sorted(unknown)}")
    stem = args.stem or ("parallel-quick" if args.quick else "parallel")
    budgets = [10.0] if args.quick else [float(b) for b in args.budgets.split(",")]
    rounds, steps = (2, 6) if args.quick else (args.rounds, 12)
    started, load_before = time.time(), os.getloadavg()
    speed: dict[Setup, float] = {}
    rows_speed: dict[Setup, float] = {}
    runs: list[dict] = []
    scaling: dict[int, dict[Setup, float]] = {}
    rss: dict[Setup, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="engram-parallel-") as folder:
        if "throughput" not in skip:
            print("part 1: throughput, interleaved", flush=True)
            kinds = [dict(threads=1), dict(threads=2), dict(ranks=2), dict(stages=2)]
            setups = [Setup(trainer, **kind) for trainer in ("ff", "bp") for kind in kinds]
            speed = interleaved(setups, rounds, steps, folder, rss)
            rows = (4, 16) if args.quick else (2, 4, 8, 16)
            rows_speed = interleaved([Setup("ff", rows=r) for r in rows], rounds, steps, folder)
        if "validation" not in skip:
            print("part 2: validation at equal wall clock", flush=True)
            fastest = {}
            for trainer in ("ff", "bp"):
                trainable = {
                    s: v for s, v in speed.items() if s.trainer == trainer and not (trainer == "bp" and s.stages > 1)
                }
                fastest[trainer] = max(trainable, key=lambda s: trainable[s]) if trainable else Setup(trainer, ranks=2)
            for budget in budgets:
                for trainer in ("ff", "bp"):
                    runs.append(validation(fastest[trainer], budget, folder))
                    print(
                        f"  {runs[-1]['setup'].label}, {budget:.0f} s: {runs[-1]['val_nats']:.3f} nats/byte", flush=True
                    )
        if "scaling" not in skip:
            print("part 3: scaling", flush=True)
            for layers in (3,) if args.quick else (3, 4, 8):
                scaling[layers] = {}
                for setup in scaling_setups(layers, args.quick):
                    scaling[layers][setup] = measure_alone(setup, 6 if args.quick else 24, folder)
                    print(f"  {setup.label}: {scaling[layers][setup]:,.0f} bytes/s", flush=True)
    from engram_ff.bench.chaos import unit_security

    security = {"system": unit_security(False), "user": unit_security(True)}
    command = "engram-ff bench parallel " + " ".join(argv if argv is not None else sys.argv[1:])
    header = f"Made by `{command.strip()}`. {conditions(load_before, started)}"
    if args.quick:
        header += (
            "\n\n**A smoke run** (a few steps a setup): it shows that every part runs; its figures decide nothing."
        )
    png = f"{stem}.png"
    report = render(speed, rss, rows_speed, runs, scaling, security, header, png)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if scaling:
        plot(scaling, args.results_dir / png)
    (args.results_dir / f"{stem}.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
