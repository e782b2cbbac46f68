"""`engram-ff bench learning`: its days plant each fact k times in sessions of their own, its compressor
costs are real, and a quick run goes through the daemon's ingest, update, probes and gate for FF and BP to
a report whose numbers come from the run."""

import json
import math
import shutil
from collections import Counter

import pytest

from engram_ff.bench import learning, match_sweep
from engram_ff.daemon.cli import BENCHMARKS, build_parser
from engram_ff.daemon.config import ConfigError


def test_the_facts_are_varied_and_not_the_demos():
    facts = learning.load_facts()
    assert Counter(f["k"] for f in facts) == {k: 4 for k in learning.KS}
    demo = (learning.FACTS.parent.parent / "daemon" / "facts.toml").read_text()
    assert not [f["name"] for f in facts if f["answer"] in demo or f["question"] in demo]
    assert all(len(f["distractors"]) == 3 and f["answer"] not in f["distractors"] for f in facts)
    assert len({f["answer"] for f in facts}) == len(facts)


def test_each_fact_is_also_asked_in_words_the_chat_never_says():
    facts = learning.load_facts()
    assert all(f["reworded"] and f["reworded"] != f["question"] for f in facts)
    days = learning.make_days(40, 35_000, facts, [2], seed=0)  # every night a month's run with +30 reads
    text = b"".join(d.text for d in days)
    assert not [f["name"] for f in facts if f["reworded"].encode() in text]


def test_a_fact_day_plants_each_fact_k_times_each_in_a_session_of_its_own():
    facts = learning.load_facts()
    days = learning.make_days(4, 20_000, facts, [2], seed=0)
    assert [d.planted for d in days if d.night != 2] == [{}, {}, {}]
    assert days[1].planted == {f["name"]: f["k"] for f in facts}
    sessions: dict[str, list[dict]] = {}
    for line in days[1].lines[1:]:
        sessions.setdefault(line["session_key"], []).append(line)
    for fact in facts:
        asked = [s for s in sessions.values() if any(m["content"] == fact["question"] for m in s)]
        assert len(asked) == fact["k"]
        assert all(
            [(m["sender"], m["content"]) for m in s] == [("user", fact["question"]), ("assistant", fact["answer"])]
            for s in asked
        )
    order = list(sessions)  # a fact said 8 times is spread through the day, not bunched
    spots = [order.index(k) for k, s in sessions.items() if s[0]["content"] == facts[-1]["question"]]
    assert spots[-1] - spots[0] > len(order) / 2
    assert all(len(d.text) >= 20_000 for d in days)
    chat = [line["content"] for d in days for line in d.lines[1:] if d.night != 2]
    assert len(set(chat)) > 0.9 * len(chat)  # new text each day (a play repeats a few short speeches)


def test_facts_spread_over_several_nights_and_the_text_recurs_once_used_up():
    facts = learning.load_facts()
    days = learning.make_days(5, 450_000, facts, [1, 3], seed=1)
    said = {f["name"]: days[0].planted.get(f["name"], 0) + days[2].planted.get(f["name"], 0) for f in facts}
    assert said == {f["name"]: f["k"] for f in facts} and days[1].planted == {}
    assert days[0].planted["router-password"] == days[2].planted["router-password"] == 4
    # about 0.9 MB of plays, then 1 MB of TinyShakespeare, then both again
    assert [d.recurs for d in days] == [False, False, False, False, True]


def test_compressor_costs_are_real():
    texts = [b"user: the quick brown fox jumps over the lazy dog\n" * 40, bytes(range(256)) * 4]
    texts.append(texts[0])
    costs, notes = learning.compressor_bpb(texts)
    assert set(costs[0]) >= {"bz2 -9", "xz -9e"}
    assert ("zstd --long -19" in costs[0]) == (shutil.which("zstd") is not None) != bool(notes)
    for code in costs[0]:
        assert all(math.isfinite(c[code]) for c in costs)
        assert costs[2][code] < costs[0][code] / 2  # a day said before costs little given it as history


def test_methods_and_checkpoints():
    method = learning.parse_method("ff+lr_scale=2+update_max_passes=16")
    assert (method.trainer, method.overrides) == ("ff", {"lr_scale": "2", "update_max_passes": "16"})
    settings = dict(preset="tiny", budget=1.5, set={"replay_ratio": "1"})
    config = learning.method_config(learning.Path("/nonexistent"), method, settings)
    assert (config.trainer, config.lr_scale, config.workers, config.update_budget_minutes) == ("ff", 2.0, 1, 1.5)
    assert config.replay_ratio == 1.0 and config.model_preset == "tiny"
    with pytest.raises(ConfigError):
        learning.method_config(learning.Path("/x"), learning.parse_method("bp+freeze_layers=1"), settings)
    meta = dict(fact_nights=[2], checkpoints=[0, 7, 30])
    labels = learning.checkpoint_nights(meta, 12)
    assert [n for _, n in labels] == [2, 9, 12] and "not reached" in labels[2][0] and "not reached" not in labels[1][0]
    assert "learning" in BENCHMARKS
    assert build_parser().parse_args(["bench", "learning", "--quick"]).name == "learning"


