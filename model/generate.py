"""Streaming generation in recurrent mode: constant memory per byte, however long the output."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from engram_ff.model.train import as_byte_tensor

if TYPE_CHECKING:
    from engram_ff.model.lm import FFLM
    from engram_ff.model.window_mlp import WindowMLP

NOISE_BLOCK = 1024  # bytes of sampling noise drawn per call into the generator


@torch.inference_mode()
def generate(
    model: FFLM | WindowMLP,
    prompt: bytes,
    n_bytes: int,
    temperature: float = 0.8,
    generator: torch.Generator | None = None,
) -> Iterator[bytes]:
    """Yield n_bytes sampled bytes, one at a time, continuing `prompt` (an empty prompt starts at a newline).

    The prompt is read in parallel mode, then each byte costs one recurrent step. Sampling is
    Gumbel-max (argmax of logits / T plus Gumbel noise drawn in blocks), which is exact softmax sampling
    at temperature T with fewer per-byte tensor ops than softmax + multinomial; T <= 0 is greedy.
    """
    model.eval()
    tokens = as_byte_tensor(prompt or b"\n")[None]
    logits, state = model(tokens)
    logits, step = logits[:, -1], model.recurrent()
    for i in range(n_bytes):
        if temperature > 0:
            if i % NOISE_BLOCK == 0:
                u = torch.rand(NOISE_BLOCK, logits.shape[-1], generator=generator).clamp_(min=1e-20)
                noise = -torch.log(-torch.log(u))
            byte = torch.argmax(logits / temperature + noise[i % NOISE_BLOCK], dim=-1)
        else:
            byte = torch.argmax(logits, dim=-1)
        yield bytes([int(byte.item())])  # argmax: an integer
        logits, state = step(state, byte)
