"""Context counts: how often each byte followed each context of the last n bytes, blended over the layers below.

The context memory's rows (model/memory.py) learn facts from one reading, but as a model of ordinary text
they are weak: over bench learning's month a plain order-4 count model codes the days at 2.204 bits per
byte, bz2 at 2.315, the daemon's model at 2.384 (bench/results/counts-orders.md). This table is that count
model, kept as part of the model's weights. For each order n, shortest first, a context seen before
reshapes the prediction p from below by interpolated absolute discounting:

    p_n(c) = (max(count_n(c) - D(c), 0) + escape_n * p_{n-1}(c)) / total_n           p_0 = softmax(lower)
    escape_n = sum over the next bytes b seen of min(count_n(b), D(b))

with the discount D growing with the count, D1 < D2 < D3 for a byte seen once, twice, three times or more
(modified Kneser-Ney's discounts, Chen and Goodman 1998, without its continuation counts).

and the model's prediction is the geometric mean of the blend and the layers' own, weighted WEIGHT:

    log p = WEIGHT * log p_blend + (1 - WEIGHT) * log softmax(lower)                    (+ the memory's rows)

On the frozen layers, with the memory's rows for orders 6-32 on top, WEIGHT 0.5 predicted the later days
0.08-0.10 bits per byte better than the memory alone, 0.7 less well, and the blend itself (WEIGHT 1) worse
than either: a seen-once context trusted fully is overconfident where the rows also speak (scratch runs,
docs/benchmarks/learning.md, "Where the gap to bz2 lies").

Counts learn by counting: the night's new text, once, in `learn`; never the replay or a reread, which
would count a byte twice. A context lives in one of WAYS rows of its set (the one with the smallest total
is evicted for a new context); a row keeps its SLOTS most frequent next bytes, and a byte not among them
evicts the slot with the smallest count (the total and the distinct count still remember it, so the blend
renormalises). Counts are halved in a row whose total reaches HALVE_AT, so old text counts less.

Glossary: O orders, K = SLOTS, S = 2^bits rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from engram_ff.model.hashing import context_hashes, find_row, hash_weights

# D of a next byte counted once, twice, 3 or more times. In the daemon's month (bench learning), new days at
# 2.214 bits per byte against 2.225 with 0.6/0.9/1.2 and 2.236 with one D = 0.6, at or below bz2 on 28 of 31
# days against 26 and 24, the same facts (learning-month-kn-strong, -kn, -counts). On the frozen layers it lost
# a fact said once 30 days on that 0.6/0.9/1.2 kept (memory-sweep-16a, -15); the month lost none.
DISCOUNTS = (0.7, 1.2, 2.0)
WEIGHT = 0.5  # the blend's share of the log prediction (docstring)
SLOTS = 32  # next bytes a row keeps: 16 cost 0.16 bits per byte against exact counts, 32 cost 0.02
WAYS = 8
HALVE_AT = 1 << 16  # a row's total at which its counts are halved


class ContextCounts(nn.Module):
    ids: torch.Tensor  # buffers, declared for type checkers
    counts: torch.Tensor
    total: torch.Tensor
    distinct: torch.Tensor
    tags: torch.Tensor

    def __init__(self, orders: tuple[int, ...], bits: int):
        super().__init__()
        self.orders, self.bits = tuple(sorted(orders)), bits
        self.weights = hash_weights(self.orders)
        self.P = max(self.orders) - 1
        self.register_buffer("ids", torch.zeros(1 << bits, SLOTS, dtype=torch.uint8))  # [S, K] next bytes
        self.register_buffer("counts", torch.zeros(1 << bits, SLOTS))  # [S, K]
        self.register_buffer("total", torch.zeros(1 << bits))  # [S] every next byte counted
        self.register_buffer("distinct", torch.zeros(1 << bits, dtype=torch.int16))  # [S] next bytes ever seen
        self.register_buffer("tags", torch.zeros(1 << bits, dtype=torch.int16))  # [S] 0: an empty row
        self._slots = torch.arange(WAYS)
        self.discounts, self.weight = DISCOUNTS, WEIGHT  # the constants; bench/memory_sweep.py varies them

    def hashes(self, xe: torch.Tensor, T: int) -> torch.Tensor:
        """xe [B, P' + T], P' >= P bytes of context then T positions -> hashes [B, T, O] of this table's orders."""
        return context_hashes(xe[:, xe.shape[1] - T - self.P :], self.weights)

    def find(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the row holding each context [...], or its set's first; hit [...]; tag [...])."""
        return find_row(self.tags, h, self.bits, WAYS)

    @torch.no_grad()
    def adjust(self, h: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
        """The counts' term for logits `lower` [B, T, 256] at contexts h [B, T, O]: added to lower, it gives
        WEIGHT * log p_blend + (1 - WEIGHT) * log softmax(lower), up to a constant per position."""
        logp = torch.log_softmax(lower.float(), -1)
        p = logp.exp()
        idx, hit, _ = self.find(h)
        for o in range(len(self.orders)):  # shortest context first: each longer one reshapes the shorter's
            rows = idx[..., o]
            total = self.total[rows]
            seen = hit[..., o] & (total > 0)
            if not seen.any():
                continue
            n, counts = total.clamp(min=1)[..., None], self.counts[rows]  # [B, T, 1], [B, T, K]
            d = discount(counts, self.discounts)
            evicted = (self.distinct[rows] - (counts > 0).sum(-1)).clamp(min=0)  # counted once, most likely
            escape = torch.minimum(counts, d).sum(-1) + self.discounts[0] * evicted  # [B, T]
            blended = p * (escape[..., None] / n)
            blended.scatter_add_(-1, self.ids[rows].long(), (counts - d).clamp(min=0) / n)
            p = torch.where(seen[..., None], blended / blended.sum(-1, keepdim=True), p)
        return self.weight * (p.clamp(min=1e-30).log() - logp)

    @torch.no_grad()
    def learn(self, h: torch.Tensor, y: torch.Tensor, keep: torch.Tensor, rate: float = 1.0) -> None:
        """Count the bytes y [...] after their contexts h [..., O], where `keep` [...], each `rate` times (the
        daemon's retry rate after rejected nights: a night retried counts less, as the rows step less)."""
        h, y = h[keep].reshape(-1, len(self.orders)), y[keep]
        if not len(y):
            return
        h, y = h.reshape(-1), y.repeat_interleave(len(self.orders))  # one (context, byte) pair per order
        self._claim(h)
        rows, hit, _ = self.find(h)
        rows, y = rows[hit], y[hit]  # a context left without a row (more new ones than its set has rows)
        pairs, times = torch.unique(rows * 256 + y, return_counts=True)
        times = times.float() * rate
        rows, byte = pairs // 256, pairs % 256
        self.total.index_add_(0, rows, times)
        slot_of = (self.ids[rows].long() == byte[:, None]) & (self.counts[rows] > 0)  # [M, K]
        known = slot_of.any(-1)
        flat = rows[known] * SLOTS + slot_of[known].long().argmax(-1)
        self.counts.view(-1).index_add_(0, flat, times[known])
        rows, byte, times = rows[~known], byte[~known], times[~known]
        self.distinct.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int16)).clamp_(max=256)
        while len(rows):  # new next bytes: each evicts its row's least counted slot, one per row a round
            order = torch.argsort(rows, stable=True)
            rows, byte, times = rows[order], byte[order], times[order]
            first = torch.ones_like(rows, dtype=torch.bool)
            first[1:] = rows[1:] != rows[:-1]
            r = rows[first]
            slot = self.counts[r].argmin(-1)
            self.ids[r, slot] = byte[first].to(torch.uint8)
            self.counts[r, slot] = times[first]
            rows, byte, times = rows[~first], byte[~first], times[~first]
        full = self.total >= HALVE_AT
        if full.any():
            self.counts[full] /= 2
            self.total[full] = self.counts[full].sum(-1)

    def _claim(self, h: torch.Tensor) -> None:
        """A row for every new context in h [N]: of its set, the one with the smallest total is emptied."""
        first, hit, tag = self.find(h)
        first, tag = first[~hit] & -WAYS, tag[~hit]
        if not len(first):
            return
        key = torch.unique(first.long() * 65536 + tag.long())
        first, tag = key // 65536, (key % 65536).short()  # each new context once
        taken = torch.empty(0, dtype=torch.long)
        for _ in range(WAYS):  # contexts sharing a set take its rows one at a time, never one taken here
            ways = first[:, None] + self._slots
            totals = self.total[ways].masked_fill(torch.isin(ways, taken), math.inf)
            victim, pick = _first_of_each(first + totals.argmin(-1))
            self.ids[victim], self.counts[victim], self.total[victim], self.distinct[victim] = 0, 0, 0, 0
            self.tags[victim] = tag[pick]
            taken = torch.cat([taken, victim])
            rest = torch.ones_like(first, dtype=torch.bool)
            rest[pick] = False
            first, tag = first[rest], tag[rest]
            if not len(first):
                return

    def used_rows(self) -> int:
        return int(self.tags.count_nonzero())


def discount(counts: torch.Tensor, discounts: tuple[float, float, float] = DISCOUNTS) -> torch.Tensor:
    """D for each count [...]: D1, D2 or D3 by the count rounded (halved counts fall between)."""
    once, twice, more = discounts
    return torch.where(counts < 1.5, once, torch.where(counts < 2.5, twice, more))


def _first_of_each(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct values, the index of each one's first occurrence)."""
    unique, inverse = torch.unique(values, return_inverse=True)
    first = torch.full_like(unique, len(values)).scatter_reduce_(0, inverse, torch.arange(len(values)), "amin")
    return unique, first
