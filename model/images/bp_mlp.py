"""The backprop baseline: an MLP of exactly the FF classifier's shape, trained end to end."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class BPMLPConfig:
    d_in: int = 784
    n_labels: int = 10
    hidden: tuple[int, ...] = (1000, 1000)
    lr: float = 5e-4


class BPMLP(nn.Module):
    def __init__(self, cfg: BPMLPConfig):
        super().__init__()
        self.cfg = cfg
        dims = (cfg.d_in, *cfg.hidden)
        blocks = [m for a, b in zip(dims[:-1], dims[1:]) for m in (nn.Linear(a, b), nn.ReLU())]
        self.net = nn.Sequential(*blocks, nn.Linear(dims[-1], cfg.n_labels))
        self.opt = torch.optim.Adam(self.parameters(), lr=cfg.lr, fused=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, d_in) -> (B, n_labels) logits"""
        return self.net(x)

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> float:
        loss = F.cross_entropy(self(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"bp": self(x).argmax(1)}

    def scale_lr(self, factor: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = self.cfg.lr * factor
