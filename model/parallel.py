"""Data parallelism on torch.distributed: replicas of one model, each training on its share of every batch.

Every rank draws the same global batch (the same text, the same seeded generator) and trains on its
rows `x[rank::world]`. Before any optimiser step the gradients are averaged over the ranks. With equal
shares, the mean of the ranks' mean losses is the mean loss over the whole batch, so the averaged
gradient IS the one-process gradient of the global batch, and everything after it (the clip, Adam, the
learning rate) sees what one process would see. The replicas start from one checkpoint and take
identical steps, so they stay identical without ever exchanging weights. `train()` also makes the ranks
agree, before every step, on the time spent and on whether to stop: the learning-rate schedule then
reads the same progress everywhere, and no rank leaves a collective the others still wait in.

Backend: gloo for CPU tensors (the models here train on the CPU), NCCL for CUDA tensors where torch has
it; ranks on one host bind gloo to 127.0.0.1. A rank that dies closes its sockets and the others' next
collective fails at once. A rank that hangs (SIGSTOPped, swapped out) is given up by the others: every
collective is waited for on this thread, a few milliseconds at a time, so signal handlers still run,
and `Patience` says when to stop waiting (after `TIMEOUT`, a few seconds after a stop was asked for, or
past a deadline such as the end of the night's budget). gloo's own timeout (the same TIMEOUT, given at
init) stays as the backstop (issue #20.2).
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# Longest wait for another rank: the rendezvous, a broadcast while rank 0 prepares the night, a step
# while rank 0 writes a checkpoint (a few seconds for the daemon's model).
TIMEOUT = timedelta(minutes=5)


LOOPBACK = "gloo_loopback"
STOP_GRACE_S = 10.0  # after a stop was asked for, how long a collective may still take (a step, not a night)
POLL_S = (0.0002, 0.02)  # the first and the longest sleep between two looks at a collective


class Unanswered(RuntimeError):
    """Another rank did not take part in a collective in time: it hangs, or is stopped."""


@dataclass
class Patience:
    """How long this rank waits for the others in one collective."""

    timeout_s: float = TIMEOUT.total_seconds()
    should_stop: Callable[[], bool] = lambda: False
    deadline: float | None = None  # time.monotonic() past which no collective waits (the budget's end + grace)
    stop_grace_s: float = STOP_GRACE_S

    def give_up(self, started: float, now: float, stop_seen: float | None) -> str | None:
        """Why to stop waiting now, or None."""
        if now - started >= self.timeout_s:
            return f"no answer from the other ranks for {now - started:.0f} s"
        if self.deadline is not None and now >= self.deadline:
            return f"no answer from the other ranks for {now - started:.0f} s, past the update's budget"
        if stop_seen is not None and now - stop_seen >= self.stop_grace_s:
            return f"no answer from the other ranks for {now - started:.0f} s after a stop was asked for"
        return None


def _loopback_gloo(store, rank: int, size: int, timeout: timedelta):
    """gloo bound to 127.0.0.1 by address: unlike GLOO_SOCKET_IFNAME=lo, no interface lookup, which would
    need netlink sockets that the systemd unit does not allow (`ProcessGroupGloo._Options` is how torch's
    own tests choose gloo's devices)."""
    options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]  # private: not in torch's stubs
    options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    options._timeout = timeout
    return dist.ProcessGroupGloo(store, rank, size, options)


def backend(loopback: bool) -> str:
    """gloo for CPU tensors, on the loopback interface only if asked; with CUDA, NCCL for CUDA tensors."""
    gloo = "gloo"
    if loopback:
        if LOOPBACK not in dist.Backend.backend_list:
            dist.Backend.register_backend(LOOPBACK, _loopback_gloo, devices=["cpu"])
        gloo = LOOPBACK
    if torch.cuda.is_available() and dist.is_nccl_available():
        return f"cpu:{gloo},cuda:nccl"
    return gloo


