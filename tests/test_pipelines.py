"""The benchmark's pipelines train what one process trains: FF's layer pipeline (2 stages, and 2 stages x
2 replicas) and torch's pipelining for BP end where FFTrainer and BPTrainer end, on real gloo ranks."""

from __future__ import annotations

import multiprocessing

import pytest
import torch

from engram_ff.bench import bp_pipeline, ff_pipeline
from engram_ff.model.lm import FFLM, LMConfig
from engram_ff.model.parallel import Replicas
from engram_ff.model.train import BPTrainer, FFTrainer, byte_batches, train
from tests.test_parallel import TEXT, flat

CONFIG = LMConfig(n_layers=3, d_model=32, d_state=32, d_score=16)
ROWS, SEQ, STEPS = 8, 32, 5
TOLERANCE = 1e-5  # as tests/test_parallel.py: far below what a wrong method changes


def batches():
    return byte_batches(TEXT, ROWS, SEQ, torch.Generator().manual_seed(0))


def model() -> FFLM:
    torch.manual_seed(0)
    return FFLM(CONFIG)


def stage_process(kind: str, rank: int, world: int, stages: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    replicas = Replicas.join(f"file://{store}", rank, world, loopback=True)
    try:
        if kind == "ff":
            stage = ff_pipeline.build(model(), rank, stages, world // stages)
            ff_pipeline.run(stage, batches(), STEPS)  # the lr schedule over the steps, as train() has it
            torch.save(ff_pipeline.layer_state(stage.model, stage.layers), f"{out}.{rank}")
        else:
            net = model()
            pipe = bp_pipeline.BPPipeline(net, rank, stages, micro_batches=4)
            for _, (x, y) in zip(range(STEPS), batches()):
                pipe.step(x, y)
            torch.save(ff_pipeline.layer_state(net, ff_pipeline.split_layers(3, stages)[rank]), f"{out}.{rank}")
    finally:
        replicas.close()


@pytest.mark.parametrize("kind, stages, world", [("ff", 2, 2), ("ff", 2, 4), ("bp", 2, 2)])
def test_a_pipeline_ends_where_one_process_ends(tmp_path, kind, stages, world):
    ctx = multiprocessing.get_context("spawn")
    out, store = str(tmp_path / "stage"), str(tmp_path / "store")
    procs = [ctx.Process(target=stage_process, args=(kind, r, world, stages, store, out)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * world
    torch.set_num_threads(1)
    reference = model()
    if kind == "ff":
        train(FFTrainer(reference), batches(), budget_s=1e9, max_steps=STEPS)
    else:  # torch's pipelining is measured for speed at a constant learning rate
        trainer = BPTrainer(reference)
        for _, (x, y) in zip(range(STEPS), batches()):
            trainer.train_step(x, y)
    merged = {}
    for rank in range(0, world, world // stages):  # each stage's first replica
        merged.update(torch.load(f"{out}.{rank}"))
    expected = reference.state_dict()
    assert sorted(merged) == sorted(expected)
    assert (flat({k: merged[k] for k in expected}) - flat(expected)).abs().max() < TOLERANCE
