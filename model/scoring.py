"""Likelihood of a continuation: how the fact probes ask a model "Who is Victor?".

The prompt is read once, CHUNK bytes at a time with the SSM state carried across chunks (as
model.train.evaluate_nats reads a day), and every candidate continuation is scored from a copy of
that state, also in chunks. So memory is bounded by CHUNK whatever a facts file holds: scored in one
pass, a 1 MB prompt's [1, T, 256] logits and log-softmax alone took 2 GB and the pass peaked at 3.9 GB.
The SSM's parallel scan and its chunked reading agree to float rounding (tests/test_scoring.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CHUNK = 1024  # bytes a forward pass reads: [1, 1024, 256] float logits, 1 MiB


def _bytes(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()  # (T,)


@torch.inference_mode()
def read_prompt(model, prompt: bytes) -> tuple[torch.Tensor, list]:
    """(log-probabilities of the byte after the prompt (256,), the model's state after it). An empty
    prompt reads as one newline, the start of a line."""
    x = _bytes(prompt or b"\n")
    state, last = None, None
    for i in range(0, len(x), CHUNK):
        logits, state = model(x[None, i : i + CHUNK], state)  # (1, t, 256)
        last = logits[0, -1]
    assert last is not None and state is not None, "x holds at least one byte, so the loop ran"
    return F.log_softmax(last.float(), dim=-1), state


@torch.inference_mode()
def nats_after(model, prompt_state: tuple[torch.Tensor, list], continuation: bytes) -> float:
    """Mean nats per byte of `continuation` right after the prompt that `read_prompt` read."""
    if not continuation:
        raise ValueError("an empty continuation has no likelihood")
    log_probs, state = prompt_state
    y = _bytes(continuation)
    total = -log_probs[y[0]].item()
    for i in range(0, len(y) - 1, CHUNK):
        target = y[i + 1 : i + 1 + CHUNK]
        logits, state = model(y[None, i : i + len(target)], state)  # (1, t, 256); state is a new list
        total += F.cross_entropy(logits[0].float(), target, reduction="sum").item()
    return total / len(y)


def continuation_nats(model, prompt: bytes, continuation: bytes) -> float:
    """Mean nats per byte of `continuation` right after `prompt` (the prompt itself is not scored)."""
    return nats_after(model, read_prompt(model, prompt), continuation)


def rank_among(model, prompt: bytes, answer: bytes, distractors: list[bytes]) -> tuple[float, int]:
    """The answer's bits per byte and its rank (1 = most likely) among the distractors, per byte so
    that a longer answer is not penalised for its length. The prompt is read once for all of them."""
    after_prompt = read_prompt(model, prompt)
    answer_nats = nats_after(model, after_prompt, answer)
    others = [nats_after(model, after_prompt, d) for d in distractors]
    return answer_nats / math.log(2), 1 + sum(n < answer_nats for n in others)
