"""Training: Forward-Forward (layer-local losses, one optimiser per layer) and the backprop baseline.

FF training walks the stack once per batch. Layer l computes its output from the layer below's
DETACHED output, scores all 256 candidates, adds the detached scores of the layers below, and takes a
local loss on those logits; its backward and optimiser step run before layer l+1 is even computed, so
only one layer's graph is alive at a time (the memory advantage) and no gradient crosses a layer.

Local losses (`loss=`) and negatives (`negatives=`) are named as model/losses.py defines them:
"softmax" over all 256 candidates (the main model, cheap with linear goodness); "sampled" softmax with
the proposal's log q corrected; Hinton's "pair" loss, against the positive's own goodness; negatives
"uniform", "unigram" (byte frequencies seen so far) or "model" (the layers below's distribution;
uniform at layer 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from engram_ff.model import losses
from engram_ff.model.config import VOCAB
from engram_ff.model.parallel import Replicas

if TYPE_CHECKING:
    from engram_ff.model.lm import FFLM
    from engram_ff.model.window_mlp import WindowMLP

# Each trainer's default learning rate is its best of 4e-3, 8e-3 and 1.2e-2 on TinyShakespeare at 150
# CPU-s (batch 16 x 256, daemon preset): FF 1.766 / 1.745 / 1.757 nats a byte, BP 1.621 at 4e-3 and
# 1.627 at 8e-3 (bench/results/text-lr-sweep.md; `python -m engram_ff.bench.text --budget 150 --lr LR`). Layer-local
# losses take a larger step than one loss through the whole stack.
FF_LR, BP_LR = 8e-3, 4e-3


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """Fused: one kernel for all of an optimiser's parameters (a CPU step about 15 % cheaper, one-off timing)."""
    return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.0, fused=True)


