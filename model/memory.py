"""The context memory: the model's fast, sparse layer, which learns a sentence from one reading.

The SSM layers learn slowly and everywhere at once: every step moves every weight, so a fact said once
is either not learned or learned at the price of everything else (bench/results/learning-recipes.md).
This layer is the opposite. For every byte position it hashes the contexts that end there, the last
n bytes for each order n in `orders`, into rows of one big table, and the rows it finds add a vector
each; a per-order output matrix turns their sum into logits that are added to the SSM layers' logits:

    m_t = sum_o hit_o(t) * R[idx_o(t)]                   [G]
    logits_t = SSM logits_t + sum_o hit_o(t) * R[idx_o(t)] @ W_o     [256]

Reading a sentence changes only the rows of the contexts in it, so nothing else is disturbed. Each row
carries a tag (a second hash of its context and order): a row whose tag is not the context's reads as
empty (hit = 0), so an unseen context adds nothing rather than another context's noise, and the
contexts of text never read cost nothing on held-out text.

It learns by its own local rule, test-then-train, in ONE pass over the night's new text in order
(`learn`), the way a compressor does: each chunk is first scored with the rows as they are, then each
row it used takes a step down the gradient of that chunk's cross-entropy (the SSM logits are detached
inputs: no gradient reaches another layer). The row step is normalised per row (row-wise Adagrad), so a
context's first occurrence moves its row by a fixed length, `lr * order_scale`, and later ones by less
and less, like a count; and since W_o is fitted on scores of text the rows had not yet seen, it learns
how far a row read once can be trusted at each order. Passing over the same text again would teach
the rows to trust themselves on text they have already seen; the one pass keeps them honest.

Why these numbers, from `python /work/scratch/mem2.py`-style sweeps on the fact night (bench/fact_night.py's
days, facts said 1-8 times, one night; held-out: a play none of the days came from; docs/memory.md):
row lr 3 -> 6 with the per-order scale n/32 kept 11 of 12 facts and the held-out bpb at 2.34 (the SSM
alone: 2.59); lr 1 kept 7 of 12, lr 3 without the order scale 10 of 12 at 2.76 held-out; 2^18 rows
evicted enough of three days to lose facts (hist 2.0 bpb), 2^20 did not; G = 8, 16, 32 were within noise.

Glossary: O orders, G row width (`dim`), S = 2^bits rows, P = max(orders) - 1 bytes of context carried.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB = 256
MIX = 0x5851F42D4C957F2D  # odd 64-bit multipliers: the hash's avalanche (wrapping int64 arithmetic)
STEP = 0x100000001B3
ORDER_SALT = 0x2545F4914F6CDD1D
ROW_LR = 6.0  # a row's first step, at the highest order (docstring)
OUT_LR = 0.03  # Adam's rate for the output matrices W_o
CHUNK = 256  # bytes per stream per learning step: a step reads [streams, CHUNK]
STREAMS = 16  # the night's text is read as this many contiguous streams side by side


def _signed(v: int) -> int:
    """An integer mod 2^64 as the int64 that holds the same bits."""
    v %= 1 << 64
    return v - (1 << 64) if v >= 1 << 63 else v


def hash_weights(orders: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [P + 1, O], salt [O]) such that ((x + 1) @ W + salt) * MIX hashes, for each order n, the n bytes x
    that end a window of P + 1: the byte i places back from the newest is weighted STEP^(n - 1 - i), mod 2^64
    (int64 matmul wraps), and the order's own salt keeps orders apart. One matmul hashes every order."""
    P = max(orders) - 1
    W = torch.zeros(P + 1, len(orders), dtype=torch.long)
    for o, n in enumerate(orders):
        for i in range(n):
            W[P - i, o] = _signed(STEP ** (n - 1 - i))
    return W, torch.tensor([_signed(n * ORDER_SALT) for n in orders])


