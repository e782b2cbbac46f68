"""`status` and `learned` on a real data directory after two real updates (tiny model, about 20 s)."""

from __future__ import annotations

import json
import os
import re

import pytest

from engram_ff.daemon import update
from engram_ff.daemon.cli import main
from engram_ff.daemon.config import load_config
from engram_ff.daemon.lock import DataDirLock
from engram_ff.ingest.reader import catch_up
from engram_ff.state.db import open_db
from tests.daemon_helpers import FAST, write_day


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("status")
    config = load_config(environ=FAST, data_dir=str(root / "data"), watch_dir=str(root / "engram"))
    write_day(config.watch, "2026-01-01", 40)
    hostile = config.watch / "raw" / "2026-01-01 new\nline \x1b[31mred.jsonl"
    hostile.write_bytes((config.watch / "raw" / "2026-01-01.jsonl").read_bytes()[:200] + b"\n")
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    update.run_update(config)
    write_day(config.watch, "2026-01-02", 30)
    catch_up(db, config.watch)
    update.run_update(config)
    db.close()
    return config


def run(capsys, *args) -> str:
    assert main(list(args)) == 0
    return capsys.readouterr().out


def test_status_is_short_escaped_and_says_when_the_next_update_is(trained, capsys):
    out = run(capsys, "status", "--data", str(trained.data_dir), "--watch", str(trained.watch))
    data = trained.data_dir
    assert "daemon        not running" in out
    assert f"next update   none while no daemon runs; `engram-ff run --data {data}` (or the service) updates at " in out
    assert "2026-01-01 to 2026-01-02" in out and "update 2 (run 3) ok" in out  # update, probe, update
    assert "\x1b" not in out and "new\\nline \\x1b[31mred.jsonl" in out  # a hostile name, escaped
    assert len(out.splitlines()) < 60


def test_status_names_the_daemon_that_holds_the_lock(trained, capsys):
    with DataDirLock(trained.lock_path):
        out = run(capsys, "status", "--data", str(trained.data_dir))
        facts = json.loads(run(capsys, "status", "--data", str(trained.data_dir), "--json"))
    assert f"running (pid {os.getpid()})" in out and "(the running daemon's nightly update)" in out
    assert facts["daemon"] == {"running": True, "pid": os.getpid()}


def test_status_verbose_lists_every_file_with_its_messages(trained, capsys):
    out = run(capsys, "status", "--data", str(trained.data_dir), "--verbose")
    assert "messages" in out.split("files:")[1].splitlines()[1]  # the column header of the file table
    assert "2026-01-02.jsonl" in out and "2026-01-01.jsonl" in out


def test_learned_says_what_the_last_night_learned(trained, capsys):
    out = run(capsys, "learned", "--data", str(trained.data_dir))
    lines = out.splitlines()
    assert lines[0].startswith("update 2 (run 3), ") and "the gate's decision: promoted" in lines[0]
    assert "from 1 day, 2026-01-02" in out and "grown from checkpoint 1" in out
    assert "biggest changes, in bits per byte (lower is better):" in out
    facts = json.loads(run(capsys, "learned", "--data", str(trained.data_dir), "--json"))
    assert facts["days"][0]["day"] == "2026-01-02" and facts["changes"][0]["change"] is not None
    biggest = [abs(c["change"]) for c in facts["changes"] if c["change"] is not None]
    assert biggest == sorted(biggest, reverse=True)


def test_learned_reads_a_promotion_gates_decision(trained, tmp_path, capsys):
    """A gate (another branch's) records its decision as JSON in runs.gate; learned shows it when present."""
    copy = tmp_path / "data"
    copy.mkdir()
    (copy / "engram-ff.db").write_bytes(trained.db_path.read_bytes())
    db = open_db(copy / "engram-ff.db")
    if "gate" not in {c.name for c in db["runs"].columns}:
        db.execute("ALTER TABLE runs ADD COLUMN gate TEXT")
    with db.conn:
        db.execute(
            "UPDATE runs SET gate = ? WHERE id = 3",
            ['{"decision": "promote", "reason": "held-out text improved", "scores": {"old_days_bpb": 3.51}}'],
        )
    db.close()
    out = run(capsys, "learned", "--data", str(copy))
    assert "the gate's decision: promote, held-out text improved (old_days_bpb 3.510)" in out.splitlines()[0]


def test_status_stays_short_with_100000_files(tmp_path, capsys):
    db = open_db(tmp_path / "engram-ff.db")
    with db.conn:
        db.conn.executemany(
            "INSERT INTO files (path, size, committed_offset, error) VALUES (?, ?, ?, ?)",
            [(f"/w/raw/{n:06d}\x1b[2J.jsonl", 100, 100, "EACCES" if n % 1000 == 0 else None) for n in range(100_000)],
        )
    db.close()
    out = run(capsys, "status", "--data", str(tmp_path))
    assert "100,000 (10 MB), 0 B waiting for a newline, 100 unreadable" in out
    assert len(out.splitlines()) < 40 and "\x1b" not in out
    assert out.rstrip().endswith(f"`engram-ff status --verbose --data {tmp_path}` lists every file, day and event.")


