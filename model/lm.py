"""The Forward-Forward byte language model: a stack of SSM layers, each scoring all 256 next bytes.

Every layer reads the REAL prefix stream (the layer below's output, detached during FF training) and
owns a candidate table E [256, G]. A candidate byte c enters only at the layer that scores it, so the
prefix state is computed once and shared by all 256 candidates. With linear units the goodness of c is

    g(c) = |q + E[c]|^2 - |q|^2 = 2 <q, E[c]> + |E[c]|^2,    q = W LN(z_t)

(|q|^2 is the same for every candidate, so it cancels in the softmax and is dropped): one matmul for
all candidates. Said plainly, this is a per-layer linear readout with a bias, close to "Mono-Forward"
local learning, not Hinton's original positive/negative goodness. `goodness="relu"` is the nonlinear
variant, g(c) = sum_j relu(q_j + E[c]_j)^2, which costs a [B, T, 256, G] broadcast.

Layer l's logits are the sum of its own scores and the (detached) scores of the layers below, so
p(c | prefix) is proportional to exp(sum of all layers' goodness): a proper distribution whose
cross-entropy is a true bits-per-byte. The same module trained end to end is the backprop baseline.

Glossary (shapes in comments use these):
    B  batch: windows per step            T  time: bytes per window
    D  d_model: width of the stream       N  d_state: SSM channels per layer
    G  d_score: width of a candidate table  V  VOCAB = 256 candidate next bytes
    L  n_layers                           z_l  layer l's features, what its head scores [B, T, D]
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from engram_ff.model.config import PRESETS, VOCAB, LMConfig  # noqa: F401  (PRESETS: re-exported)
from engram_ff.model.match import MatchModel
from engram_ff.model.memory import ContextMemory
from engram_ff.model.ssm import SSM


class Layer(nn.Module):
    """One FF layer's body: a gated SSM block and a GELU MLP block, both residual, pre-norm."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.mlp_in_head = cfg.mlp_in_head
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.ssm = SSM(cfg.d_model, cfg.d_state, cfg.max_memory)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc1 = nn.Linear(cfg.d_model, cfg.mlp_mult * cfg.d_model)
        self.fc2 = nn.Linear(cfg.mlp_mult * cfg.d_model, cfg.d_model)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(self.ln2(x)), approximate="tanh"))

    def forward(
        self, x: torch.Tensor, h0: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, D] -> (what the layer above reads [B, T, D], what this layer's head reads [B, T, D],
        last SSM state [B, N])."""
        y, h = self.ssm(self.ln1(x), h0)
        x = x + y
        z = x + self.mlp(x)
        return (x if self.mlp_in_head else z), z, h


class CandidateHead(nn.Module):
    """Goodness of every candidate next byte from one layer's features: z [..., D] -> [..., 256]."""

    def __init__(self, d_in: int, d_score: int, goodness: str):
        super().__init__()
        if goodness not in ("linear", "relu"):
            raise ValueError(f"goodness must be 'linear' or 'relu', not {goodness!r}")
        self.goodness = goodness
        self.ln = nn.LayerNorm(d_in)
        self.query = nn.Linear(d_in, d_score, bias=False)
        self.table = nn.Parameter(torch.randn(VOCAB, d_score) * 0.02)  # small: a new layer starts neutral

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        q = self.query(self.ln(z))
        if self.goodness == "linear":
            return F.linear(q, 2 * self.table, self.table.square().sum(-1))  # one addmm for all 256
        return F.relu(q[..., None, :] + self.table).square().sum(-1)


def memory_of(config: LMConfig) -> ContextMemory | None:
    """The context memory a config describes, empty; None where it has none (memory_bits 0)."""
    if not config.memory_bits:
        return None
    return ContextMemory(
        config.memory_orders,
        config.memory_bits,
        config.memory_dim,
        config.memory_ways,
        config.memory_count_orders,
        config.memory_count_bits,
    )


