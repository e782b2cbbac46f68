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
collective fails at once; a rank that hangs is given up after `TIMEOUT`.
"""

from __future__ import annotations

from datetime import timedelta

import torch
import torch.distributed as dist

# Longest wait for another rank: the rendezvous, a broadcast while rank 0 prepares the night, a step
# while rank 0 writes a checkpoint (a few seconds for the daemon's model).
TIMEOUT = timedelta(minutes=5)


LOOPBACK = "gloo_loopback"


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
        return Averaging(tensors, flat, dist.all_reduce(flat, group=self.group, async_op=True), self.world)

    def agree(self, seconds: float, stop: bool) -> tuple[float, bool]:
        """(the most seconds any rank has spent, whether any rank must stop): one tiny all-reduce."""
        both = torch.tensor([seconds, float(stop)], dtype=torch.float64)
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        return both[0].item(), bool(both[1].item())

    def broadcast(self, obj: object = None) -> object:
        """Rank 0's `obj` (any picklable value, tensors included), on every rank."""
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


class Averaging:
    """An all-reduce on its way (Replicas.average_async)."""

    def __init__(self, tensors: list[torch.Tensor], flat: torch.Tensor, work: dist.Work, world: int):
        self.tensors, self.flat, self.work, self.world = tensors, flat, work, world

    def wait(self) -> None:
        """Put each tensor's mean over the ranks in place."""
        self.work.wait()
        self.flat /= self.world
        for t, mean in zip(self.tensors, self.flat.split([t.numel() for t in self.tensors])):
            t.copy_(mean.view_as(t))
