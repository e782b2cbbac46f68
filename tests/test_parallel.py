"""Data parallelism is the same mathematics as one process: 2 real gloo ranks x 8 rows end where 1 process
x 16 rows ends, for both trainers, with the per-layer clip and the learning-rate schedule in force."""

from __future__ import annotations

import itertools
import multiprocessing

import pytest
import torch

from engram_ff.model.lm import FFLM, PRESETS
from engram_ff.model.parallel import Replicas
from engram_ff.model.train import BPTrainer, FFTrainer, byte_batches, train

TEXT = b"".join(b"line %d: the quick brown fox jumps over the lazy dog %d times.\n" % (i, i * i) for i in range(200))
ROWS, SEQ = 16, 32
MAX_STEPS, BUDGET_S, TICK = 8, 2.5, 0.5  # the clock's budget ends training first: after 5 steps
CLIP = 0.05  # small enough that every step is clipped
# Measured: the ranks end within 2.4e-7 (FF) and 1.2e-7 (BP) of one process; without the clip one process
# ends 5.5e-4 (BP) to 1.3e-3 (FF) away, on rank 0's rows alone 1.5e-2 to 3.0e-2.
TOLERANCE = 1e-5


def build(kind: str, clip: float = CLIP):
    """kind "ff-rows": the top layer's loss reads only the first half of the batch, as daemon/recipe.py
    sets it up when only the lower layers see the replayed rows."""
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"])
    trainer = BPTrainer(model, clip=clip) if kind == "bp" else FFTrainer(model, clip=clip)
    if kind == "ff-rows":
        trainer.loss_rows[-1] = ROWS // 2
    return model, trainer


def run(trainer, replicas: Replicas | None = None, rows: slice = slice(None)):
    """A few steps under a fake clock (a step takes TICK seconds on it, so the same progress in every process)."""
    batches = ((x[rows], y[rows]) for x, y in byte_batches(TEXT, ROWS, SEQ, torch.Generator().manual_seed(0)))
    clock = itertools.count(step=TICK).__next__
    return train(trainer, batches, budget_s=BUDGET_S, max_steps=MAX_STEPS, clock=clock, replicas=replicas)


def replica(rank: int, world: int, store: str, kind: str, out: str) -> None:
    torch.set_num_threads(1)
    replicas = Replicas.join(f"file://{store}", rank, world, loopback=True)
    try:
        model, trainer = build(kind)
        trainer.distribute(replicas)
        result = run(trainer, replicas)
        torch.save({"model": model.state_dict(), "losses": result.losses, "result": vars(result)}, f"{out}.{rank}")
    finally:
        replicas.close()


def flat(state: dict) -> torch.Tensor:
    return torch.cat([v.reshape(-1) for v in state.values()])


@pytest.mark.parametrize("kind", ["ff", "ff-rows", "bp"])
def test_two_ranks_of_8_rows_end_where_one_process_of_16_rows_ends(tmp_path, kind):
    ctx = multiprocessing.get_context("spawn")
    out = str(tmp_path / "ranks")
    procs = [ctx.Process(target=replica, args=(r, 2, str(tmp_path / "store"), kind, out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]

    torch.set_num_threads(1)
    model, trainer = build(kind)
    one = run(trainer)
    reference = flat(model.state_dict())
    assert one.steps == 5 and ranks[0]["result"]["steps"] == 5
    assert ranks[0]["result"]["bytes"] == one.bytes  # the whole batch is counted
    for r in ranks:  # the replicas stay identical and equal to one process of the whole batch
        assert (flat(r["model"]) - reference).abs().max() < TOLERANCE
        assert r["losses"] == pytest.approx(one.losses, rel=1e-5)

    # The tolerance is far below what a wrong method changes: no clip, or rank 0's rows alone.
    unclipped_model, unclipped = build(kind, clip=0.0)
    run(unclipped)
    half_model, half = build(kind)
    run(half, rows=slice(0, None, 2))
    assert (flat(unclipped_model.state_dict()) - reference).abs().max() > 10 * TOLERANCE
    assert (flat(half_model.state_dict()) - reference).abs().max() > 100 * TOLERANCE