def test_probe_json_is_the_stored_scores(trained, capsys, tmp_path, monkeypatch):
    """A real data directory probes its owner's facts only, never the demo's bundled ones."""
    rows = json.loads(run(capsys, "probe", "--data", str(trained.data_dir), "--json"))
    assert "probe_bpb" in {r["metric"] for r in rows} and not [r for r in rows if r["kind"] == "fact"]
    facts = tmp_path / "facts.toml"
    facts.write_text(
        '[[fact]]\nname = "sister-city"\nprompt = "user: Where does my sister live?\\nassistant: "\n'
        'answer = "Your sister lives in Porto."\ndistractors = ["Your sister lives in Leeds."]\n'
    )
    monkeypatch.setenv("ENGRAM_FF_FACTS_FILE", str(facts))
    rows = json.loads(run(capsys, "probe", "--data", str(trained.data_dir), "--json"))
    assert {r["probe"] for r in rows if r["kind"] == "fact"} == {"sister-city"}
    assert all(isinstance(r["value"], float) for r in rows)  # unrounded, for scripts
    table = run(capsys, "probe", "--data", str(trained.data_dir))
    assert re.search(r"answer_rank +[12]$", table, flags=re.M) and ".0000" not in table  # a rank, for people


def test_json_holds_objects_not_json_in_strings(trained, capsys):
    status = json.loads(run(capsys, "status", "--data", str(trained.data_dir), "--json"))
    assert status["last_update"]["gate"]["decision"] == "promoted"
    assert isinstance(status["last_update"]["layer_losses"], list)
    learned = json.loads(run(capsys, "learned", "--data", str(trained.data_dir), "--json"))
    assert learned["run"]["gate"]["decision"] == "promoted" and learned["update"] == "update 2 (run 3)"
    assert all(isinstance(x, float) for x in learned["run"]["layer_losses"])


def test_one_night_has_one_number_in_status_learned_and_history(trained, capsys):
    """Probe passes share runs.id, so the second update is run 3; people read update 2 everywhere."""
    assert "last update   update 2 (run 3) ok" in run(capsys, "status", "--data", str(trained.data_dir))
    assert run(capsys, "learned", "--data", str(trained.data_dir)).startswith("update 2 (run 3), ")
    rows = json.loads(run(capsys, "history", "--data", str(trained.data_dir), "--json"))
    assert [r["update"] for r in rows][:2] == [1, 2] and rows[1]["run"] == 4  # the pass after update 2 (run 3)
    table = run(capsys, "history", "--data", str(trained.data_dir)).splitlines()
    assert table[1].split()[:4] == ["when", "update", "run", "checkpoint"]


def test_status_shows_the_running_daemons_watch_folder_and_says_how_to_write_facts(trained, tmp_path, capsys):
    from engram_ff.state.queries import remember

    elsewhere = tmp_path / "logs" / "engram"
    elsewhere.mkdir(parents=True)
    copy = tmp_path / "state"
    copy.mkdir()
    (copy / "engram-ff.db").write_bytes(trained.db_path.read_bytes())
    db = open_db(copy / "engram-ff.db")
    remember(db, "watch_dir", str(elsewhere))  # what `run --watch ~/logs/engram --data ~/state` records
    db.close()
    out = run(capsys, "status", "--data", str(copy))
    assert f"watch folder  {elsewhere}\n" in out  # not ~/state/engram (does not exist)
    with DataDirLock(copy / "engram-ff.lock"):
        out = run(capsys, "status", "--data", str(copy), "--watch", str(tmp_path))
    assert re.search(rf"^watching +{re.escape(str(elsewhere))}$", out, flags=re.M)  # the daemon's, not --watch
    assert re.search(r"^facts +none probed \(below: how to write them\)$", out, flags=re.M)
    assert '  [[fact]]\n  name = "sister-city"' in out and "facts_file" in out


def test_newest_days_are_the_newest_that_hold_messages(tmp_path, capsys):
    """One stray message months after the rest must not hide every other day from `status`."""
    watch = tmp_path / "engram"
    for n, day in enumerate(["2026-03-01", "2026-03-02", "2026-03-03"]):
        write_day(watch, day, 20 + n)
    write_day(watch, "2026-11-20", 2)
    catch_up(open_db(tmp_path / "engram-ff.db"), watch)
    out = run(capsys, "status", "--data", str(tmp_path))
    newest = out.split("newest days:")[1].split("\n\n")[0]
    assert "2026-03-01" in newest and "2026-11-20" in newest
