"""The match model (model/match.py): it copies what a stream repeats, reads a stream the same in chunks of any
size, stays a distribution, and leaves what the weights learn alone."""

import math
import random
from dataclasses import replace

import torch

from engram_ff.daemon import checkpoints
from engram_ff.daemon.config import load_config
from engram_ff.model import checkpoint as ckpt
from engram_ff.model.lm import FFLM, PRESETS
from engram_ff.model.match import MatchModel, left_out
from engram_ff.model.memory import learn
from engram_ff.model.train import evaluate_nats
from tests.daemon_helpers import FAST


def _text(seed: int = 0, n: int = 3000) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz ,.") for _ in range(n))


def _read(rule: MatchModel, x: torch.Tensor, log_probs: torch.Tensor, chunk: int) -> torch.Tensor:
    state, out = rule.empty_state(x.shape[0]), []
    for i in range(0, x.shape[1], chunk):
        adjusted, state = rule(x[:, i : i + chunk], log_probs[:, i : i + chunk], state)
        out.append(adjusted)
    return torch.cat(out, 1)


def _uniform(x: torch.Tensor) -> torch.Tensor:
    return torch.full((*x.shape, 256), -math.log(256))


def _bits(log_probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bits of each byte after the first [B, T - 1]."""
    return -log_probs[:, :-1].gather(-1, x[:, 1:, None])[..., 0] / math.log(2)


def test_a_repeated_passage_is_copied():
    """Random text costs 8 bits a byte under a uniform model; said again, the match model all but copies it."""
    once = _text()
    x = torch.tensor([list(once + once)])
    bits = _bits(_read(MatchModel(), x, _uniform(x), 1024), x)[0]
    first, second = bits[: len(once) - 1].mean(), bits[len(once) :].mean()
    assert first > 7.0  # few matches in random text, and those few mostly wrong
    assert second < 0.5, f"the second reading cost {second:.2f} bits a byte"


def test_any_chunk_size_reads_the_same_and_sums_to_one():
    x = torch.tensor([list(_text(1, 600) + _text(2, 300) + _text(1, 400)), list(_text(3, 1300))])
    log_probs = torch.log_softmax(torch.randn(*x.shape, 256), -1)
    whole = _read(MatchModel(), x, log_probs, 4096)
    for chunk in (1, 7, 256):
        assert torch.allclose(_read(MatchModel(), x, log_probs, chunk), whole, atol=1e-5)
    assert torch.allclose(whole.exp().sum(-1), torch.ones(x.shape), atol=1e-4)


def test_where_nothing_repeats_the_prediction_is_unchanged():
    x = torch.tensor([list(b"the quick brown fox jumps")])  # no three bytes twice
    log_probs = torch.log_softmax(torch.randn(*x.shape, 256), -1)
    assert torch.equal(_read(MatchModel(), x, log_probs, 5), log_probs)


def test_the_model_reads_the_same_in_parallel_and_byte_by_byte():
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"]).eval()
    assert model.match is not None
    x = torch.tensor([list(b"user: where is the key?\nassistant: under the mat.\n" * 3)])
    parallel = torch.log_softmax(model(x)[0], -1)
    state, steps = model.init_state(1), []
    for t in range(x.shape[1]):
        logits, state = model.step(state, x[:, t])
        steps.append(torch.log_softmax(logits, -1))
    assert torch.allclose(torch.stack(steps, 1), parallel, atol=1e-4)
    text = bytes(x[0].tolist())
    with_it = evaluate_nats(model, text)
    with left_out(model):
        assert model.match is None
        without = evaluate_nats(model, text)
    assert model.match is not None and with_it < without


def test_the_memory_learns_the_same_with_and_without_it():
    """The rows learn over the layers' logits alone, so a fact said four times in a day is learned all four times
    however well the match model would have copied the last three."""
    torch.manual_seed(0)
    with_match = FFLM(PRESETS["tiny"])
    without = FFLM(PRESETS["tiny"])
    without.load_state_dict(with_match.state_dict())
    without.match = None
    text = b"user: what is my locker code?\nassistant: your locker code is 4471.\n" * 4 + _text(5, 2000)
    assert learn(with_match, text) == learn(without, text)
    assert torch.equal(with_match.memory.rows, without.memory.rows)


def test_a_checkpoint_from_before_it_gets_it(tmp_path):
    """The match model has no weights: an older checkpoint's model gets it from the preset when the daemon loads
    it, and predicts what it predicted before wherever the text it reads does not repeat."""
    torch.manual_seed(0)
    old = FFLM(replace(PRESETS["tiny"], match=False))
    path = tmp_path / "old.pt"
    ckpt.save_model(path, old)
    loaded = ckpt.load_model(path).model
    assert isinstance(loaded, FFLM) and loaded.match is None
    checkpoints.upgrade(loaded, load_config(environ=FAST, data_dir=str(tmp_path / "data")))
    assert loaded.match is not None and loaded.config.match
    unique = b"the quick brown fox jumps"
    assert evaluate_nats(loaded, unique) == evaluate_nats(old, unique)
