"""Phase 2 baseline: a Forward-Forward MLP that sees only a fixed window of previous bytes.

Same candidate heads and the same layer-local training as the SSM model (it exposes the same
`features` / `heads` / `layer_parameters` interface, so FFTrainer trains it unchanged); the only
difference is that its context is the last `window` bytes instead of a recurrent state, which is
what the SSM has to beat to earn its place.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from engram_ff.model.config import VOCAB
from engram_ff.model.lm import CandidateHead

PAD = VOCAB  # embedding row for "before the start of the text"


@dataclass
class WindowConfig:
    window: int = 16  # bytes of context
    d_embed: int = 32
    d_hidden: int = 512
    n_layers: int = 3
    d_score: int = 64
    goodness: str = "linear"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> WindowConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown WindowConfig keys: {sorted(unknown)}")
        return cls(**d)


class WindowMLP(nn.Module):
    def __init__(self, config: WindowConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB + 1, config.d_embed)
        widths = [config.window * config.d_embed] + [config.d_hidden] * config.n_layers
        self.norms = nn.ModuleList(nn.LayerNorm(w) for w in widths[:-1])
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.heads = nn.ModuleList(
            CandidateHead(config.d_hidden, config.d_score, config.goodness) for _ in range(config.n_layers)
        )

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        groups = [
            [*norm.parameters(), *layer.parameters(), *head.parameters()]
            for norm, layer, head in zip(self.norms, self.layers, self.heads)
        ]
        groups[0] = list(self.embed.parameters()) + groups[0]
        return groups

    def features(
        self, x: torch.Tensor, detach: bool = True, state: torch.Tensor | None = None, new_state: list | None = None
    ) -> Iterator[torch.Tensor]:
        """Yield each layer's activations [B, T, H]; state holds the window-1 bytes before x."""
        if state is None:
            state = self.init_state(x.shape[0])
        context = torch.cat([state, x], dim=1)  # [B, W-1+T]
        if new_state is not None:
            new_state.append(context[:, -(self.config.window - 1) :] if self.config.window > 1 else state)
        windows = context.unfold(1, self.config.window, 1)  # [B, T, W]
        h = self.embed(windows).flatten(2)  # [B, T, W*E]
        for norm, layer in zip(self.norms, self.layers):
            h = F.gelu(layer(norm(h)))
            yield h
            if detach:
                h = h.detach()

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        new_state: list[torch.Tensor] = []
        logits = sum(head(z) for head, z in zip(self.heads, self.features(x, False, state, new_state)))
        return logits, new_state[0]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[0]

    def init_state(self, batch: int) -> torch.Tensor:
        return torch.full((batch, self.config.window - 1), PAD, dtype=torch.long, device=self.embed.weight.device)

    def step(self, state: torch.Tensor, byte: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, state = self.forward(byte[:, None], state)
        return logits[:, 0], state

    def recurrent(self):
        return self.step