def test_a_quick_run_learns_through_the_daemon_and_reports_real_numbers(tmp_path):
    kept = tmp_path / "kept"
    assert learning.main(["--quick", "--by-day-parts", "3", "--results", str(tmp_path), "--data", str(kept)]) == 0
    result = json.loads((tmp_path / "learning-quick.json").read_text())
    facts = result["facts"]
    nights = result["meta"]["nights"]
    assert list(result["methods"]) == ["ff", "bp"]
    assert 'trainer = "bp"' in result["meta"]["methods"]["bp"] and "workers = 1" in result["meta"]["methods"]["ff"]
    for day in result["days"]:
        assert set(day["compressors"]) >= {"bz2 -9", "xz -9e"}
        assert all(0 < v < 9 for v in day["compressors"].values())
    for name, records in result["methods"].items():
        assert [r["night"] for r in records] == list(range(1, nights + 1))
        assert all(r["status"] in ("ok", "rejected") and r["steps"] > 0 and r["new_bytes"] > 0 for r in records)
        assert all(r["rss_mib"] > 0 and r["update_s"] > 0 for r in records)
        assert records[0]["prequential_bpb"] is None and records[0]["gate"]["decision"] == "promoted"
        assert all(0 < r["prequential_bpb"] < 9 for r in records[1:]), name
        # and without the match model (model/match.py): the fact day says each fact up to 8 times, which it copies
        assert records[0]["unmatched_bpb"] is None and all(0 < r["unmatched_bpb"] < 9 for r in records[1:]), name
        assert records[1]["prequential_bpb"] < records[1]["unmatched_bpb"] - 0.1, name
        # the same day as the daemon learns it by day (daemon/today.py), in 3 parts each read as it lands
        assert records[0]["reading_bpb"] is None and all(0 < r["reading_bpb"] < 9 for r in records[1:]), name
        assert all(0.9 * r["day_bytes"] < r["by_day_bytes"] < 1.1 * r["day_bytes"] for r in records[1:]), name
        assert all(r["by_day_refused"] == [] for r in records), name  # chat is never held back by its gate
        # the morning's model: the checkpoint and its overlay (the night's held-out slice), before today
        assert records[0]["morning_bpb"] is None and all(0 < r["morning_bpb"] < 9 for r in records[1:]), name
        assert all(r["held_out"] and all(math.isfinite(v) for v in r["held_out"].values()) for r in records)
        fact_night = records[1]
        assert fact_night["planted"] == {f["name"]: f["k"] for f in facts}
        # asked the evening they were said, before the night: what the memory learned by day
        assert set(fact_night["evening"]) == set(fact_night["planted"]) and records[2]["evening"] == {}
        assert all(isinstance(v, bool) for v in fact_night["evening"].values())
        # the facts were ingested and trained: their answers are in the text the fact night's update trained on
        trained = fact_night["trained_mentions"]
        assert all(0 <= trained[f["name"]] <= f["k"] for f in facts)
        # each mention draws its split (ingest/reader.py split_of): a fact said 4 or 8 times is never held out whole
        assert all(trained[f["name"]] > 0 for f in facts if f["k"] >= 4)
        assert sum(trained.values()) >= 0.75 * sum(f["k"] for f in facts)
        assert sum(records[0]["trained_mentions"].values()) == 0
        for r in records:
            assert set(r["facts"]) == {f["name"] for f in facts}
            for score in r["facts"].values():
                assert isinstance(score["recalled"], bool) and isinstance(score["answer"], str)
                assert 1 <= score["rank"] <= 4 and 0 < score["bpb"] < 20
                assert isinstance(score["reworded"], bool) and isinstance(score["reworded_answer"], str)
            for k in learning.KS:
                group = [f["name"] for f in facts if f["k"] == k]
                share = sum(r["facts"][n]["recalled"] for n in group) / len(group)
                assert 0 <= share <= 1
    report = (tmp_path / "learning-quick.md").read_text()
    for section in ("## Targets", "## Facts", "## Prequential bits per byte", "## Every night", "## Settings"):
        assert section in report
    assert "| ff, morning | bp, morning | ff, reading | bp, reading | bz2 -9 | xz -9e |" in report
    assert "**mean, nights 2-3**" in report and "new day's bpb, the morning's model, <= bz2 -9's" in report
    assert "new day's bpb, by day, <= bz2 -9's" in report and result["meta"]["by_day_parts"] == 3
    assert "| ask, the same evening | ask, next morning (night 2) |" in report
    assert "| ranked 1st | answer bpb | ask in other words | trained |" in report
    # a facts file may reword some facts only: the column counts those asked, not the rest as misses
    first = next(f["name"] for f in facts if f["k"] == 1)
    for records in result["methods"].values():
        for r in records:
            r["facts"].get(first, {}).pop("reworded", None)
    row = learning.recall_rows(result)[0]
    assert row[:2] == ["ff", 1] and all(share.endswith("/3") for share in row[-2].split(" / "))
    assert report.count("Learning by day not kept by its gate (the canary and the facts") == 2
    assert "next morning (night 2)" in report and "not reached" in report  # +7 and +30 read the last night
    assert (tmp_path / "learning-quick.png").stat().st_size > 20_000
    assert "| ff | bp | ff, no match model | bp, no match model |" in report
    # the match model alone over the run's kept checkpoints (bench/match_sweep.py): night 2 as the run scored it
    sweep = ["--variant", "none", "--variant", "default", "--results", str(tmp_path), "--day-kb", "3", "--out", "m"]
    assert match_sweep.main([str(kept), *sweep]) == 0
    swept = json.loads((tmp_path / "m.json").read_text())
    night_2 = swept["nights"][0]
    assert [row[0] for row in swept["costs"]] == ["with the match model", "without"]
    assert all(float(seconds) > 0 for row in swept["costs"] for seconds in row[1:3])
    assert night_2["night"] == 2 and night_2["default"] < night_2["none"] - 0.1
    assert night_2["none"] == pytest.approx(result["methods"]["ff"][1]["unmatched_bpb"], abs=1e-4)
    assert night_2["default"] == pytest.approx(result["methods"]["ff"][1]["prequential_bpb"], abs=1e-4)
