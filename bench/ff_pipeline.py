"""FF's layer pipeline, for `engram-ff bench parallel`: stages x replicas, measured against data parallelism.

No gradient crosses a layer in FF, so the stack can be cut into stages, each a group of layers in a
process of its own: while stage s trains its layers on batch t, stage s-1 already trains on batch t+1.
It is the same mathematics as one process, not an approximation. In one process layer l's input for
batch t is computed by layer l-1 before layer l-1's step on batch t, and so it is here: stage s-1 sends
the stream it computed before its own step, with its detached logits. (PFF, arXiv 2404.08573, pipelines
an FF MLP over nodes the same way.) Each stage may hold several replicas, which average their layers'
gradients as data parallelism does (model/parallel.py).

Ranks: stage s, replica r is global rank s * replicas + r. Stage 0 decides, for every batch, the
learning-rate scale and whether to stop, and that header travels down the pipe with the batch, so every
layer sees the schedule it would see in one process. Every stage draws the same global batches itself:
only the stream h [b, T, D] and the logits so far [b, T, 256] cross a stage boundary.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import cast

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from engram_ff.model.config import VOCAB
from engram_ff.model.lm import FFLM
from engram_ff.model.parallel import Replicas
from engram_ff.model.train import FFTrainer, lr_schedule


def split_layers(n_layers: int, stages: int) -> list[range]:
    """Contiguous groups of layers, as even as they go; the embedding rides with layer 0."""
    bounds = [round(i * n_layers / stages) for i in range(stages + 1)]
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


class PipelineStage:
    """This process's layers of the model, their FF steps, and its neighbours in the pipe."""

    def __init__(self, trainer: FFTrainer, rank: int, stages: int, replicas: int, replica_group=None):
        assert isinstance(trainer.model, FFLM), "the pipe splits an FFLM's layers"
        self.trainer, self.model = trainer, trainer.model
        self.stage, self.replica = divmod(rank, replicas)
        self.stages, self.replicas = stages, replicas
        self.layers = split_layers(len(self.model.layers), stages)[self.stage]
        self.prev = rank - replicas if self.stage > 0 else None
        self.next = rank + replicas if self.stage < stages - 1 else None
        # the replicas of this stage average their gradients, as data parallelism does
        self.peers = Replicas(self.replica, replicas, replica_group) if replicas > 1 else None
        self.sending: list[dist.Work] = []
        self.step_ends: list[float] = []  # time.monotonic() after each batch: the pipe's pace, in steady state

    def shard(self, t: torch.Tensor) -> torch.Tensor:
        return t[self.replica :: self.replicas]

    def step(self, x: torch.Tensor, y: torch.Tensor, header: torch.Tensor) -> bool:
        """One batch through this stage (x, y: the global batch); header [lr scale, stop] comes from stage 0
        (this rank's own when it is stage 0). False once the stop has passed through."""
        x, y = self.shard(x), self.shard(y)
        b, T = y.shape
        h = lower = None
        if self.prev is not None:
            dist.recv(header, self.prev)
        if header[1] > 0:
            self._send([header])
            return False
        if self.prev is not None:
            h, lower = torch.empty(b, T, self.model.config.d_model), torch.empty(b, T, VOCAB)
            dist.recv(h, self.prev)
            dist.recv(lower, self.prev)
        for i in self.layers:
            h, lower = self._layer_step(i, x, y, h, lower, header[0].item())
        assert h is not None and lower is not None, "every stage has a layer"
        self._send([header, h, lower])
        self.trainer.steps += 1
        self.step_ends.append(time.monotonic())
        return True

    def _layer_step(self, i: int, x, y, h, lower, scale: float):
        """FFTrainer.train_step's work for layer i alone (softmax loss over all 256, every layer learning)."""
        model, opt = self.model, self.trainer.optimizers[i]
        for group in opt.param_groups:
            group["lr"] = self.trainer.lr * scale * self.trainer.layer_lr[i]
        h_out, z, _ = model.layers[i](model.embed(x) if i == 0 else h)  # [b, T, D] each
        logits = model.heads[i](z) if lower is None else lower + model.heads[i](z)  # [b, T, 256]
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in opt.param_groups for p in g["params"]]
        if self.peers is not None:
            self.peers.average_([p.grad for p in params])
        if self.trainer.clip:
            nn.utils.clip_grad_norm_(params, self.trainer.clip)
        opt.step()
        return h_out.detach(), logits.detach()

    def _send(self, tensors: list[torch.Tensor]) -> None:
        """Send downstream without waiting for it, but never more than one batch ahead of the send before."""
        for work in self.sending:
            work.wait()
        sends = [dist.isend(t, self.next) for t in tensors] if self.next is not None else []
        self.sending = cast(list[dist.Work], sends)  # isend's None: a rank outside the group; none is here

    def flush(self) -> None:
        self._send([])


def header(scale: float = 1.0, stop: bool = False) -> torch.Tensor:
    return torch.tensor([scale, float(stop)], dtype=torch.float64)


def run(
    stage: PipelineStage,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    steps: int,
    budget_s: float | None = None,
    schedule=lr_schedule,
    clock=time.monotonic,
) -> int:
    """Train `steps` batches, or (with budget_s) until stage 0 has spent budget_s seconds of wall time, the
    learning rate following `schedule` over whichever limit is nearer. Returns the batches trained."""
    start, done = clock(), 0
    for x, y in batches:
        message = header()
        if stage.stage == 0:
            seconds = clock() - start
            stop = done >= steps or (budget_s is not None and seconds >= budget_s)
            if stage.peers is not None:
                seconds, stop = stage.peers.agree(seconds, stop)
            progress = max(seconds / budget_s if budget_s else 0.0, done / steps)
            message = header(schedule(progress) if schedule is not None else 1.0, stop)
        if not stage.step(x, y, message):
            break
        done += 1
    stage.flush()
    return done


def build(model: FFLM, rank: int, stages: int, replicas: int, lr: float | None = None) -> PipelineStage:
    """This rank's stage of `model` (the same initial weights in every process), with its stage's replica
    group; every rank must call it, in the same order, as dist.new_group requires."""
    group = None
    for s in range(stages):
        members = list(range(s * replicas, (s + 1) * replicas))
        made = dist.new_group(members) if replicas > 1 else None
        if rank in members:
            group = made
    trainer = FFTrainer(model) if lr is None else FFTrainer(model, lr=lr)
    return PipelineStage(trainer, rank, stages, replicas, group)


def layer_state(model: FFLM, layers: range) -> dict[str, torch.Tensor]:
    """The weights a stage of `layers` trains (their layers and heads, and the embedding with layer 0): the
    model's whole state is the union over the stages."""
    names = tuple(f"{part}.{i}." for part in ("layers", "heads") for i in layers) + (("embed.",) if 0 in layers else ())
    return {k: v for k, v in model.state_dict().items() if k.startswith(names)}
