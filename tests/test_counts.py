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


def test_writes_the_table_json_and_figure(tmp_path):
    assert main(["--nights", "2", "--day-kb", "2", "--orders", "1,3", "--results", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "counts.json").read_text())
    assert set(result["counts"]) == {"1", "3"} and len(result["bz2"]) == 2
    assert all(0 < bpb < 8 for bpb in result["counts"]["3"])
    assert "| **mean, nights 2-2** |" in (tmp_path / "counts.md").read_text()
    assert (tmp_path / "counts.png").stat().st_size > 0
