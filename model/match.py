"""The match model: where the stream's last bytes occurred before in it, and the byte that followed them there.

The SSM layers carry the past in a fixed state, and a fixed state cannot hold a string read once to copy it
later (Jelassi et al. 2024, "Repeat After Me: Transformers are Better than State Space Models at Copying",
arXiv 2402.01032). The context memory (model/memory.py) learns what it reads, but when the daemon has it
learn, not while the model scores a text. So a day that repeats itself, a fact told four times or a greeting
said every session, cost the model of the night before as much the fourth time as the first, where a
compressor copies it. A compressor's match model is what copies: at each byte it finds the last place in the
stream where the same last bytes ended, and predicts the byte that came next there. This is one, as the
model's last stage over the layers' and the memory's prediction p:

    p'(c*) = q,    p'(c) = p(c) (1 - q) / (1 - p(c*))  for every other byte c

c* is the byte the match predicts, q how often such a prediction came true so far in this stream, in its cell
of (how long the match is, how likely p found c*): a running count that starts from p(c*) itself, worth PRIOR
predictions, so that a stream's first matches change little and a stream that repeats itself is soon copied.
Where no match is found, p' = p.

It has no weights. All it knows is the stream it reads, the last HISTORY bytes and the counts, which the
model's state carries as it carries the SSM's. So `ask` still answers from the weights alone: a question is
a new stream, in which the match model finds only the question. And the memory learns without it
(model/memory.py `learn` reads the layers' logits): a fact said four times in a day is copied by this when
the day is read, and learned by the rows all four times, as before.

Glossary: B streams, T bytes, H bytes of history (at most HISTORY), K cells (CELLS: lengths x odds).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from engram_ff.model.hashing import MIX

MINIMUM = (
    24,
    12,
    6,
    3,
)  # the match is the last place where the last 24 bytes ended, else 12, 6, then 3 (docs/match.md)
LONGEST = 64  # a match's length is counted back this far at most
LENGTHS = (8, 12, 16, 24, 32, 48)  # the cells' edges in match length (below 8, then 8-11, ...)
ODDS = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)  # the cells' edges in log-odds of p(c*)
PRIOR = 2.0  # p(c*) counts as this many predictions in each cell: a cell's first matches change little
FEW = 4  # positions at most that `matches` finds by searching the bytes rather than by sorting keys
HISTORY = 1 << 16  # bytes of the stream the state carries: a day of chat is 35-45 kB
CELLS = (len(LENGTHS) + 1) * (len(ODDS) + 1)
TINY = 1e-6  # the least a probability is taken to be: the bytes other than c* never gain mass from a clamp


class MatchModel:
    """The match model's rule. Its state is the stream's: history [B, H] (its last bytes), counts [B, K, 2] (hits and
    predictions per cell), pending [B, 2] (the last byte's prediction and cell, which the next byte settles)."""

    def __init__(self, minimum: tuple[int, ...] = MINIMUM, prior: float = PRIOR, history: int = HISTORY):
        self.minimum, self.prior, self.history = minimum, prior, history  # arguments, for the ablations
        self.lengths, self.odds = torch.tensor(LENGTHS), torch.tensor(ODDS)

    def empty_state(self, batch: int) -> list[torch.Tensor]:
        return [torch.zeros(batch, 0, dtype=torch.long), torch.zeros(batch, CELLS, 2), _nothing_pending(batch)]

    def matches(self, s: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """s [B, n] bytes -> for each position j >= start: (the byte that followed the last earlier place where the
        bytes up to j occurred, -1 where none [B, n - start]; how many bytes agree back from both, at most LONGEST
        [B, n - start]). The longest MINIMUM is tried first: a longer match is the likelier to go on."""
        B, n = s.shape
        if n - start <= FEW:
            return self._few_matches(s, start)
        predicted = torch.full((B, n - start), -1, dtype=torch.long)
        length = torch.zeros(B, n - start, dtype=torch.long)
        back = torch.arange(LONGEST)
        words = _words(s)
        for m in self.minimum:
            first = max(start, m - 1)  # the first position with m bytes ending there
            if first >= n:
                continue
            keys = _keys(words, m)  # [B, n - m + 1]: the m bytes ending at m - 1, m, ...
            order = torch.sort(keys, dim=1, stable=True).indices  # equal keys in order of position
            sorted_keys = keys.gather(1, order)
            same = F.pad(sorted_keys[:, 1:] == sorted_keys[:, :-1], (1, 0))
            before = torch.where(same, order.roll(1, 1), -m)  # the same key's previous place, -m where none
            at = torch.empty_like(order).scatter_(1, order, before)[:, first - (m - 1) :] + (m - 1)  # [B, n - first]
            j = torch.arange(first, n)
            here, there = j[:, None] - back, at[..., None] - back  # [n - first, LONGEST], [B, n - first, LONGEST]
            agree = (there >= 0) & (_rows(s, here) == _rows(s, there))  # the match lies before j: here > there
            run = agree.long().cumprod(-1).sum(-1)  # [B, n - first]
            mine = predicted[:, first - start :]
            take = (at >= 0) & (run >= m) & (mine < 0)  # a key's collision agrees on fewer than m bytes: no match
            mine[take] = s.gather(1, (at + 1).clamp(max=n - 1))[take]
            length[:, first - start :][take] = run[take]
        return predicted, length

    def _few_matches(self, s: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`matches` for a few positions (generation reads one byte a step), by a search of the bytes themselves:
        a dozen tensor operations a step cost more than the search."""
        B, n = s.shape
        predicted = torch.full((B, n - start), -1, dtype=torch.long)
        length = torch.zeros(B, n - start, dtype=torch.long)
        for b, row in enumerate(s.to(torch.uint8).numpy()):
            text = row.tobytes()
            for j in range(start, n):
                for m in self.minimum:
                    if j + 1 < m:
                        continue
                    at = text.rfind(text[j + 1 - m : j + 1], 0, j)  # where the same m bytes began, ending before j
                    if at < 0:
                        continue
                    there = at + m - 1
                    run = m
                    while run < LONGEST and there - run >= 0 and text[there - run] == text[j - run]:
                        run += 1
                    predicted[b, j - start], length[b, j - start] = text[there + 1], run
                    break
        return predicted, length

    def cell(self, length: torch.Tensor, odds: torch.Tensor) -> torch.Tensor:
        """The cell of a match this long whose byte the model found this likely (log-odds)."""
        return torch.bucketize(length, self.lengths, right=True) * (len(ODDS) + 1) + torch.bucketize(
            odds, self.odds, right=True
        )

    def __call__(
        self, x: torch.Tensor, log_probs: torch.Tensor, state: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x [B, T] bytes, log p [B, T, 256] of the byte after each, the state before x -> (log p' [B, T, 256], the
        state after x)."""
        if x.shape[1] == 1:
            return self._one(x, log_probs, state)
        history, counts, pending = state
        B, H = history.shape
        T = x.shape[1]
        s = torch.cat([history, x], 1)  # [B, H + T]
        predicted, length = self.matches(s, H)  # [B, T]
        matched = predicted >= 0
        log_probs = log_probs.float()
        log_p = log_probs.gather(-1, predicted.clamp(min=0)[..., None])[..., 0]  # [B, T]: log p(c*)
        p_star, p_not = log_p.exp(), (-torch.expm1(log_p)).clamp(min=TINY)  # 1 - p(c*), exact where p(c*) is near 1
        cell = self.cell(length, log_p - p_not.log())
        # x[t] settles the prediction made at the byte before it: the history's last (pending), then x[t - 1]'s
        settled = torch.cat([pending[:, :1], predicted[:, :-1]], 1)  # [B, T]
        settled_cell = torch.cat([pending[:, 1:], cell[:, :-1]], 1)
        events = torch.zeros(B, T, CELLS, 2)
        events[..., 0].scatter_(-1, settled_cell[..., None], (settled == x).float()[..., None])
        events[..., 1].scatter_(-1, settled_cell[..., None], (settled >= 0).float()[..., None])
        seen = counts[:, None] + events.cumsum(1)  # [B, T, K, 2]: what the stream had settled by x[t]
        hits, tries = seen.gather(2, cell[..., None, None].expand(B, T, 1, 2))[:, :, 0].unbind(-1)
        q = ((hits + self.prior * p_star) / (tries + self.prior)).clamp(min=TINY)
        q_not = ((tries - hits + self.prior * p_not) / (tries + self.prior)).clamp(min=TINY)  # 1 - q, as exactly
        rest = q_not.log() - p_not.log()
        adjusted = (log_probs + rest[..., None]).scatter(-1, predicted.clamp(min=0)[..., None], q.log()[..., None])
        out = torch.where(matched[..., None], adjusted, log_probs)
        state = [s[:, -self.history :], counts + events.sum(1), torch.stack([predicted[:, -1], cell[:, -1]], 1)]
        return out, state

    def _one(
        self, x: torch.Tensor, log_probs: torch.Tensor, state: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`__call__` for one byte a stream, as generation reads: the same rule on Python numbers, a dozen tensor
        operations where the general path takes fifty (each costs microseconds at this size)."""
        history, counts, pending = state
        s = torch.cat([history, x], 1)
        predicted, length = self._few_matches(s, s.shape[1] - 1)
        counts, out = counts.clone(), log_probs.detach().float().clone()  # inference only, as `Recurrent` is
        settle = [
            (b, c, cell, c == byte) for b, ((c, cell), byte) in enumerate(zip(pending.tolist(), x[:, 0].tolist()))
        ]
        for b, c, cell, hit in settle:
            if c >= 0:
                counts[b, cell] += torch.tensor([float(hit), 1.0])
        now = []
        for b, (c, run) in enumerate(zip(predicted[:, 0].tolist(), length[:, 0].tolist())):
            if c < 0:
                now.append([-1, 0])
                continue
            log_p = float(out[b, 0, c])
            p, p_not = math.exp(log_p), max(-math.expm1(log_p), TINY)
            odds = log_p - math.log(p_not)
            cell = bisect.bisect_right(LENGTHS, run) * (len(ODDS) + 1) + bisect.bisect_right(ODDS, odds)
            hits, tries = counts[b, cell].tolist()
            q = max((hits + self.prior * p) / (tries + self.prior), TINY)
            q_not = max((tries - hits + self.prior * p_not) / (tries + self.prior), TINY)
            out[b, 0] += math.log(q_not) - math.log(p_not)
            out[b, 0, c] = math.log(q)
            now.append([c, cell])
        return out, [s[:, -self.history :], counts, torch.tensor(now)]

    def unread(self, x: torch.Tensor, state: list[torch.Tensor]) -> list[torch.Tensor]:
        """The state after x [B, T] was read without a prediction to adjust (the layers' training): the history
        moves on, the counts stay, nothing is pending."""
        history, counts, _ = state
        return [torch.cat([history, x], 1)[:, -self.history :], counts, _nothing_pending(x.shape[0])]


@contextmanager
def left_out(model) -> Iterator[None]:
    """Within the block, the model predicts without its match model (one that has none is left as it is): what the
    benchmarks score beside the model itself."""
    match = getattr(model, "match", None)
    if match is None:
        yield
        return
    model.match = None
    try:
        yield
    finally:
        model.match = match


def _nothing_pending(batch: int) -> torch.Tensor:
    """[B, 2]: no prediction (-1) in cell 0, for the next byte to settle."""
    return torch.tensor([-1, 0]).repeat(batch, 1)


def _words(s: torch.Tensor) -> torch.Tensor:
    """s [B, n] bytes -> the 8 bytes ending at each position, packed in an int64 [B, n] (zeros before the start)."""
    padded = F.pad(s, (7, 0))
    n = s.shape[1]
    word = padded[:, 7:].clone()
    for i in range(1, 8):
        word |= padded[:, 7 - i : 7 - i + n] << (8 * i)
    return word


def _keys(words: torch.Tensor, m: int) -> torch.Tensor:
    """The packed words [B, n] -> a key of the m bytes ending at each position from m - 1 on [B, n - m + 1]: the
    bytes themselves up to 8, beyond that 8 bytes at a time folded in by a multiply (a collision is caught by
    `matches`, which counts the bytes that agree)."""
    first = m - 1
    key = words[:, first:] & ((1 << (8 * min(m, 8))) - 1) if m < 8 else words[:, first:]
    left, back = m - 8, 8
    while left > 0:
        part = words[:, first - back : words.shape[1] - back]
        key = key * MIX + (part & ((1 << (8 * left)) - 1) if left < 8 else part)
        left, back = left - 8, back + 8
    return key


def _rows(s: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """s [B, n] at index [B, T, L] (or [T, L], the same for every row) -> [B, T, L], an index below 0 reading s[0]."""
    index = index.clamp(min=0)
    if index.dim() == 2:
        return s[:, index]
    return s.gather(1, index.flatten(1)).view_as(index)
