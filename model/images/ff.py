"""The image classifier's Forward-Forward layer: a ReLU layer that learns from a local objective of its own.

A layer sees several candidates of the same example: candidate 0 is the positive (real data), the rest
are negatives. Its goodness (the sum or the mean of its squared activities) should be high for the
positive and low for the negatives. The input is length-normalised, so only the direction of the
previous layer's activity passes on: a layer cannot cheat by reading the previous layer's goodness.
Each layer owns its optimiser and callers hand it detached inputs, so no gradient crosses a layer boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from engram_ff.model import losses


@dataclass
class FFConfig:
    goodness: str = "sum"  # "sum" or "mean" of squared activities
    loss: str = "softmax"  # model/losses.py: "softmax" over the positive and negatives, or Hinton's "pair"
    theta: float = 2.0  # the pair loss's threshold; the softmax loss is shift-invariant and ignores it
    lr: float = 1e-3
    weight_decay: float = 0.0


def pick_device() -> torch.device:
    """The GPU when there is one, else the CPU; picked once by callers and passed down."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def normalise(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(..., D) -> (..., D) of length sqrt(D): only the direction passes on, at unit scale per input."""
    return x * (math.sqrt(x.shape[-1]) / (x.norm(dim=-1, keepdim=True) + eps))  # one pass over x


def goodness(h: torch.Tensor, kind: str) -> torch.Tensor:
    """(..., D) activities -> (...) goodness."""
    if kind == "mean":
        return h.pow(2).mean(-1)
    if kind == "sum":
        return h.pow(2).sum(-1)
    raise ValueError(f"goodness must be 'mean' or 'sum', not {kind!r}")


class FFLayer(nn.Module):
    """A ReLU layer trained by its own loss and its own optimiser."""

    def __init__(self, d_in: int, d_out: int, cfg: FFConfig):
        super().__init__()
        losses.check(cfg.loss, "model", losses=("softmax", "pair"))
        self.cfg = cfg
        self.linear = nn.Linear(d_in, d_out)
        self.opt = torch.optim.Adam(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d_in) -> (..., d_out)"""
        return F.relu(self.linear(normalise(x)))

    def goodness(self, h: torch.Tensor) -> torch.Tensor:
        return goodness(h, self.cfg.goodness)

    def loss(self, h: torch.Tensor) -> torch.Tensor:
        """h (B, 1+K, D) activities of the positive then K negatives -> scalar local loss."""
        g = self.goodness(h)  # (B, 1+K)
        return losses.pair_loss(g, self.cfg.theta) if self.cfg.loss == "pair" else losses.softmax_loss(g)

    def learn(self, h: torch.Tensor) -> float:
        """One optimiser step on this layer's loss. h (B, 1+K, D) must come from a detached input."""
        loss = self.loss(h)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr
