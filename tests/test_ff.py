"""The FF core: losses, the first layer's label trick, locality of learning, and learning itself."""

import torch
import torch.nn.functional as F

from engram_ff.model.images.bp_mlp import BPMLP, BPMLPConfig
from engram_ff.model.images.ff import FFConfig, FFLayer, goodness, normalise
from engram_ff.model.images.ff_mlp import FFMLP, FFMLPConfig
from engram_ff.model.losses import pair_loss, softmax_loss


def test_losses_and_goodness():
    h = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
    assert goodness(h, "sum").tolist() == [5.0, 9.0]
    assert goodness(h, "mean").tolist() == [2.5, 4.5]
    g = torch.tensor([[3.0, 1.0, 0.5], [0.0, 2.0, 1.0]])  # (B, 1+K), positive first
    assert torch.allclose(softmax_loss(g), F.cross_entropy(g, torch.zeros(2, dtype=torch.long)))
    want = (F.softplus(2 - g[:, 0]) + F.softplus(g[:, 1:] - 2).mean(1)).mean()
    assert torch.allclose(pair_loss(g, theta=2.0), want)
    assert torch.allclose(normalise(torch.tensor([[3.0, 4.0]])).norm(), torch.tensor(2.0).sqrt())


def test_first_layer_trick_equals_the_plain_layer():
    torch.manual_seed(0)
    model = FFMLP(FFMLPConfig(d_in=30, hidden=(16,), label_scale=2.0))
    x, y = torch.rand(5, 30), torch.tensor([0, 3, 9, 3, 1])
    overlaid = x.clone()
    overlaid[:, :10] = model.one_hot[y]
    fast = model.first_layer(*model.image_term(x), model.one_hot[y][:, None, :])[:, 0]
    assert torch.allclose(fast, model.layers[0](overlaid), atol=1e-5)


def test_negatives_are_never_the_true_label():
    torch.manual_seed(0)
    model = FFMLP(FFMLPConfig(d_in=30, hidden=(16, 16), n_negatives=3))
    seen = []
    original = model.first_layer
    model.first_layer = lambda image, scale, labels: seen.append(labels) or original(image, scale, labels)
    y = torch.randint(0, 10, (64,))
    model.train_batch(torch.rand(64, 30), y)
    labels = seen[-1].argmax(-1)  # (B, 1+K) label vectors -> label numbers
    assert labels.shape == (64, 4)
    assert (labels[:, 0] == y).all() and (labels[:, 1:] != y[:, None]).all()


def test_no_gradient_crosses_a_layer_boundary():
    """While each layer takes its step inside train_batch, no earlier layer's parameters or gradients move."""
    torch.manual_seed(0)
    model = FFMLP(FFMLPConfig(d_in=30, hidden=(16, 16, 16)))
    layers = list(model.layers)
    stepped = []

    def watch(i, learn):
        def learn_and_check(h):
            earlier = [
                (p.detach().clone(), None if p.grad is None else p.grad.clone())
                for layer in layers[:i]
                for p in layer.parameters()
            ]
            own = [p.detach().clone() for p in layers[i].parameters()]
            loss = learn(h)
            after = [p for layer in layers[:i] for p in layer.parameters()]
            for (value, grad), p in zip(earlier, after):
                assert torch.equal(value, p)
                assert (grad is None and p.grad is None) or torch.equal(grad, p.grad)
            assert any(not torch.equal(a, b) for a, b in zip(own, layers[i].parameters()))
            stepped.append(i)
            return loss

        return learn_and_check

    for i, layer in enumerate(layers):
        layer.learn = watch(i, layer.learn)
    model.train_batch(torch.rand(32, 30), torch.randint(0, 10, (32,)))
    assert stepped == [0, 1, 2]


def test_layer_learn_leaves_the_layer_below_alone():
    torch.manual_seed(0)
    below, above = FFLayer(8, 6, FFConfig()), FFLayer(6, 4, FFConfig())
    before = [p.detach().clone() for p in below.parameters()]
    h = below(torch.rand(5, 3, 8))  # (B, 1+K, D) with the graph back into `below`
    above.learn(above(h.detach()))
    assert all(torch.equal(a, b) for a, b in zip(before, below.parameters()))
    assert all(p.grad is None for p in below.parameters())


def synthetic(n: int, seed: int, d_in: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """10 noisy prototypes in [0, 1]^d_in; the first 10 inputs are blank (the label goes there)."""
    prototypes = torch.rand(10, d_in, generator=torch.Generator().manual_seed(123))
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = (prototypes[y] + 0.35 * torch.randn(n, d_in, generator=g)).clamp(0, 1)
    x[:, :10] = 0
    return x, y


def test_ff_learns_a_small_ten_class_problem():
    torch.manual_seed(0)
    x, y = synthetic(2000, seed=1)
    x_test, y_test = synthetic(1000, seed=2)
    model = FFMLP(FFMLPConfig(d_in=40, hidden=(64, 64), lr=3e-3, readout_lr=3e-3))
    for _epoch in range(2):
        for i in torch.randperm(len(y)).split(50):
            model.train_batch(x[i], y[i])
    for name, pred in model.predict(x_test).items():
        accuracy = (pred == y_test).float().mean().item()
        assert accuracy >= 0.90, f"{name} readout: {accuracy:.3f}"


def test_bp_baseline_has_the_same_shape():
    ff = FFMLP(FFMLPConfig(hidden=(50, 40)))
    bp = BPMLP(BPMLPConfig(hidden=(50, 40)))
    bp_hidden = [m.weight.shape for m in bp.net if isinstance(m, torch.nn.Linear)][:-1]
    assert bp_hidden == [layer.linear.weight.shape for layer in ff.layers]
    assert bp(torch.rand(3, 784)).shape == (3, 10)
