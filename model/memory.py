"""The context memory: the model's fast, sparse top layer, which learns a sentence from one reading.

The SSM layers learn slowly and everywhere at once: every step moves every weight, so a fact said once
is either not learned or learned at the price of everything else (bench/results/learning-recipes.md).
This layer is the opposite. At every byte it hashes the contexts that end there, the last n bytes for
each order n in `orders`, to rows of one big table; each row it finds adds its vector, through a fixed
random matrix per order, to the SSM layers' logits:

    logits_t = SSM logits_t + sum_o hit_o(t) * R[row_o(t)] @ W_o        R [S, G], W_o [G, 256]

(With `counts`, the SSM logits are first reshaped by next-byte counts of the short contexts, model/counts.py:
a count model of text, which the rows are not; the rows then learn against that, as they are read.)

Reading a sentence changes only the rows of the contexts in it, so nothing else is disturbed. A row
carries a tag (other bits of its context's hash): a context no row's tag matches reads as empty, so an
unseen context adds nothing rather than another context's noise. Each context may live in any of the
`ways` rows of its set (8 in the presets, 2 before: with two, 13 days after a fact day 9 of 12 facts were
answered, with 4, 8 or 16 ways 11; bench/results/memory-sweep-6.md).

Which rows, and which go. A new context whose set still has an empty row gets it: a row costs nothing
there. In a full set, a byte whose contexts have no rows claims rows for only the two shortest of them and
the longest (CLAIM_ORDERS): the shortest new context is the one that tells this byte's place from the
places seen before, the longest the one later text is least likely to share; the orders between repeat
them. A byte the step still gets wrong claims the two longest still without rows at each settling step: it
needs a context more its own (claiming as in full sets throughout, the tiny model got 156 bytes of
tests/test_memory.py's text wrong after settling from the short end, against 112 before settling, and 101
from the long end). A new row takes an empty row of its set, else evicts the row stepped longest ago
(`stamp`, the pass that last stepped it; of one pass, the one that learned least), except that no pass
takes more than half of a set from older passes (PASS_SHARE), so a huge paste cannot wipe what came
before it. Why: at 35 kB of chat a day the table fills in about two months, and after that what a person
said once must outlive a month of new rows. It did not when a new row evicted the row that had learned
least (smallest `seen`): rows of old, often-read text never left, and new ones evicted each other. With
the table filled by 60 days of other text first, 5 of 12 facts were answered 30 days after the fact day,
and 11 now, at 0.016 bits per byte on held-out text; evicting the oldest alone kept 7, claiming three
orders alone 9. In the first month, before the table is full, 10 facts against 11 and the same held-out
text (bench/results/memory-sweep-17a.md, -17b.md, -17c.md); through the daemon's nights, docs/memory.md.

It learns by its own local rule, test-then-train, in ONE pass over the night's new text in order (`learn`),
the way a compressor does: each chunk is scored with the rows as they are, then the new contexts of every
byte that cost more than `claim_nats` get rows (as above), and every row the chunk used takes one step down
the gradient of the chunk's cross-entropy (the SSM logits are detached inputs: no gradient reaches another
layer). The step is normalised per row (row-wise Adagrad), so a context's first occurrence moves its row by
a fixed length, ROW_LR * n / max(orders), and later ones by less and less, like a count. Then the chunk is
read again, and each byte that is still not the most likely one settles: more of its contexts get rows, and
its rows up to SETTLE more steps, on that byte's loss alone. One step is not enough where the question and
its answer share words ("When is my dentist appointment?" / "Your dentist appointment is on..."): the shared
contexts learn '?' and ' ' at once, the question's surprise wins, and greedy generation answered the
question with itself; the settling steps give the answer's longer contexts, which the question's do not
share, the last word. Bytes already right get nothing, so ordinary text is not learned twice over. Passing
over the whole text again would teach the rows to trust themselves on text they have just seen; settling
keeps to the bytes that need it. (The daemon also has it read the night's replay of older text, which the
layers below have moved under: docs/memory.md says why and what it measured.)

W never learns, and that is what makes a fact last: a first version learned W (and then gains per
order) on the prequential loss, and 12 days after a fact night the facts' rows were still there but W
had turned under them: answers at 0.98 bits per byte with W learned, 1.37 with gains learned, 0.31 with
W fixed (scratch scripts during development; docs/memory.md lists what was tried).

The numbers, from `python -m engram_ff.bench.memory_sweep` (bench/results/memory-sweep*.md: three days
of dialogue, a fourth with 12 facts said 1-8 times, 12 more days, the SSM layers frozen). Settling (3
steps) and claiming every context (CLAIM_NATS 0) together answered 12 of 12 facts the next morning and
9 of 12 twelve days on, against 9 and 4 with neither, the held-out text at 2.216 bits per byte either way
(memory-sweep-4.md); settling alone gave 12 and 6, claiming everywhere alone 9 and 7, and 54 % of the
rows used after 16 days against 35 %. ROW_LR 4 against 3 (7 and 3 facts) and 6 (10 and 4, held-out
2.279); a first step growing as the order squared lost 3 facts the next morning; the "count" rule (a
running mean) with ROW_LR 8 kept 9 of 12 facts twelve days on but held-out text at 2.498.

Glossary: O orders, G row width (`dim`), S = 2^bits rows, P = max(orders) - 1 bytes of context carried.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from engram_ff.model.counts import ContextCounts
from engram_ff.model.hashing import context_hashes, find_row, hash_weights, locate

VOCAB = 256
ROW_LR = 4.0  # a new row's first step, at the highest order (docstring)
ROW_RULE = "adagrad"  # or "count": each use a unit step scaled 1/n (bench/results/memory-sweep-3.md)
ORDER_POWER = 1.0  # a first step's length grows with the order as (n / max(orders)) ** ORDER_POWER
CLAIM_NATS = 0.0  # a new context gets a row only where its byte cost more than this: 0, everywhere (docstring)
CLAIM_ORDERS = 2  # a byte's contexts with no row: rows for this many of the shortest, and the longest; 0: all
PASS_SHARE = 0.5  # the most of a set one pass may take from the rows of older passes (docstring)
STAMP_MAX = 32767  # `stamp` is int16: at this clock every stamp moves back by half (`tick`)
SETTLE = 3  # the most extra steps for a byte the pass still gets wrong (docstring)
SEEN_MAX = 60000.0  # `seen` is float16: its largest value (a row's steps are below ROW_LR / 245 by then)
CHUNK = 256  # bytes per stream per learning step: a step reads [STREAMS, CHUNK]
STREAMS = 16  # the night's text is read as this many contiguous streams side by side
IGNORE = -100  # a target that is padding: cross_entropy's ignore_index, so nothing learns from it


class ContextMemory(nn.Module):
    rows: torch.Tensor  # the buffers, declared for type checkers (register_buffer sets them)
    tags: torch.Tensor
    seen: torch.Tensor
    stamp: torch.Tensor
    clock: torch.Tensor
    out: torch.Tensor
    order_scale: torch.Tensor

    def __init__(
        self,
        orders: tuple[int, ...],
        bits: int,
        dim: int,
        ways: int = 2,
        counts: tuple[int, ...] = (),
        count_bits: int = 0,
    ):
        super().__init__()
        if ways < 1 or ways & (ways - 1) or ways > 1 << bits:
            raise ValueError(f"memory ways must be a power of 2 up to the rows, got {ways}")
        self.orders, self.bits, self.ways, self.P = tuple(orders), bits, ways, max(orders) - 1
        self.weights = hash_weights(self.orders)
        self.row_lr, self.claim_nats = ROW_LR, CLAIM_NATS  # instance settings, so that a sweep can vary them
        self.count_rate = 1.0  # what a byte counts: `learn`'s rate, lower on nights retried after a rejection
        # float16 rows and `seen`, int16 tags and stamps: 22 bytes a row with G = 8, so 2^23 rows take 176 MiB
        self.register_buffer("rows", torch.zeros(1 << bits, dim, dtype=torch.float16))  # R [S, G]
        self.register_buffer("tags", torch.zeros(1 << bits, dtype=torch.int16))  # 0: an empty row
        self.register_buffer("seen", torch.zeros(1 << bits, dtype=torch.float16))  # sum of squared gradients
        self.register_buffer("stamp", torch.zeros(1 << bits, dtype=torch.int16))  # the pass that last stepped it
        self.register_buffer("clock", torch.zeros(1, dtype=torch.int32))  # the passes read (`tick`)
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("out", torch.randn(len(orders), dim, VOCAB, generator=generator) * dim**-0.5)  # W
        self.order_power = ORDER_POWER
        self.row_rule = ROW_RULE
        self.settle = SETTLE
        self.claim_orders, self.claim_longest = CLAIM_ORDERS, True  # the sweep's ablations: 0 (all), False
        self.claim_free = True  # a context whose set has an empty row gets one; False: CLAIM_ORDERS even then
        self.evict, self.pass_share = "stamp", PASS_SHARE  # or "seen": the row that learned least, as before
        self.register_buffer("order_scale", torch.tensor([n / max(orders) for n in orders]))
        self._slots = torch.arange(ways)
        if counts and max(counts) > max(orders):
            raise ValueError(f"memory counts reach back at most {max(orders)} bytes (the longest order); got {counts}")
        # next-byte counts of the short contexts, blended under the rows (model/counts.py)
        self.counts = ContextCounts(counts, count_bits) if counts else None

    def locate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hashes [...] -> (the first of the context's `ways` rows; its tag): model/hashing.py `locate`."""
        return locate(h, self.bits, self.ways)

    def find(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the row holding each context [...], or its first row if none does; hit [...]; tag [...])."""
        return find_row(self.tags, h, self.bits, self.ways)

    def read(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(row vectors [B, T, O, G], zero where no row holds the context; row index [B, T, O]; hit [B, T, O])."""
        idx, hit, _ = self.find(h)
        return self.rows[idx].float() * hit[..., None], idx, hit

    def logits(self, m: torch.Tensor) -> torch.Tensor:
        """Row vectors m [B, T, O, G] -> logits [B, T, 256]: one matmul over the orders' W stacked."""
        return m.to(self.out.dtype).flatten(-2) @ self.out.flatten(0, 1)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, lower: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T] bytes after `context` [B, P], the layers' logits for them `lower` [B, T, 256] (needed where
        the memory has counts) -> (logits to add to lower [B, T, 256], the context after x)."""
        xe = torch.cat([context, x], 1)
        m, _, _ = self.read(context_hashes(xe, self.weights))
        logits = self.logits(m)
        if self.counts is not None:
            if lower is None:
                raise ValueError("a context memory with counts blends them over the layers' logits: pass lower")
            logits = logits + self.counts.adjust(self.counts.hashes(xe, x.shape[1]), lower)
        return logits, xe[:, -self.P :]

    def empty_context(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.P, dtype=torch.long, device=self.rows.device)

    def used_rows(self) -> int:
        return int(self.tags.count_nonzero())

    def tick(self) -> None:
        """A new pass: what it steps is stamped newer than all before it."""
        if int(self.clock) >= STAMP_MAX:  # every row's age kept but those older than half the clock's range
            self.stamp.sub_(STAMP_MAX // 2).clamp_(min=0)
            self.clock -= STAMP_MAX // 2
        self.clock += 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in ("stamp", "clock"):  # a checkpoint from before stamps: every row as old as the others
            state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _claim(self, h: torch.Tensor, settling: bool = False) -> None:
        """Give the new contexts of h [N, O] rows (CLAIM_ORDERS of them for each byte, the docstring says which),
        each evicting a row of its set (`_eviction_order`)."""
        first, hit, tag = self.find(h)
        sets = first & -self.ways
        ways = sets[..., None] + self._slots  # [N, O, ways]: the rows of each context's set
        taken = self.tags[ways] != 0
        new = ~hit
        if self.claim_orders:
            if settling:  # a byte still wrong: the longest contexts still without a row
                chosen = new.flip(-1).cumsum(-1).flip(-1) <= self.claim_orders
            else:
                chosen = new.cumsum(-1) <= self.claim_orders
                chosen[:, -1] |= self.claim_longest
            full = taken.all(-1)
            new &= (chosen | ~full) if self.claim_free else chosen  # in a set with an empty row, a row is free
        victim = sets[new] + self._eviction_order(ways[new], taken[new]).argmin(-1)  # ties: the set's first row
        tag = tag[new]
        # Two new contexts of a set pick the same row: the later one takes it, as a serial write would. Written
        # with duplicates, which of them won depended on how torch split the write between threads, and two
        # runs of the same night on 2 threads ended with different tables.
        victim, last = _last_of_each(victim)
        self.rows[victim] = 0
        self.seen[victim] = 0
        self.tags[victim] = tag[last]
        self.stamp[victim] = self.clock.to(self.stamp.dtype)

    def _eviction_order(self, ways: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
        """Rows [N, ways] of N sets, which of them hold a context -> keys [N, ways], the row to evict smallest: an
        empty one, else the one stepped longest ago, of one pass the one that learned least; where this pass holds
        its share of the set, only an empty row or one of its own."""
        seen = self.seen[ways].double()
        if self.evict == "seen":
            return seen
        stamp = self.stamp[ways]
        key = torch.where(taken, stamp.double() * 65536 + seen, -1.0)  # seen < 65536: the pass, then the learning
        this_pass = (stamp == self.clock.to(stamp.dtype)) & taken
        at_share = this_pass.sum(-1, keepdim=True) >= self.ways * self.pass_share
        return torch.where(at_share & taken & ~this_pass, math.inf, key)

    def learn_chunk(
        self, lower: torch.Tensor, xe: torch.Tensor, y: torch.Tensor, counted: torch.Tensor | None = None
    ) -> float:
        """One test-then-train step: score y [B, T] from the SSM's logits `lower` [B, T, 256], the counts and
        the rows as they are, then give the surprising new contexts rows and step every row used, and count
        the bytes where `counted` [B, T] (default: all). Returns the chunk's summed nats, scored before."""
        h = context_hashes(xe, self.weights)
        if self.counts is not None:  # the rows learn over the counts' blend, as they will be read
            hc = self.counts.hashes(xe, y.shape[1])
            lower = lower + self.counts.adjust(hc, lower)
        m, _, _ = self.read(h)
        m.requires_grad_(True)
        logits = lower + self.logits(m)
        cost = F.cross_entropy(logits.transpose(1, 2), y, reduction="none", ignore_index=IGNORE)  # [B, T]
        (grad_m,) = torch.autograd.grad(cost.sum(), (m,))
        with torch.no_grad():
            self._claim(h[(y != IGNORE) & (cost >= self.claim_nats)])
            idx, owned, _ = self.find(h)  # every context now, but the losers of a collision within this chunk
            self._step(idx, owned, grad_m)
        for _ in range(self.settle):  # the bytes the step still gets wrong: rows for their contexts, more steps
            with torch.no_grad():
                wrong = (y != IGNORE) & ((lower + self.logits(self.read(h)[0])).argmax(-1) != y)  # [B, T]
                if not wrong.any():
                    break
                self._claim(h[wrong], settling=True)
            m, idx, owned = self.read(h)
            m.requires_grad_(True)
            logits = lower + self.logits(m)
            cost_now = F.cross_entropy(logits.transpose(1, 2), y, reduction="none", ignore_index=IGNORE)
            (grad_m,) = torch.autograd.grad((cost_now * wrong).sum(), (m,))
            with torch.no_grad():
                self._step(idx, owned & wrong[..., None], grad_m)
        if self.counts is not None:
            keep = (y != IGNORE) if counted is None else (y != IGNORE) & counted
            self.counts.learn(hc, y, keep, self.count_rate)
        return float(cost.detach().sum())

    def _step(self, idx: torch.Tensor, owned: torch.Tensor, grad_m: torch.Tensor) -> None:
        """Step the rows idx [B, T, O] where `owned`, along grad_m [B, T, O, G] summed per row."""
        g = (grad_m * owned[..., None]).reshape(-1, grad_m.shape[-1])
        rows, where = torch.unique(idx.reshape(-1), return_inverse=True)
        g_row = torch.zeros(len(rows), g.shape[1]).index_add_(0, where, g)
        order_scale = self.order_scale**self.order_power
        # each row's order, from the entries that own it: an entry that merely points at its set's first row
        # (a context with no row) wrote its own order's scale there too before, and which write won was the
        # threads' race (two runs of one night on 2 threads differed)
        mine = owned.reshape(-1)
        scale = torch.zeros(len(rows)).scatter_reduce_(
            0, where[mine], order_scale.expand_as(idx).reshape(-1)[mine], "amax"
        )
        if self.row_rule == "count":  # each use a unit step along the gradient, scaled 1/n: a running mean
            uses = torch.zeros(len(rows)).index_add_(0, where, owned.reshape(-1).float())
            seen = (self.seen[rows].float() + uses).clamp_(max=SEEN_MAX)
            self.seen[rows] = seen.to(self.seen.dtype)
            norm = g_row.norm(dim=-1, keepdim=True) + 1e-8
            step = self.row_lr * scale[:, None] * g_row / norm * (uses / seen.clamp(min=1))[:, None]
        else:
            seen = (self.seen[rows].float() + g_row.square().sum(-1)).clamp_(max=SEEN_MAX)
            self.seen[rows] = seen.to(self.seen.dtype)
            step = self.row_lr * scale[:, None] * g_row / (seen[:, None].sqrt() + 1e-8)
        self.rows[rows] = (self.rows[rows].float() - step).to(self.rows.dtype)
        self.stamp[rows[scale > 0]] = self.clock.to(self.stamp.dtype)  # a row an entry owns has its order's scale


