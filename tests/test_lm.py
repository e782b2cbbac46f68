import math

import pytest
import torch

from engram_ff.model.lm import FFLM, PRESETS, LMConfig
from engram_ff.model.train import BPTrainer, FFTrainer, byte_batches, evaluate_nats, train
from engram_ff.model.window_mlp import WindowConfig, WindowMLP

TEXT = b"the cat sat on the mat. " * 40


def unigram_entropy(text: bytes) -> float:
    counts = torch.bincount(torch.tensor(list(text)), minlength=256).double()
    p = counts[counts > 0] / counts.sum()
    return float(-(p * p.log()).sum())


def test_no_gradient_crosses_a_layer_boundary():
    """Every parameter of layer l gets exactly one gradient per step: from layer l's own loss."""
    torch.manual_seed(0)
    model = FFLM(LMConfig(n_layers=3, d_model=16, d_state=16, d_score=8))
    trainer = FFTrainer(model)
    calls = {}
    for layer, params in enumerate(model.layer_parameters()):
        for i, p in enumerate(params):
            p.register_hook(lambda g, key=(layer, i): calls.__setitem__(key, calls.get(key, 0) + 1))
    x, y = next(byte_batches(TEXT, 4, 32, torch.Generator().manual_seed(0)))
    trainer.train_step(x, y)
    assert calls and set(calls.values()) == {1}
    assert len(calls) == sum(len(p) for p in model.layer_parameters())


def test_upper_layer_loss_leaves_lower_layers_without_gradient():
    torch.manual_seed(0)
    model = FFLM(LMConfig(n_layers=2, d_model=16, d_state=16, d_score=8))
    x = torch.randint(0, 256, (2, 20))
    features = model.features(x, detach=True)
    next(features)  # layer 0
    z1 = next(features)
    model.heads[1](z1).logsumexp(-1).mean().backward()
    lower = model.layer_parameters()[0]
    assert all(p.grad is None for p in lower)
    assert all(p.grad is not None for p in model.layer_parameters()[1])


@pytest.mark.parametrize(
    "make_trainer",
    [
        lambda m: FFTrainer(m, lr=3e-3),
        lambda m: FFTrainer(m, lr=3e-3, loss="sampled", negatives="unigram"),
        lambda m: BPTrainer(m, lr=3e-3),
    ],
    ids=["ff-softmax", "ff-sampled-unigram", "bp"],
)
def test_short_training_on_repetitive_text_beats_unigram_entropy(make_trainer):
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"])
    batches = byte_batches(TEXT, 8, 32, torch.Generator().manual_seed(0))
    result = train(make_trainer(model), batches, budget_s=600, max_steps=80)
    nats = evaluate_nats(model, TEXT[:300])
    assert result.steps == 80
    assert nats < 0.35 * unigram_entropy(TEXT), (nats, unigram_entropy(TEXT))


@pytest.mark.parametrize("loss,negatives", [("pair", "model"), ("sampled", "uniform")])
def test_sampled_negative_losses_train(loss, negatives):
    torch.manual_seed(0)
    model = FFLM(LMConfig(n_layers=2, d_model=16, d_state=16, d_score=8, goodness="relu"))
    trainer = FFTrainer(model, lr=3e-3, loss=loss, negatives=negatives, n_negatives=4)
    x, y = next(byte_batches(TEXT, 4, 32, torch.Generator().manual_seed(0)))
    first = trainer.train_step(x, y)
    for _ in range(20):
        last = trainer.train_step(x, y)
    assert len(first) == 2 and all(math.isfinite(v) for v in last) and last[-1] < first[-1]


def test_window_mlp_trains_with_the_same_trainer_and_streams():
    torch.manual_seed(0)
    model = WindowMLP(WindowConfig(window=4, d_embed=8, d_hidden=32, n_layers=2, d_score=8))
    batches = byte_batches(TEXT, 8, 32, torch.Generator().manual_seed(0))
    train(FFTrainer(model, lr=3e-3), batches, budget_s=600, max_steps=60)
    assert evaluate_nats(model, TEXT[:200]) < unigram_entropy(TEXT)
    x = torch.tensor([list(TEXT[:30])])
    with torch.no_grad():
        parallel = model.logits(x)
        state, steps = model.init_state(1), []
        for t in range(30):
            logits, state = model.step(state, x[:, t])
            steps.append(logits)
    assert torch.allclose(torch.stack(steps, 1), parallel, atol=1e-5)


def test_evaluate_nats_handles_short_texts_and_is_deterministic():
    model = FFLM(PRESETS["tiny"])
    short = evaluate_nats(model, b"hi there")
    assert short == evaluate_nats(model, b"hi there") and math.isfinite(short)
    assert evaluate_nats(model, TEXT, seq_len=7) == pytest.approx(evaluate_nats(model, TEXT, seq_len=1000), rel=1e-5)
    with pytest.raises(ValueError):
        evaluate_nats(model, b"x")


def test_byte_batches_fit_short_data_and_pair_each_byte_with_the_next():
    x, y = next(byte_batches(b"abcdef", 3, 100, torch.Generator().manual_seed(0)))
    assert x.shape == y.shape == (3, 5)
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_trainer_state_round_trip_resumes_identically():
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"])
    trainer = FFTrainer(model, loss="sampled", negatives="unigram")
    x, y = next(byte_batches(TEXT, 4, 16, torch.Generator().manual_seed(0)))
    trainer.train_step(x, y)
    clone = FFLM(PRESETS["tiny"])
    clone.load_state_dict(model.state_dict())
    resumed = FFTrainer(clone, loss="sampled", negatives="unigram")
    resumed.load_state_dict(trainer.state_dict())
    assert trainer.train_step(x, y) == resumed.train_step(x, y)


def test_config_round_trip_and_unknown_keys():
    cfg = LMConfig(n_layers=3)
    assert LMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="bogus"):
        LMConfig.from_dict({"bogus": 1})