class Replicas:
    """This process's place among the replicas of one training run, and the few collectives training needs."""

    def __init__(self, rank: int, world: int, group: dist.ProcessGroup | None = None):
        self.rank, self.world = rank, world  # within `group`: by default every rank of the job
        self.group = group
        self.patience = Patience()

    def wait(self, work: dist.Work) -> None:
        """Wait for a collective on this thread, looking at it every few milliseconds (so that Python's
        signal handlers run meanwhile); Unanswered once `patience` gives up on the other ranks."""
        started = time.monotonic()
        stop_seen = None
        pause = POLL_S[0]
        while not work.is_completed():
            now = time.monotonic()
            if stop_seen is None and self.patience.should_stop():
                stop_seen = now
            reason = self.patience.give_up(started, now, stop_seen)
            if reason is not None:
                raise Unanswered(f"rank {self.rank} of {self.world}: {reason}")
            time.sleep(pause)
            pause = min(pause * 2, POLL_S[1])
        work.wait()  # raises the collective's own error, if it failed

    @classmethod
    def join(cls, init_method: str, rank: int, world: int, loopback: bool = False) -> Replicas:
        """Start (or join) the process group: `file://PATH` for ranks on one host (`loopback`: then nothing
        listens beyond it), `env://` under torchrun."""
        dist.init_process_group(
            backend(loopback), init_method=init_method, rank=rank, world_size=world, timeout=TIMEOUT
        )
        return cls(rank, world)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch [B, ...] -> [B / world, ...]; strided, so that a batch laid
        out as new rows then replayed rows (daemon/recipe.py) keeps that layout in every shard."""
        return batch[self.rank :: self.world]

    def average_(self, tensors: list[torch.Tensor]) -> None:
        """Replace each tensor by its mean over the ranks, in place: one all-reduce for all of them."""
        self.average_async(tensors).wait()

    def average_async(self, tensors: list[torch.Tensor]) -> Averaging:
        """average_, started: the tensors are copied now and get their means at wait(); meanwhile this
        rank computes on (gloo communicates on threads of its own)."""
        flat = torch.cat([t.reshape(-1) for t in tensors])
        return Averaging(self, tensors, flat, dist.all_reduce(flat, group=self.group, async_op=True))

    def agree(self, seconds: float, stop: bool) -> tuple[float, bool]:
        """(the most seconds any rank has spent, whether any rank must stop): one tiny all-reduce."""
        both = torch.tensor([seconds, float(stop)], dtype=torch.float64)
        self.wait(dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group, async_op=True))
        return both[0].item(), bool(both[1].item())

    def broadcast(self, obj: object = None) -> object:
        """Rank 0's `obj` (any picklable value, tensors included), on every rank: its pickle's length, then
        its bytes, each waited for as every collective is. The ranks are this job's own, on loopback or
        torchrun's, as with torch's broadcast_object_list, which pickles the same way."""
        data = pickle.dumps(obj) if self.rank == 0 else b""
        length = torch.tensor([len(data)], dtype=torch.int64)
        self.wait(dist.broadcast(length, src=0, group=self.group, async_op=True))
        buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.rank == 0 else None
        if buffer is None:
            buffer = torch.empty(int(length.item()), dtype=torch.uint8)
        if buffer.numel():
            self.wait(dist.broadcast(buffer, src=0, group=self.group, async_op=True))
        return pickle.loads(buffer.numpy().tobytes()) if self.rank else obj


class Averaging:
    """An all-reduce on its way (Replicas.average_async)."""

    def __init__(self, replicas: Replicas, tensors: list[torch.Tensor], flat: torch.Tensor, work: dist.Work):
        self.replicas, self.tensors, self.flat, self.work = replicas, tensors, flat, work

    def wait(self) -> None:
        """Put each tensor's mean over the ranks in place."""
        self.replicas.wait(self.work)
        self.flat /= self.replicas.world
        for t, mean in zip(self.tensors, self.flat.split([t.numel() for t in self.tensors])):
            t.copy_(mean.view_as(t))
