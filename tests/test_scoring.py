"""Fact scoring reads prompt and continuation in chunks, carrying the SSM state: the same likelihood as
one pass over the whole text, in memory bounded by the chunk."""

import torch
import torch.nn.functional as F

from engram_ff.model import scoring
from engram_ff.model.lm import FFLM, PRESETS


def one_pass_nats(model, prompt: bytes, continuation: bytes) -> float:
    """The definition, as the scorer computed it before chunking: one forward pass over everything."""
    text = prompt + continuation
    x = torch.tensor(list(text))[None]  # (1, T)
    with torch.inference_mode():
        log_probs = F.log_softmax(model.logits(x[:, :-1]).float(), dim=-1)  # (1, T-1, 256)
    picked = log_probs.gather(-1, x[:, 1:, None])[0, :, 0]  # (T-1,)
    return -picked[len(prompt) - 1 :].mean().item()


def test_chunked_scoring_matches_one_pass_across_chunk_boundaries():
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"]).eval()
    prompt = bytes(range(256)) * 10  # 2,560 bytes: three chunks
    answer, other = b"the answer, " * 200, b"another one"  # 2,400 bytes: three chunks; and a short one
    for continuation in (answer, other):
        chunked = scoring.continuation_nats(model, prompt, continuation)
        assert abs(chunked - one_pass_nats(model, prompt, continuation)) < 1e-4
    # the prompt's state is shared by every candidate, so none may change it for the next
    after_prompt = scoring.read_prompt(model, prompt)
    first = scoring.nats_after(model, after_prompt, answer)
    scoring.nats_after(model, after_prompt, other)
    assert scoring.nats_after(model, after_prompt, answer) == first
    bpb, rank = scoring.rank_among(model, prompt, answer, [other, answer])
    assert abs(bpb * 0.6931471805599453 - one_pass_nats(model, prompt, answer)) < 1e-4
    expected = 1 + (one_pass_nats(model, prompt, other) < one_pass_nats(model, prompt, answer))
    assert rank == expected


def test_an_empty_prompt_reads_as_the_start_of_a_line():
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"]).eval()
    assert scoring.continuation_nats(model, b"", b"hello") == scoring.continuation_nats(model, b"\n", b"hello")
