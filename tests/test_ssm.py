from dataclasses import replace

import pytest
import torch

from engram_ff.model.lm import FFLM, PRESETS
from engram_ff.model.ssm import SSM, scan, scan_loop


def test_scan_matches_the_recurrence_at_every_length():
    torch.manual_seed(0)
    a = torch.rand(16) * 0.999
    for T in (1, 2, 3, 7, 64, 100, 513):
        u, h0 = torch.randn(3, T, 16), torch.randn(3, 16)
        assert torch.allclose(scan(u, a, h0), scan_loop(u, a, h0), atol=1e-5), T


def test_ssm_parallel_and_recurrent_modes_agree():
    torch.manual_seed(0)
    ssm = SSM(d_model=8, d_state=12)
    x = torch.randn(2, 300, 8)
    with torch.no_grad():
        y, last = ssm(x)
        h = torch.zeros(2, 12)
        steps = []
        for t in range(300):
            out, h = ssm.step(x[:, t], h)
            steps.append(out)
    assert torch.allclose(torch.stack(steps, 1), y, atol=1e-5)
    assert torch.allclose(h, last, atol=1e-5)


def test_decay_stays_inside_the_unit_interval_for_any_parameter():
    ssm = SSM(d_model=4, d_state=5)
    with torch.no_grad():
        ssm.log_rate.copy_(torch.tensor([-50.0, -5.0, 0.0, 5.0, 50.0]))
    a, gain = ssm.decay()
    assert ((a >= 0) & (a < 1)).all() and ((gain > 0) & (gain <= 1)).all()


@pytest.mark.parametrize("options", [{}, {"goodness": "relu"}, {"mlp_in_head": True}])
def test_language_model_parallel_and_recurrent_modes_agree(options):
    torch.manual_seed(0)
    model = FFLM(replace(PRESETS["tiny"], **options)).double()  # float64: checks the algebra, not rounding
    x = torch.randint(0, 256, (2, 40))
    with torch.no_grad():
        parallel, _ = model(x)
        state, steps = model.init_state(2), []
        for t in range(40):
            logits, state = model.step(state, x[:, t])
            steps.append(logits)
    assert torch.allclose(torch.stack(steps, 1), parallel, atol=1e-5)


def test_parallel_mode_carries_state_across_chunks():
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"])
    x = torch.randint(0, 256, (1, 64))
    with torch.no_grad():
        whole, _ = model(x)
        first, state = model(x[:, :25])
        second, _ = model(x[:, 25:], state)
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-5)