class FFLM(nn.Module):
    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(VOCAB, config.d_model)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.n_layers))
        self.heads = nn.ModuleList(
            CandidateHead(config.d_model, config.d_score, config.goodness) for _ in range(config.n_layers)
        )
        # the top, sparse layer: learned by its own rule (model/memory.py), never by a trainer's optimiser
        self.memory = memory_of(config)
        # and over everything, what the stream being read repeats (model/match.py): no weights, only state
        self.match = MatchModel() if config.match else None

    def layer_parameters(self) -> list[list[nn.Parameter]]:
        """The parameters each layer's local objective trains; the byte embedding belongs to layer 0."""
        groups = [list(layer.parameters()) + list(head.parameters()) for layer, head in zip(self.layers, self.heads)]
        groups[0] = list(self.embed.parameters()) + groups[0]
        return groups

    def features(
        self,
        x: torch.Tensor,
        detach: bool = True,
        state: list[torch.Tensor] | None = None,
        new_state: list | None = None,
    ) -> Iterator[torch.Tensor]:
        """Yield each layer's output z_l [B, T, D] for bytes x [B, T], lazily.

        Lazy so that FF training can run layer l's backward and free its graph before layer l+1 is
        computed. With detach=True the handoff between layers carries no gradient. SSM end states are
        appended to new_state when given (evaluation and prefill carry them across chunks).
        """
        h = self.embed(x)
        for i, layer in enumerate(self.layers):
            h, z, last = layer(h, None if state is None else state[i])
            if new_state is not None:
                new_state.append(last)
            yield z
            if detach:
                h = h.detach()

    def forward(
        self, x: torch.Tensor, state: list[torch.Tensor] | None = None, use_memory: bool = True
    ) -> tuple[torch.Tensor, list]:
        """x [B, T] -> (next-byte logits [B, T, 256], state after x: each layer's SSM state, then the memory's
        last bytes, then the match model's state). use_memory=False: the SSM layers' logits alone (what backprop
        trains, as FF's layers), neither the memory's nor the match model's. With a match model the logits are
        log-probabilities."""
        logits, new_state = self.ssm_forward(x, state)
        rest = [] if state is None else state[len(self.layers) :]
        if self.memory is not None:
            context = self.memory.empty_context(x.shape[0]) if state is None else rest.pop(0)
            if use_memory:
                memory_logits, context = self.memory(x, context, logits)
                logits = logits + memory_logits
            else:  # the layers' training reads only their own logits: the memory's context moves on unread
                context = torch.cat([context, x], 1)[:, -self.memory.P :]
            new_state.append(context)
        if self.match is not None:
            seen = rest or self.match.empty_state(x.shape[0])
            if use_memory:
                logits, seen = self.match(x, F.log_softmax(logits.float(), -1), seen)
            else:
                seen = self.match.unread(x, seen)
            new_state += seen
        return logits, new_state

    def ssm_forward(self, x: torch.Tensor, state: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, list]:
        """The SSM layers' logits [B, T, 256] and SSM states; a memory's entry at the end of `state` is ignored."""
        new_state: list[torch.Tensor] = []
        logits = sum(head(z) for head, z in zip(self.heads, self.features(x, False, state, new_state)))
        assert isinstance(logits, torch.Tensor), "an FFLM has at least one layer"
        return logits, new_state

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)[0]

    def init_state(self, batch: int) -> list[torch.Tensor]:
        p = self.embed.weight
        states = [torch.zeros(batch, self.config.d_state, dtype=p.dtype, device=p.device) for _ in self.layers]
        states += [] if self.memory is None else [self.memory.empty_context(batch)]
        return states + ([] if self.match is None else self.match.empty_state(batch))

    def step(self, state: list[torch.Tensor], byte: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Recurrent mode, one byte per stream: byte [B] -> (logits [B, 256], state). Inference only."""
        return self.recurrent()(state, byte)

    def recurrent(self) -> Recurrent:
        """The fast one-byte step for the current weights (a snapshot, rebuilt when any weight changes)."""
        version = [(p.data_ptr(), p._version) for p in self.parameters()] + [id(self.match)]
        if getattr(self, "_recurrent_version", None) != version:
            self._recurrent, self._recurrent_version = Recurrent(self), version
        return self._recurrent


class Recurrent:
    """A frozen snapshot of an FFLM for one-byte steps, its constants folded into the matmuls.

    At batch 1 a CPU spends its time dispatching torch ops, not multiplying, so this folds each
    LayerNorm's affine and the SSM's input gain into the next matrix, and each candidate head
    (query, table, |E|^2) into one [D, 256] matrix plus one shared bias: 15 ops per layer per byte.
    """

    @torch.no_grad()
    def __init__(self, model: FFLM):
        def fold(ln: nn.LayerNorm, lin: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
            """W, b such that LN_noaffine(x) @ W + b == lin(ln(x)); W is [in, out]."""
            return (lin.weight * ln.weight).T.contiguous(), lin.bias + lin.weight @ ln.bias

        self.embed = model.embed.weight.detach().clone()
        self.d_model, self.d_state = model.config.d_model, model.config.d_state
        self.linear_heads = model.config.goodness == "linear"
        self.mlp_in_head = model.config.mlp_in_head
        self.heads = model.heads
        self.memory = model.memory  # read live: its rows change by `learn`, not by a parameter's version
        self.match = model.match
        bias: torch.Tensor | int = 0
        self.layers: list[tuple[torch.Tensor, ...]] = []
        for layer, head in zip(model.layers, model.heads):
            assert isinstance(layer, Layer) and isinstance(head, CandidateHead), "what FFLM's two lists hold"
            a, gain = layer.ssm.decay()
            w_in, b_in = fold(layer.ln1, layer.ssm.in_proj)
            w_in[:, : self.d_state] *= gain
            b_in[: self.d_state] *= gain
            w1, b1 = fold(layer.ln2, layer.fc1)
            w_q, b_q = head.query.weight * head.ln.weight, head.query.weight @ head.ln.bias  # q = n W_q^T + b_q
            w_head = (w_q.T @ (2 * head.table.T)).contiguous()  # [D, 256]
            bias = bias + 2 * head.table @ b_q + head.table.square().sum(-1)
            out, fc2 = layer.ssm.out_proj, layer.fc2
            self.layers.append(
                (
                    w_in,
                    b_in,
                    a,
                    out.weight.T.contiguous(),
                    out.bias,
                    w1,
                    b1,
                    fc2.weight.T.contiguous(),
                    fc2.bias,
                    w_head,
                )
            )
        assert isinstance(bias, torch.Tensor), "an FFLM has at least one layer"
        self.bias = bias

    def __call__(self, state: list[torch.Tensor], byte: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        D, N = (self.d_model,), self.d_state
        h = self.embed[byte]  # [B, D]
        logits = self.bias if self.linear_heads else torch.zeros_like(self.bias)  # 0 + head(z), as a tensor
        new_state = []
        for (w_in, b_in, a, w_out, b_out, w1, b1, w2, b2, w_head), s, head in zip(self.layers, state, self.heads):
            ug = torch.addmm(b_in, F.layer_norm(h, D), w_in)  # [B, 2N]: gained input u, gate g
            s = torch.addcmul(ug[:, :N], a, s)  # h_t = a h_{t-1} + gain u_t
            h = torch.addmm(h, F.silu(ug[:, N:]).mul_(s), w_out).add_(b_out)
            z = torch.addmm(h, F.gelu(torch.addmm(b1, F.layer_norm(h, D), w1), approximate="tanh"), w2).add_(b2)
            logits = torch.addmm(logits, F.layer_norm(z, D), w_head) if self.linear_heads else logits + head(z)
            if not self.mlp_in_head:
                h = z
            new_state.append(s)
        rest = state[len(self.layers) :]
        if self.memory is not None:
            memory_logits, context = self.memory(byte[:, None], rest.pop(0), logits[:, None])
            logits = logits + memory_logits[:, 0]
            new_state.append(context)
        if self.match is not None:
            log_probs, seen = self.match(byte[:, None], F.log_softmax(logits.float(), -1)[:, None], rest)
            logits = log_probs[:, 0]
            new_state += seen
        return logits, new_state
