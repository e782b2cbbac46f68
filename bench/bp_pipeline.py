"""Backprop's pipeline, for `engram-ff bench parallel`: the same stack cut into stages and run by torch's
own `torch.distributed.pipelining` (GPipe schedule), so that BP gets its best shot at using more processes
than data parallelism. Unlike FF's pipeline, BP's stages wait for each other's gradients, so a batch is
cut into micro-batches to keep them busy, and the pipe fills and drains on every step.

Same mathematics as BPTrainer: the micro-batches' gradients add up to the batch's (the schedule scales
them), the clip is over the whole model's gradient norm (summed over the stages), and Adam is
elementwise, so one optimiser per stage is one optimiser for the model.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

from engram_ff.bench.ff_pipeline import split_layers
from engram_ff.model.config import VOCAB
from engram_ff.model.lm import FFLM
from engram_ff.model.train import BP_LR


class StageModule(nn.Module):
    """Layers [first, last) with their heads: (stream, logits so far) -> the same after them; the first
    stage embeds the bytes, the last returns the logits alone."""

    def __init__(self, model: FFLM, layers: range, last: bool):
        super().__init__()
        self.embed = model.embed if layers.start == 0 else None
        self.layers = nn.ModuleList(model.layers[i] for i in layers)
        self.heads = nn.ModuleList(model.heads[i] for i in layers)
        self.last = last

    def forward(self, h: torch.Tensor, logits: torch.Tensor | None = None):
        if self.embed is not None:
            h = self.embed(h)  # h: the bytes [b, T] on the first stage
        for layer, head in zip(self.layers, self.heads):
            h, z, _ = layer(h)
            logits = head(z) if logits is None else logits + head(z)
        return logits if self.last else (h, logits)


class BPPipeline:
    def __init__(self, model: FFLM, rank: int, stages: int, micro_batches: int, lr: float = BP_LR, clip=1.0):
        layers = split_layers(len(model.layers), stages)[rank]
        self.module = StageModule(model, layers, last=rank == stages - 1)
        self.rank, self.stages, self.clip = rank, stages, clip
        self.lr = lr
        self.optimizer = torch.optim.AdamW(
            list(self.module.parameters()), lr=lr, betas=(0.9, 0.99), weight_decay=0.0, fused=True
        )
        stage = PipelineStage(self.module, rank, stages, torch.device("cpu"))
        self.schedule = ScheduleGPipe(stage, micro_batches, loss_fn=self._loss)
        self.step_ends: list[float] = []

    @staticmethod
    def _loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))

    def step(self, x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.rank == 0:
            self.schedule.step(x)
        elif self.rank == self.stages - 1:
            self.schedule.step(target=y)
        else:
            self.schedule.step()
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if self.clip:  # the model's norm: the stages' squared norms summed
            squared = torch.stack([g.square().sum() for g in grads]).sum().reshape(1)
            dist.all_reduce(squared)
            factor = (self.clip / (squared.sqrt() + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(factor)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * scale
        self.optimizer.step()
        self.step_ends.append(time.monotonic())
