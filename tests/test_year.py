"""`engram-ff bench year`: its calendar has every kind of day the issue asks for, and a short run goes
through the daemon's own update, gate and probes to a report, a plot and one JSON record a night."""

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import orjson
import pytest

from engram_ff.bench import year
from engram_ff.bench.make_stream import load_facts
from engram_ff.bench.year_days import FACT_REPEATS, JUNK, calendar, day_lines, held_out, sentences
from engram_ff.ingest.reader import split_of


def test_the_year_has_every_kind_of_day():
    days = calendar(365)
    kinds = Counter(day.kind for day in days)
    assert kinds == dict(ordinary=279, quiet=51, facts=23, off=7, reference=2, burst=1, wake=1, junk=1)
    by_night = {day.night: day for day in days}
    assert [by_night[n].kind for n in (3, 30, 150, 207, 250, 365)] == [
        "facts",
        "reference",
        "burst",
        "wake",
        "junk",
    ] + ["reference"]
    assert all(by_night[n].kind == "off" for n in range(200, 207)) and by_night[150].messages == 50_000
    assert all(day.messages <= 3 for day in days if day.kind == "quiet")
    assert all(150 <= day.messages <= 400 for day in days if day.kind == "ordinary")
    assert [day.night for day in days if day.reminder] == [60, 120, 180, 240, 300, 360]

    pool, facts = sentences(), load_facts()
    planted = day_lines(by_night[3], pool, facts)
    answers = [line for line in planted if line.get("content") == facts[0]["answer"]]
    assert len(answers) == FACT_REPEATS
    junk = [line for line in day_lines(by_night[250], pool, facts) if line.get("content") == JUNK]
    assert len(junk) == 4000 and len({line["timestamp"] for line in junk}) == 4000  # not one line stored once
    same = [[line.get("content") for line in day_lines(by_night[n], pool, facts)] for n in (30, 365)]
    assert same[0] == same[1] and len(same[0]) == 301  # the reference nights: the same new text
    lines = day_lines(by_night[10], pool, facts)
    text = held_out(lines, 0.1, 10**9).decode()
    contents = [line.split(": ", 1)[1] for line in text.splitlines() if line]
    probe = [line["content"] for line in lines if "content" in line and split_of(orjson.dumps(line), 0.1) == "probe"]
    assert contents and contents == probe  # the lines the daemon holds out of their night, in order


def test_a_short_year_runs_the_daemons_nights_and_reports(tmp_path):
    """Killed with SIGKILL part-way (a session ending), the same command carries the year on from its kept
    folder: every night recorded once, the nights before the kill as they were."""
    folder, args = tmp_path / "kept", ["--quick", "--scale", "0.02", "--results", str(tmp_path)]
    log = folder / "nights.jsonl"
    command = [sys.executable, "-m", "engram_ff.bench.year", *args, "--dir", str(folder)]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (log.exists() and len(log.read_text().splitlines()) >= 3) and time.monotonic() < deadline:
        assert first.poll() is None, "the year ended before it could be killed"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = [json.loads(line) for line in log.read_text().splitlines()]
    assert 3 <= len(before) < 14
    with pytest.raises(SystemExit):  # the kept folder refuses other settings
        year.main([*args, "--seed", "1", "--dir", str(folder)])

    assert year.main([*args, "--dir", str(folder)]) == 0
    nights = json.loads((tmp_path / "year-quick.json").read_text())["nights"]
    assert [n["night"] for n in nights] == list(range(1, 15))
    assert nights[: len(before)] == before and {n["start"] for n in nights} == {1, 2}
    assert "in 2 runs carried on with --dir" in (tmp_path / "year-quick.md").read_text()
    by_kind = {n["kind"]: n for n in nights}
    assert by_kind["off"]["status"] == "off" and "new_bytes" not in by_kind["off"]
    ran = [n for n in nights if n["status"] != "off"]
    assert all(n["status"] in ("ok", "rejected", "skipped") for n in ran), [n["status"] for n in ran]
    assert all(n["rss_mib"] > 0 and n["db_mib"] > 0 and n["update_s"] > 0 for n in ran)
    before_burst = [n["new_bytes"] for n in ran if n["night"] < by_kind["burst"]["night"]]
    assert by_kind["burst"]["new_bytes"] > 10 * max(before_burst)
    # the wake night catches up the days it slept through (and what the nights before it held out): more than a day's
    assert by_kind["wake"]["new_bytes"] > max(n["new_bytes"] for n in ran if n["kind"] == "ordinary" and n["night"] < 5)
    assert nights[0]["gate"]["reason"].startswith("the first model")
    assert all(set(n["facts"]) == {f["name"] for f in load_facts()} for n in ran)
    report = (tmp_path / "year-quick.md").read_text()
    assert "## Targets" in report and "| junk |" in report and "| wake |" in report
    assert (tmp_path / "year-quick.png").stat().st_size > 20_000


def test_a_record_cut_off_as_it_was_written_runs_its_night_again(tmp_path):
    args = year.build_parser().parse_args(["--quick"])
    assert year._kept(tmp_path / "kept", args, year.build_parser()) == []
    log = tmp_path / "kept" / "nights.jsonl"
    log.write_text('{"night": 1}\n{"night": 2}\n{"nig')
    assert year._kept(tmp_path / "kept", args, year.build_parser()) == [{"night": 1}, {"night": 2}]
    assert log.read_text() == '{"night": 1}\n{"night": 2}\n'
    args.stop_after = 5  # a year may be cut into runs
    assert len(year._kept(tmp_path / "kept", args, year.build_parser())) == 2
