"""The words both Forward-Forward models use, and the local losses they share.

Glossary:
  candidate    what a layer scores: a possible next byte (the language model, model/lm.py) or a label
               overlaid on an image (model/images/)
  goodness g   a layer's score of one candidate; higher means "more likely the real one"
  positive     the real candidate; negatives are the others a loss contrasts it with

Losses (`loss=`):
  "softmax"  cross-entropy of a softmax of goodness over the candidates: the positive and its negatives
             (the language model scores all 256 bytes at once, so every other byte is a negative)
  "sampled"  the softmax over the positive and K sampled negatives, each score corrected by the sampler's
             log q, so it still estimates the full softmax (language model only)
  "pair"     Hinton's softplus pair loss: the positive's goodness above a threshold, each negative's below
             it. Images use a fixed threshold theta; the language model uses the positive's own goodness,
             since all candidates of one position share the prefix.

Negatives (`negatives=`; how many: `n_negatives=`):
  "uniform"  any candidate but the positive, equally likely
  "unigram"  by frequency in the training data so far (language model)
  "model"    from the model's own belief, so the confusable candidates come up most often (images: the
             readout's softmax; language model: the layers below)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("softmax", "sampled", "pair")
NEGATIVES = ("uniform", "unigram", "model")


def check(loss: str, negatives: str, *, losses=LOSSES, negative_kinds=NEGATIVES) -> None:
    """Refuse a loss or negative sampler outside the vocabulary (or outside what a model supports)."""
    if loss not in losses:
        raise ValueError(f"loss must be one of {', '.join(map(repr, losses))}, not {loss!r}")
    if negatives not in negative_kinds:
        raise ValueError(f"negatives must be one of {', '.join(map(repr, negative_kinds))}, not {negatives!r}")


def softmax_loss(g: torch.Tensor) -> torch.Tensor:
    """g (B, 1+K) with the positive first: cross-entropy of a softmax of goodness over the candidates.

    Only differences of goodness matter, so no threshold is needed, and each negative is weighed by how
    much it currently competes with the positive: the hard ones get most of the gradient.
    """
    return (torch.logsumexp(g, dim=1) - g[:, 0]).mean()


def pair_loss(g: torch.Tensor, theta: float) -> torch.Tensor:
    """Hinton's loss, g (B, 1+K) with the positive first: push it above theta, the negatives below."""
    return (F.softplus(theta - g[:, 0]) + F.softplus(g[:, 1:] - theta).mean(1)).mean()
