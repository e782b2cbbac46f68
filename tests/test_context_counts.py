"""The context memory's counts (model/counts.py): next-byte counts of short contexts, blended under the rows."""

import logging
import math
from dataclasses import replace

import pytest
import torch

from engram_ff.daemon import checkpoints
from engram_ff.model import counts as counts_module
from engram_ff.model.config import PRESETS
from engram_ff.model.counts import ContextCounts
from engram_ff.model.lm import FFLM
from engram_ff.model.memory import learn
from engram_ff.model.train import evaluate_nats
from tests.test_incremental import make  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = b"user: Who is Victor?\nassistant: Victor is my brother, a baker in Lyon.\n\n"


def read(table: ContextCounts, text: bytes, learn_too: bool = True) -> float:
    """Bits per byte of text (from its second byte) over a uniform prediction, counting it after scoring."""
    x = torch.tensor([list(text)])
    xe = torch.cat([torch.zeros(1, table.P, dtype=torch.long), x], 1)
    h, y = table.hashes(xe[:, :-1], len(text) - 1), x[:, 1:]
    lower = torch.zeros(1, len(text) - 1, 256)
    logp = torch.log_softmax(lower + table.adjust(h, lower), -1)
    bits = -logp.gather(-1, y[..., None]).sum().item() / math.log(2) / y.numel()
    if learn_too:
        table.learn(h, y, torch.ones_like(y, dtype=torch.bool))
    return bits


def test_an_empty_table_changes_nothing_and_a_counted_text_costs_far_less():
    table = ContextCounts((1, 2, 3, 4), 12)
    assert read(table, TEXT) == pytest.approx(8.0, abs=1e-4)  # uniform: nothing counted yet
    assert read(table, TEXT) < 4.0  # counted once: the blend (half its weight) predicts it
    assert table.used_rows() > 0 and int(table.total.sum()) == 2 * 4 * (len(TEXT) - 1)


def test_the_blend_follows_the_discounts_of_once_twice_and_more():
    """One order-1 context: after 'a', 'b' counted 3 times, 'c' twice, 'd' once. With the layers' prediction
    uniform and the whole weight on the blend, each byte gets (count - D(count) + escape / 256) / 6."""
    table = ContextCounts((1,), 8)
    table.weight = 1.0
    read(table, b"abacabadab" + b"ac")
    d1, d2, d3 = table.discounts
    escape = d3 + d2 + d1
    expected = {b: (c - d + escape / 256) / 6 for b, c, d in ((98, 3, d3), (99, 2, d2), (100, 1, d1))}
    expected[ord("z")] = escape / 256 / 6  # never seen after 'a': the escape's share
    h = table.hashes(torch.tensor([[0, ord("a")]]), 1)
    p = torch.softmax(table.adjust(h, torch.zeros(1, 1, 256)), -1)[0, 0]
    assert float(p.sum()) == pytest.approx(1.0)
    for byte, value in expected.items():
        assert float(p[byte]) == pytest.approx(value, rel=1e-5), chr(byte)


def test_bytes_not_kept_are_not_counted():
    table = ContextCounts((1, 2), 10)
    x = torch.tensor([list(TEXT)])
    h = table.hashes(x[:, :-1], len(TEXT) - 1 - table.P)
    table.learn(h, x[:, 1 + table.P :], torch.zeros(1, len(TEXT) - 1 - table.P, dtype=torch.bool))
    assert table.used_rows() == 0 and int(table.total.sum()) == 0


def test_a_row_keeps_its_most_counted_next_bytes_and_halves_when_full(monkeypatch):
    monkeypatch.setattr(counts_module, "HALVE_AT", 64)
    table = ContextCounts((1,), 8)
    followers = b"".join(bytes([ord("a"), c]) for c in range(100, 140))  # 'a' then 40 different bytes
    read(table, b"ab" * 20 + followers)  # 'b' after 'a' 20 times, then 40 others once each
    row, hit, _ = table.find(table.hashes(torch.tensor([[0, ord("a")]]), 1)[0, 0, 0])
    assert hit and int(table.distinct[row]) == 41
    kept = dict(zip(table.ids[row].tolist(), table.counts[row].tolist()))
    assert kept[ord("b")] == 20  # the frequent byte survives the 40 that pass through the other slots
    assert len(kept) == counts_module.SLOTS
    read(table, b"ab" * 60)  # 'a' has been followed 120 times: its counts were halved on the way
    assert int(table.total[row]) < 64 and int(table.total[row]) == int(table.counts[row].sum())
    assert table.ids[row][table.counts[row].argmax()] == ord("b")


def test_the_nights_pass_counts_its_new_text_alone():
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"])
    counts = model.memory.counts
    learn(model, TEXT * 4 + b"replay and reread text that was counted before", count_bytes=len(TEXT) * 4)
    assert int(counts.total.sum()) == len(counts.orders) * (len(TEXT) * 4 - 1)
    learn(model, TEXT, count_bytes=0)
    assert int(counts.total.sum()) == len(counts.orders) * (len(TEXT) * 4 - 1)


def test_an_older_memory_gets_empty_counts_that_change_nothing(make, caplog):  # noqa: F811
    torch.manual_seed(0)
    old = FFLM(replace(PRESETS["tiny"], memory_count_orders=()))  # saved before the counts existed
    learn(old, TEXT * 3)
    x = torch.tensor([list(TEXT)])
    before = old(x)[0]
    config, _ = make()
    with caplog.at_level(logging.INFO):
        checkpoints.upgrade(old, config)
    assert old.memory.counts is not None and old.config.memory_count_orders == PRESETS["tiny"].memory_count_orders
    assert torch.equal(old(x)[0], before)
    assert "predates its counts" in caplog.text


def test_counts_must_fit_in_the_memorys_context():
    with pytest.raises(ValueError, match="reach back at most"):
        FFLM(replace(PRESETS["tiny"], memory_orders=(2, 3), memory_count_orders=(1, 4)))


def test_a_night_retried_after_a_rejection_counts_less():
    torch.manual_seed(0)
    full, retried = FFLM(PRESETS["tiny"]), FFLM(PRESETS["tiny"])
    learn(full, TEXT * 2)
    learn(retried, TEXT * 2, rate=0.25)  # the daemon's retry rate after rejected nights
    assert float(retried.memory.counts.total.sum()) == pytest.approx(0.25 * float(full.memory.counts.total.sum()))
    assert evaluate_nats(retried, TEXT) > evaluate_nats(full, TEXT)  # it trusts tonight's text less
    assert retried.memory.count_rate == 1.0  # the rate is the pass's, not the memory's