def _last_of_each(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the distinct values, the index of each one's last occurrence)."""
    unique, inverse = torch.unique(values, return_inverse=True)
    last = torch.full_like(unique, -1).scatter_reduce_(0, inverse, torch.arange(len(values)), "amax")
    return unique, last


@torch.no_grad()
def learn(model, text: bytes, rate: float = 1.0, count_bytes: int | None = None) -> float:
    """The memory's night: one test-then-train pass over `text` (the SSM layers' logits as they now are),
    its steps `rate` times their usual length (the daemon's retry rate after rejected nights). Its counts
    count the first `count_bytes` of the text (default: all): new text, not the replay or a reread, which
    they have counted before.
    Returns the bits per byte the pass scored before learning each chunk: a prequential score of the text.

    The text is read as STREAMS side-by-side streams, each starting P bytes before its first prediction, so
    that every context is whole wherever a stream begins (a fact cut by a stream's start was lost before:
    tests/test_memory.py). The SSM starts each stream afresh, as `evaluate_nats` starts a text."""
    memory: ContextMemory = model.memory
    tokens = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    n, P = len(tokens), memory.P
    if n < 2:
        return float("nan")
    per = -(-(n - 1) // STREAMS)  # predictions per stream; the last stream's end is padding, never learned
    pad = STREAMS * per + 1 - n
    ext = torch.cat([memory.empty_context(1)[0], tokens, torch.zeros(pad, dtype=torch.long)])
    streams = ext.unfold(0, P + per + 1, per)  # [STREAMS, P + per + 1]: context, inputs, the last target
    targets = streams[:, P + 1 :].clone()  # [STREAMS, per]
    targets.view(-1)[n - 1 :] = IGNORE  # stream-major order is text order: the padding is the tail
    counted = torch.arange(STREAMS * per).view(STREAMS, per) < (n if count_bytes is None else count_bytes) - 1
    was_training = model.training
    model.eval()
    state, total, row_lr = None, 0.0, memory.row_lr
    memory.row_lr *= rate
    memory.tick()
    memory.count_rate = rate
    for s in range(0, per, CHUNK):
        e = min(s + CHUNK, per)
        lower, state = model.ssm_forward(streams[:, P + s : P + e], state)
        with torch.enable_grad():
            total += memory.learn_chunk(lower, streams[:, s : P + e], targets[:, s:e], counted[:, s:e])
    memory.row_lr, memory.count_rate = row_lr, 1.0
    model.train(was_training)
    return total / (n - 1) / math.log(2)
