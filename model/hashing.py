"""Hashes of the contexts that end at every byte: the last n bytes, for each order n, in one int64 matmul.

The context memory's rows (model/memory.py) and its counts (model/counts.py) are found by these hashes."""

from __future__ import annotations

import torch

MIX = 0x5851F42D4C957F2D  # odd 64-bit multipliers: the hash's avalanche (wrapping int64 arithmetic)
STEP = 0x100000001B3
ORDER_SALT = 0x2545F4914F6CDD1D


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


def locate(h: torch.Tensor, bits: int, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hashes [...] -> (the first of the context's `ways` rows in a table of 2^bits, a multiple of ways; an odd
    tag in 1..32767), from disjoint bits of the hash."""
    return (h >> 20) & ((1 << bits) - ways), (((h >> 44) & 0x7FFE) | 1).short()


def find_row(
    tags: torch.Tensor, h: torch.Tensor, bits: int, ways: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In a table of 2^bits rows carrying `tags` [S] (0: empty), in sets of `ways`: (the row holding each
    context of h [...], or its set's first if none does; hit [...]; its tag [...])."""
    first, tag = locate(h, bits, ways)
    match = tags[first[..., None] + torch.arange(ways)] == tag[..., None]  # [..., ways]
    return first + match.long().argmax(-1), match.any(-1), tag