def context_hashes(xe: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """xe [B, P + T] (P bytes of context, then T positions) -> 64-bit hashes [B, T, O] of the last n
    bytes ending at each position, for each order n. Byte 0 before a stream's start counts as context."""
    W, salt = weights
    windows = (xe + 1).unfold(1, W.shape[0], 1)  # [B, T, P + 1]
    return (windows @ W + salt) * MIX


class ContextMemory(nn.Module):
    def __init__(self, orders: tuple[int, ...], bits: int, dim: int):
        super().__init__()
        self.orders, self.bits, self.P = tuple(orders), bits, max(orders) - 1
        self.weights = hash_weights(self.orders)
        self.register_buffer("rows", torch.zeros(1 << bits, dim))  # R [S, G]
        self.register_buffer("tags", torch.zeros(1 << bits, dtype=torch.int32))  # 0: an empty row
        self.register_buffer("seen", torch.zeros(1 << bits))  # each row's sum of squared gradients (Adagrad)
        # W [O, G, 256] and its Adam moments: buffers, not parameters, so that no optimiser but `learn` moves them
        self.register_buffer("out", torch.randn(len(orders), dim, VOCAB) * dim**-0.5)
        self.register_buffer("out_m", torch.zeros(len(orders), dim, VOCAB))
        self.register_buffer("out_v", torch.zeros(len(orders), dim, VOCAB))
        self.register_buffer("out_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("order_scale", torch.tensor([n / max(orders) for n in orders]))

    def locate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hashes [...] -> (row index, tag in 1..2^19), from disjoint bits of the hash."""
        return (h >> 20) & ((1 << self.bits) - 1), (((h >> 44) & 0x7FFFF) + 1).int()

    def read(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row vectors [B, T, O, G], zero where the tag differs; row index [B, T, O]; hit [B, T, O])."""
        idx, tag = self.locate(h)
        hit = self.tags[idx] == tag
        return self.rows[idx] * hit[..., None], idx, hit

    def logits(self, m: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Row vectors m [B, T, O, G] -> logits [B, T, 256]: one matmul over the orders' outputs stacked."""
        out = self.out if out is None else out
        return m.flatten(-2) @ out.flatten(0, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T] bytes after `context` [B, P] -> (logits [B, T, 256], the context after x)."""
        xe = torch.cat([context, x], 1)
        m, _, _ = self.read(context_hashes(xe, self.weights))
        return self.logits(m), xe[:, -self.P :]

    def empty_context(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.P, dtype=torch.long, device=self.rows.device)

    @torch.no_grad()
    def _claim(self, h: torch.Tensor) -> None:
        """Give every context of h a row: a row holding another context's tag is emptied and re-tagged."""
        idx, tag = self.locate(h)
        miss = self.tags[idx] != tag
        self.rows[idx[miss]] = 0
        self.seen[idx[miss]] = 0
        self.tags[idx[miss]] = tag[miss]

    def learn_chunk(self, lower: torch.Tensor, xe: torch.Tensor, y: torch.Tensor) -> float:
        """One test-then-train step: score y [B, T] from the SSM's logits `lower` [B, T, 256] and the rows as
        they are, then step the rows and W. Returns the chunk's summed nats, scored before the step."""
        h = context_hashes(xe, self.weights)
        self._claim(h)
        m, idx, hit = self.read(h)
        m.requires_grad_(True)
        out = self.out.clone().requires_grad_(True)
        logits = lower + self.logits(m, out)
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), reduction="sum")
        grad_m, grad_out = torch.autograd.grad(loss, (m, out))
        with torch.no_grad():
            self._adam_out(grad_out)
            g = (grad_m * hit[..., None]).reshape(-1, grad_m.shape[-1])
            rows, where = torch.unique(idx.reshape(-1), return_inverse=True)
            g_row = torch.zeros(len(rows), g.shape[1]).index_add_(0, where, g)
            scale = torch.zeros(len(rows)).index_put_((where,), self.order_scale.expand_as(idx).reshape(-1))
            self.seen[rows] += g_row.square().sum(-1)
            self.rows[rows] -= ROW_LR * scale[:, None] * g_row / (self.seen[rows, None].sqrt() + 1e-8)
        return loss.item()

    def _adam_out(self, grad: torch.Tensor, beta1: float = 0.9, beta2: float = 0.999) -> None:
        self.out_steps += 1
        t = int(self.out_steps)
        self.out_m.lerp_(grad, 1 - beta1)
        self.out_v.lerp_(grad.square(), 1 - beta2)
        step = OUT_LR * math.sqrt(1 - beta2**t) / (1 - beta1**t)
        self.out.addcdiv_(self.out_m, self.out_v.sqrt().add_(1e-8), value=-step)


@torch.no_grad()
def learn(model, text: bytes) -> float:
    """The memory's night: one test-then-train pass over `text` (the SSM layers' logits as they now are).
    Returns the bits per byte the pass scored before learning each chunk: a prequential score of the text."""
    memory: ContextMemory = model.memory
    tokens = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    per = len(tokens) // STREAMS
    if per < 2:
        return float("nan")
    streams = torch.cat([memory.empty_context(STREAMS), tokens[: per * STREAMS].view(STREAMS, per)], 1)
    was_training = model.training
    model.eval()
    state, total, counted = None, 0.0, 0
    for s in range(memory.P, streams.shape[1] - 1, CHUNK):
        e = min(s + CHUNK, streams.shape[1] - 1)
        x, y = streams[:, s:e], streams[:, s + 1 : e + 1]
        lower, state = model.ssm_forward(x, state)
        with torch.enable_grad():
            total += memory.learn_chunk(lower, streams[:, s - memory.P : e], y)
        counted += y.numel()
    model.train(was_training)
    return total / counted / math.log(2)
