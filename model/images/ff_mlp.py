"""A Forward-Forward classifier: FF layers over an image whose first pixels carry a label.

Training shows each image with its true label (the positive) and with wrong labels (negatives, never the
true one), and every layer learns on its own to tell them apart by goodness. The negatives are sampled
from the readout's current belief, so the labels the model confuses with the truth come up most often.
Two ways to predict:
- goodness: show all 10 labels, sum the goodness over the layers, take the best label (10 passes);
- readout: one pass with a neutral label, then a softmax layer over the detached, normalised activities.

The first layer's cost hardly depends on how many labels it sees. Every label vector has the same length,
so the length of the layer's input does not depend on the label, and the label's share of W x is W's
label columns times the label vector: one matmul for the image, then a cheap (10, H) add per label.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from engram_ff.model import losses
from engram_ff.model.images.ff import FFConfig, FFLayer, normalise


@dataclass
class FFMLPConfig:
    d_in: int = 784
    n_labels: int = 10  # the label overwrites the first n_labels inputs
    hidden: tuple[int, ...] = (1000, 1000)
    goodness: str = "sum"
    loss: str = "softmax"
    theta: float = 2.0  # pair loss only; with "sum" goodness it should grow with the width
    negatives: str = "model"  # wrong labels from the readout's belief, or "uniform" (model/losses.py)
    n_negatives: int = 1  # wrong labels per image; n_labels - 1 = all of them
    label_scale: float = 1.0  # length of the overlaid label vector; pixels are in [0, 1]
    lr: float = 5e-4
    readout_lr: float = 5e-4


class FFMLP(nn.Module):
    one_hot: torch.Tensor  # buffers, registered in __init__
    neutral: torch.Tensor
    wrong: torch.Tensor

    def __init__(self, cfg: FFMLPConfig):
        super().__init__()
        losses.check(cfg.loss, cfg.negatives, losses=("softmax", "pair"), negative_kinds=("uniform", "model"))
        if not 1 <= cfg.n_negatives <= cfg.n_labels - 1:
            raise ValueError(f"n_negatives must be between 1 and {cfg.n_labels - 1}, not {cfg.n_negatives}")
        self.cfg = cfg
        ff = FFConfig(goodness=cfg.goodness, loss=cfg.loss, theta=cfg.theta, lr=cfg.lr)
        dims = (cfg.d_in, *cfg.hidden)
        self.layers = nn.ModuleList(FFLayer(a, b, ff) for a, b in zip(dims[:-1], dims[1:]))
        self.readout = nn.Linear(sum(cfg.hidden), cfg.n_labels)
        self.readout_opt = torch.optim.Adam(self.readout.parameters(), lr=cfg.readout_lr, fused=True)
        L, s = cfg.n_labels, cfg.label_scale
        self.register_buffer("one_hot", torch.eye(L) * s)  # (L, L): row y is label y's vector
        self.register_buffer("neutral", torch.full((1, L), s / math.sqrt(L)))  # (1, L), same length s
        # wrong[y] lists the labels other than y: (L, L-1)
        self.register_buffer("wrong", torch.tensor([[c for c in range(L) if c != y] for y in range(L)]))

    @property
    def ff_layers(self) -> Sequence[FFLayer]:
        """self.layers as what it holds: to a type checker an nn.ModuleList holds plain Modules."""
        return cast(Sequence[FFLayer], self.layers)

    def image_term(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, d_in) -> the image's share of the first layer's pre-activation (B, H1) and the input
        normalisation's scale (B, 1); the first L inputs are overwritten by the label, so left out."""
        blank = F.pad(x[:, self.cfg.n_labels :], (self.cfg.n_labels, 0))  # (B, d_in), label inputs zeroed
        length = (blank.pow(2).sum(-1, keepdim=True) + self.cfg.label_scale**2).sqrt()  # (B, 1)
        scale = math.sqrt(self.cfg.d_in) / length  # as in normalise(): the input gets length sqrt(d_in)
        return F.linear(blank, self.ff_layers[0].linear.weight) * scale, scale  # full W: no sliced gradient

    def first_layer(self, image: torch.Tensor, scale: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """image (B, H1), scale (B, 1) from image_term(); labels (C, L) or (B, C, L) label vectors of
        length label_scale -> (B, C, H1): layers[0] on the image with each label overlaid."""
        W, b = self.ff_layers[0].linear.weight, self.ff_layers[0].linear.bias  # (H1, d_in), (H1,)
        label_term = (labels @ W[:, : self.cfg.n_labels].T) * scale[:, :, None]  # (B, C, H1)
        return F.relu((image + b)[:, None, :] + label_term)

    def train_batch(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One step of the readout and of every layer on images x (B, d_in), labels y (B,); returns the
        sum of the layers' losses."""
        image, scale = self.image_term(x)
        # the readout learns from one neutral pass; its belief also picks the negatives, hard ones most often
        logits = self.readout(self.features_from(image, scale))  # (B, L)
        readout_loss = F.cross_entropy(logits, y)
        self.readout_opt.zero_grad(set_to_none=True)
        readout_loss.backward()
        self.readout_opt.step()
        if self.cfg.n_negatives == self.cfg.n_labels - 1:
            negatives = self.wrong[y]  # (B, L-1): all of them
        else:
            belief = F.softmax(logits.detach(), dim=1) if self.cfg.negatives == "model" else torch.ones_like(logits)
            p = belief.scatter(1, y[:, None], 0.0)  # never the true label
            negatives = torch.multinomial(p + 1e-12, self.cfg.n_negatives)  # (B, K)
        labels = torch.cat([y[:, None], negatives], dim=1)  # (B, 1+K): the positive first
        h = self.first_layer(image, scale, self.one_hot[labels])  # (B, 1+K, H1)
        loss = self.ff_layers[0].learn(h)
        for layer in self.ff_layers[1:]:
            h = layer(h.detach())  # (B, 1+K, H)
            loss += layer.learn(h)
        return loss

    @torch.no_grad()
    def features_from(self, image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """image, scale from image_term() -> (B, sum(hidden)): every layer's normalised activities under a
        neutral label, without gradient."""
        h = self.first_layer(image, scale, self.neutral)[:, 0]  # (B, H1)
        out = [normalise(h)]
        for layer in self.ff_layers[1:]:
            h = layer(h)
            out.append(normalise(h))
        return torch.cat(out, dim=1)

    @torch.no_grad()
    def goodness_scores(self, image: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """-> (B, L): each label's goodness summed over the layers."""
        h = self.first_layer(image, scale, self.one_hot)  # (B, L, H1)
        total = self.ff_layers[0].goodness(h)
        for layer in self.ff_layers[1:]:
            h = layer(h)
            total += layer.goodness(h)
        return total

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, d_in) -> predicted labels (B,) by each readout."""
        image, scale = self.image_term(x)
        return {
            "goodness": self.goodness_scores(image, scale).argmax(1),
            "readout": self.readout(self.features_from(image, scale)).argmax(1),
        }

    def scale_lr(self, factor: float) -> None:
        """Set every learning rate to its configured value times factor (for a schedule)."""
        for layer in self.ff_layers:
            layer.set_lr(self.cfg.lr * factor)
        for group in self.readout_opt.param_groups:
            group["lr"] = self.cfg.readout_lr * factor