class FFTrainer:
    """Forward-Forward: every layer has its own loss and its own optimiser."""

    kind = "ff"

    def __init__(
        self,
        model: FFLM | WindowMLP,
        lr: float = FF_LR,
        loss: str = "softmax",
        negatives: str = "model",
        n_negatives: int = 16,
        clip: float = 1.0,
        seed: int = 0,
    ):
        losses.check(loss, negatives)
        self.model, self.lr, self.loss, self.negatives = model, lr, loss, negatives
        self.n_negatives, self.clip = n_negatives, clip
        self.optimizers = [_adam(p, lr) for p in model.layer_parameters()]
        self.layer_lr = [1.0] * len(self.optimizers)  # per-layer lr multiplier; 0: frozen (see freeze)
        self.loss_rows: list[int | None] = [None] * len(self.optimizers)  # layer l's loss reads batch rows [:n]
        self.byte_counts = torch.ones(VOCAB)  # for unigram negatives (add-one smoothed)
        self.generator = torch.Generator().manual_seed(seed)
        self.replicas: Replicas | None = None
        self.steps = 0

    def distribute(self, replicas: Replicas) -> None:
        """Train as one of data-parallel replicas: each layer's gradients (and its loss, for the record) are
        averaged over the ranks right before that layer's own step, so no gradient crosses a layer here
        either. The sampled losses draw their negatives on each rank for its own rows."""
        self.replicas = replicas

    def set_lr_scale(self, scale: float) -> None:
        for opt, layer_lr in zip(self.optimizers, self.layer_lr):
            for group in opt.param_groups:
                group["lr"] = self.lr * scale * layer_lr

    def freeze(self, n_lowest: int) -> None:
        """Stop training the lowest n layers. Their losses are local, so nothing above needs their
        gradients: a frozen layer runs forward only and its optimiser state is dropped."""
        for i in range(n_lowest):
            self.layer_lr[i] = 0.0
            self.optimizers[i].zero_grad(set_to_none=True)
            self.optimizers[i].state.clear()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        """One batch through every layer, each updated from its local loss. Returns those losses."""
        self.model.train()
        if self.negatives == "unigram":
            self.byte_counts += torch.bincount(y.flatten(), minlength=VOCAB)
        layer_losses = []
        lower = None  # detached logits of the layers below, [B, T, 256]
        averaging = []  # replicas: the layer whose averaged gradient is on its way, stepped after the next
        features = self.model.features(x, detach=True)
        for opt, head, layer_lr, rows in zip(self.optimizers, self.model.heads, self.layer_lr, self.loss_rows):
            with torch.set_grad_enabled(layer_lr > 0):
                z = next(features)
                logits = head(z) if lower is None else lower + head(z)
                if rows is not None and self.replicas is not None:  # rows of the global batch: a shard's share
                    rows //= self.replicas.world
                loss = self._local_loss(logits[:rows], y[:rows], None if lower is None else lower[:rows])
            if layer_lr > 0:
                opt.zero_grad(set_to_none=True)
                loss.backward()
                params = [p for g in opt.param_groups for p in g["params"]]
                if self.replicas is None:
                    self._clip_and_step(opt, params)
                else:  # averaged over the ranks (its loss too) while the next layer computes
                    loss = loss.detach().reshape(1)
                    averaging.append((opt, params, self.replicas.average_async([p.grad for p in params] + [loss])))
                    if len(averaging) == 2:
                        self._clip_and_step(*averaging.pop(0))
            lower = logits.detach()
            layer_losses.append(loss.detach())
        for waiting in averaging:
            self._clip_and_step(*waiting)
        self.steps += 1
        return [loss.item() for loss in layer_losses]

    def _clip_and_step(self, opt: torch.optim.Optimizer, params: list[nn.Parameter], averaging=None) -> None:
        """One layer's step. Over replicas, after its gradient's average has arrived: the clip must see the
        global batch's gradient. A layer's step may wait for the next layer's backward: that layer's input
        was computed before this step, as in one process, so the mathematics do not change."""
        if averaging is not None:
            averaging.wait()
        if self.clip:
            nn.utils.clip_grad_norm_(params, self.clip)
        opt.step()

    def _local_loss(self, logits: torch.Tensor, y: torch.Tensor, lower: torch.Tensor | None) -> torch.Tensor:
        if self.loss == "softmax":
            return F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        log_q = self._proposal(lower, y.shape)  # [B, T, 256]
        neg = torch.multinomial(log_q.exp().reshape(-1, VOCAB), self.n_negatives, True, generator=self.generator)
        neg = neg.reshape(*y.shape, self.n_negatives)
        pos_score = logits.gather(-1, y[..., None])  # [B, T, 1]
        neg_score = logits.gather(-1, neg)  # [B, T, K]
        hit = neg == y[..., None]  # a "negative" that is the true byte carries no signal
        if self.loss == "pair":
            pair = F.softplus(neg_score - pos_score).masked_fill(hit, 0.0)
            return pair.sum() / (~hit).sum().clamp(min=1)
        cand = torch.cat([pos_score - log_q.gather(-1, y[..., None]), neg_score - log_q.gather(-1, neg)], -1)
        cand = cand.masked_fill(F.pad(hit, (1, 0)), float("-inf"))
        return -F.log_softmax(cand, -1)[..., 0].mean()

    def _proposal(self, lower: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
        """log q(c) of the negative sampler at every position: [B, T, 256]."""
        if self.negatives == "model" and lower is not None:
            return F.log_softmax(lower, -1)
        if self.negatives == "unigram":
            log_q = (self.byte_counts / self.byte_counts.sum()).log()
        else:
            log_q = torch.full((VOCAB,), -math.log(VOCAB))
        return log_q.expand(*shape, VOCAB)

    def state_dict(self) -> dict:
        return {
            "steps": self.steps,
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "byte_counts": self.byte_counts,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(
                f"trainer state has {len(state['optimizers'])} layer optimisers, model has {len(self.optimizers)}"
            )
        for opt, s in zip(self.optimizers, state["optimizers"]):
            opt.load_state_dict(s)
        self.steps = state["steps"]
        self.byte_counts = state["byte_counts"].clone()
        self.generator.set_state(state["generator"])


class BPTrainer:
    """Backprop baseline: the same model trained end to end on the cross-entropy of its final logits."""

    kind = "bp"

    def __init__(self, model: FFLM | WindowMLP, lr: float = BP_LR, clip: float = 1.0):
        self.model, self.lr, self.clip = model, lr, clip
        self.optimizer = _adam(list(model.parameters()), lr)
        self.layers = model.layer_parameters()
        self.layer_lr = [1.0] * len(self.layers)  # per-layer multiplier of each step, as FFTrainer's
        self.net: nn.Module = model  # what the step runs: the model, or its DistributedDataParallel wrapper
        self.replicas: Replicas | None = None
        self.steps = 0

    def distribute(self, replicas: Replicas) -> None:
        """Train as one of data-parallel replicas, with torch's DistributedDataParallel: it averages the
        gradients over the ranks during the backward pass, before the clip and the step see them. A
        collective: every rank calls it at the same point."""
        from torch.nn.parallel import DistributedDataParallel

        self.replicas = replicas
        # the context memory's buffers are rank 0's alone (the daemon's helpers have none): not DDP's to sync
        memory = [name for name, _ in self.model.named_buffers() if name.startswith("memory.")]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.model, memory)
        self.net = DistributedDataParallel(self.model, gradient_as_bucket_view=True)

    def set_lr_scale(self, scale: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * scale

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> list[float]:
        self.model.train()
        # the SSM layers' logits alone, as FF's layers learn them: a context memory learns by its own rule
        ssm_only = {"use_memory": False} if getattr(self.model, "memory", None) is not None else {}
        loss = F.cross_entropy(self.net(x, **ssm_only)[0].reshape(-1, VOCAB), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
        slowed = [
            (p, p.detach().clone(), rate)
            for params, rate in zip(self.layers, self.layer_lr)
            if rate != 1
            for p in params
        ]
        self.optimizer.step()
        with torch.no_grad():  # a slowed layer keeps `rate` of its step: Adam's step is linear in its rate
            for p, before, rate in slowed:
                p.lerp_(before, 1 - rate)
        self.steps += 1
        if self.replicas is not None:  # the global batch's loss, for the record
            loss = loss.detach().reshape(1)
            self.replicas.average_([loss])
        return [loss.item()]

    def state_dict(self) -> dict:
        return {"steps": self.steps, "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state["steps"]


TRAINERS = {trainer.kind: trainer for trainer in (FFTrainer, BPTrainer)}


@dataclass
class TrainResult:
    steps: int = 0
    bytes: int = 0
    seconds: float = 0.0  # time spent training, callbacks excluded
    losses: list[float] = field(default_factory=list)  # the last step's per-layer losses
    stopped: bool = False  # should_stop() ended it (on any rank), before its steps or its budget ran out


def lr_schedule(progress: float, warmup: float = 0.02, floor: float = 0.1) -> float:
    """Linear warmup, then cosine down to `floor` at the end of the budget (progress in [0, 1])."""
    if progress < warmup:
        return max(progress / warmup, 0.01)
    p = min((progress - warmup) / (1 - warmup), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def train(
    trainer,
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]],
    budget_s: float,
    max_steps: int,
    on_step: Callable[[int, list[float], TrainResult], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    schedule: Callable[[float], float] | None = lr_schedule,
    clock: Callable[[], float] = time.perf_counter,
    replicas: Replicas | None = None,
) -> TrainResult:
    """Train until budget_s seconds of training, max_steps steps, or should_stop() says so.

    The learning rate follows `schedule` over whichever limit is nearer (time or steps), so a short
    nightly budget still ends annealed. on_step(step, losses, result) runs after every step (checkpoint,
    evaluate, log); its time is not charged to the budget. `clock` measures the budget: wall time by
    default; a benchmark on a shared machine can pass a CPU-time clock instead.

    With `replicas` (a distributed trainer, see model/parallel.py) `batches` are the global batches, the
    same on every rank: each rank trains on its shard, every rank stops at the same step and reads the
    slowest rank's seconds as the progress, and `bytes` counts the whole batch.
    """
    result = TrainResult()
    for x, y in batches:
        stop = result.steps >= max_steps or result.seconds >= budget_s or bool(should_stop and should_stop())
        if replicas is not None:
            result.seconds, stop = replicas.agree(result.seconds, stop)
            x, y = replicas.shard(x), replicas.shard(y)
        if stop:
            result.stopped = result.steps < max_steps and result.seconds < budget_s
            break
        if schedule is not None:
            trainer.set_lr_scale(schedule(max(result.seconds / budget_s, result.steps / max_steps)))
        t0 = clock()
        result.losses = trainer.train_step(x, y)
        result.seconds += clock() - t0
        result.steps += 1
        result.bytes += y.numel() * (1 if replicas is None else replicas.world)
        if on_step is not None:
            on_step(result.steps, result.losses, result)
    return result


def as_byte_tensor(data: bytes | np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = np.frombuffer(bytes(data), dtype=np.uint8)
    return torch.from_numpy(np.array(data, dtype=np.uint8)).long()


def uint8_tokens(data: bytes | bytearray | np.ndarray) -> torch.Tensor:
    """The bytes as a uint8 tensor [n], sharing a bytearray's memory (a copy of bytes, which are read-only):
    a night's text stays one byte a byte, where int64 tokens took eight."""
    if isinstance(data, bytearray):
        return torch.frombuffer(data, dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    if isinstance(data, (bytes, memoryview)):
        return uint8_tokens(bytearray(data))
    return torch.from_numpy(np.asarray(data, dtype=np.uint8))


def byte_batches(
    data: bytes | bytearray | np.ndarray, batch: int, seq_len: int, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless random windows: x [batch, T] and the next bytes y [batch, T]. T shrinks to fit short data.
    Only the windows become int64: the text itself stays uint8."""
    tokens = uint8_tokens(data)  # [n]
    if len(tokens) < 2:
        raise ValueError(f"need at least 2 bytes of training data, got {len(tokens)}")
    T = min(seq_len, len(tokens) - 1)
    offsets = torch.arange(T + 1)
    while True:
        starts = torch.randint(0, len(tokens) - T, (batch,), generator=generator)
        window = tokens[starts[:, None] + offsets].long()  # [batch, T + 1]
        yield window[:, :-1], window[:, 1:]


# bytes a forward pass of `evaluate_nats` reads: the match model (model/match.py) searches its whole history once a
# chunk, so 228 kB of chat cost the trained daemon model 7.71 s to score in chunks of 1 kB and 5.65 s in chunks of
# 4 kB, one thread, against 4.38 s without it (bench/results/match-sweep.md); 4 kB of logits are 4 MiB
EVAL_CHUNK = 4096


@torch.inference_mode()
def evaluate_nats(
    model: nn.Module, data: bytes | np.ndarray, seq_len: int = EVAL_CHUNK, max_bytes: int | None = None
) -> float:
    """Mean nats per byte of predicting bytes 1..n-1 of `data`, each from everything before it.

    The model reads the text as one stream, seq_len bytes at a time, carrying its recurrent state
    across chunks, so the result does not depend on seq_len and short texts work. Deterministic.
    """
    tokens = as_byte_tensor(data)[:max_bytes]
    if len(tokens) < 2:
        raise ValueError(f"need at least 2 bytes to evaluate, got {len(tokens)}")
    was_training = model.training
    model.eval()
    total, state = 0.0, None
    for i in range(0, len(tokens) - 1, seq_len):
        x = tokens[i : i + seq_len][None]
        y = tokens[i + 1 : i + seq_len + 1][None]
        logits, state = model(x[:, : y.shape[1]], state)
        total += F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), reduction="sum").item()
    model.train(was_training)
    return total / (len(tokens) - 1)
