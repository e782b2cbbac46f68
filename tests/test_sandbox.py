"""torch trains under MemoryDenyWriteExecute once engram-ff has adapted it, as the system unit needs."""

import subprocess
import sys

import pytest

from engram_ff.daemon import sandbox

TRAIN = """
import sys, torch
from engram_ff.daemon import sandbox
assert sandbox.deny_write_execute(), "cannot impose MDWE"
assert sandbox.write_execute_denied()
if sys.argv[1] == "adapt":
    sandbox.adapt_torch()
m = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64))
opt = torch.optim.Adam(m.parameters())
for _ in range(3):
    loss = m(torch.randn(32, 64)).pow(2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
print("trained")
"""


def mdwe_available() -> bool:
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from engram_ff.daemon import sandbox; raise SystemExit(0 if sandbox.deny_write_execute() else 1)",
        ]
    )
    return probe.returncode == 0


@pytest.mark.skipif(not mdwe_available(), reason="kernel without PR_SET_MDWE (Linux < 6.3)")
def test_adapted_torch_trains_under_mdwe():
    adapted = subprocess.run([sys.executable, "-c", TRAIN, "adapt"], capture_output=True, text=True)
    assert adapted.returncode == 0, adapted.stderr
    assert "trained" in adapted.stdout


def test_unrestricted_process_keeps_onednn():
    assert not sandbox.write_execute_denied()
