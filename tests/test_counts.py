"""bench/counts.py: the plain count model that bench learning's days are compared with."""

import json
import math

from engram_ff.bench.counts import CountModel, main


def test_a_text_read_again_costs_far_less():
    text = b"user: Who is Victor?\nassistant: Victor is my brother, a baker in Lyon.\n" * 2
    model = CountModel(4)
    first = model.cost_bits(text[: len(text) // 2])
    second = model.cost_bits(text[len(text) // 2 :])
    assert first > 4 * len(text) // 2  # new text: most bytes near the uniform 8 bits
    assert second < first / 3  # the same text again: the contexts' counts predict it


def test_an_unseen_byte_still_has_a_probability():
    model = CountModel(2)
    model.cost_bits(b"aaaaaaaa")
    assert math.isfinite(model.cost_bits(b"z"))


def test_the_blend_is_a_distribution_for_any_discounts():
    for discounts in ((0.6, 0.6, 0.6), (0.7, 1.1, 1.6), (1.0, 2.0, 3.0)):
        model = CountModel(3, discounts)
        model.cost_bits(b"abracadabra, abracadabra; a cadaver")
        contexts = model._contexts()
        assert math.isclose(sum(model._probability(contexts, byte) for byte in range(256)), 1.0, rel_tol=1e-9)


def test_the_night_before_learns_the_day_only_after_coding_it():
    day = b"Victor keeps bees. " * 8
    reading, night_before = CountModel(4), CountModel(4)
    assert night_before.cost_bits(day, reading=False) > 2 * reading.cost_bits(day)  # no help from the day itself
    tomorrow = b"Victor keeps bees in Lyon."
    assert math.isclose(night_before.cost_bits(tomorrow, reading=False), reading.cost_bits(tomorrow, reading=False))


def test_writes_the_table_json_and_figure(tmp_path):
    argv = ["--nights", "2", "--day-kb", "2", "--orders", "1,3", "--discounts", "0.6", "--results", str(tmp_path)]
    assert main(argv) == 0
    result = json.loads((tmp_path / "counts.json").read_text())
    assert set(result["variants"]) == {
        f"order {o}, D 0.6/0.6/0.6, {protocol}" for o in (1, 3) for protocol in ("reading", "night before")
    }
    assert len(result["bz2"]) == 2 and all(0 < bpb <= 8 for v in result["variants"].values() for bpb in v)
    report = (tmp_path / "counts.md").read_text()
    assert "| order 3, D 0.6/0.6/0.6, night before |" in report and "## Every night" in report
    assert (tmp_path / "counts.png").stat().st_size > 0
