"""Likelihood of a continuation: how the fact probes ask a model "Who is Victor?"."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.inference_mode()
def continuation_nats(model, prompt: bytes, continuation: bytes) -> float:
    """Mean nats per byte of `continuation` right after `prompt` (the prompt itself is not scored)."""
    if not continuation:
        raise ValueError("an empty continuation has no likelihood")
    text = (prompt or b"\n") + continuation
    x = torch.tensor(list(text), dtype=torch.long)[None]  # (1, T)
    log_probs = F.log_softmax(model.logits(x[:, :-1]).float(), dim=-1)  # (1, T-1, 256)
    picked = log_probs.gather(-1, x[:, 1:, None])[0, :, 0]  # (T-1,)
    return -picked[len(text) - len(continuation) - 1 :].mean().item()


def rank_among(model, prompt: bytes, answer: bytes, distractors: list[bytes]) -> tuple[float, int]:
    """The answer's bits per byte and its rank (1 = most likely) among the distractors, per byte so
    that a longer answer is not penalised for its length."""
    answer_nats = continuation_nats(model, prompt, answer)
    others = [continuation_nats(model, prompt, d) for d in distractors]
    return answer_nats / math.log(2), 1 + sum(n < answer_nats for n in others)
