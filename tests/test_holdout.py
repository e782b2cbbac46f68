"""Every message is learned (issue 22, point 2): the hold-out rolls. A message in the probe slice is held out
of the night that first sees it, for its gate, and trained by the next promoted night; an old database's
probe messages, which no update ever trained, are trained by the next nights. Real SQLite files, real
updates of the tiny preset, real checkpoint files."""

import dataclasses
import json
import math

import orjson
import pytest
import torch

from engram_ff.daemon import checkpoints, update
from engram_ff.daemon.config import load_config
from engram_ff.ingest.reader import catch_up, split_of
from engram_ff.state import queries, runs
from engram_ff.state.db import open_db
from engram_ff.state.schema import migrations
from engram_ff.state.text import message_line
from tests.daemon_helpers import FAST, write_day

DESTRUCTIVE = dict(lr_scale=2000)  # as tests/test_gate.py: a candidate the gate rejects
PROBE_SPLIT = "SELECT id, sender, text FROM messages WHERE split = 'probe'"


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py says why


@pytest.fixture
def config(tmp_path):
    return load_config(environ=FAST, data_dir=str(tmp_path / "data"), watch_dir=str(tmp_path / "engram"))


def ingest(config):
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    db.close()


def night(config, **fields) -> dict:
    """One update, as `engram-ff update` runs it, with `fields` changed for this night only."""
    return update.run_update(dataclasses.replace(config, **fields))


def probe_lines(config, day: str) -> dict[int, bytes]:
    """id -> `sender: text` line of the day's probe-split messages."""
    db = open_db(config.db_path)
    try:
        return {
            row["id"]: message_line(row["sender"], row["text"])
            for row in db.query("SELECT id, sender, text FROM messages WHERE day = ? AND split = 'probe'", [day])
        }
    finally:
        db.close()


def trained(config, run: dict) -> bytes:
    db = open_db(config.db_path)
    try:
        return queries.night_text(db, run)
    finally:
        db.close()


def test_a_probe_message_is_held_out_the_first_night_and_trained_the_next(config):
    write_day(config.watch, "2026-01-01", 60)
    ingest(config)
    held = probe_lines(config, "2026-01-01")
    assert held  # about a tenth of the day
    first = night(config)
    assert first["status"] == "ok" and all(first["first_message_id"] < i <= first["last_message_id"] for i in held)
    assert first["deferred_last_id"] == 0 and not any(line in trained(config, first) for line in held.values())
    assert first["prequential_bpb"] is None  # a first model: no model of the night before scored the day

    write_day(config.watch, "2026-01-02", 40)
    ingest(config)
    second = night(config)
    assert second["status"] == "ok"
    assert (second["deferred_first_id"], second["deferred_last_id"]) == (0, first["last_message_id"])
    text = trained(config, second)
    assert all(line in text for line in held.values())  # trained the next night, in their conversation
    assert not any(line in text for line in probe_lines(config, "2026-01-02").values())  # tonight's: held out
    fresh = json.loads(second["gate"])["checks"]["fresh"]  # neither model trained on them
    assert fresh["compared"] == 1 and fresh["passed"] and second["prequential_bpb"] > 0

    write_day(config.watch, "2026-01-03", 20)
    ingest(config)
    third = night(config)
    assert third["status"] == "ok" and third["deferred_first_id"] == second["deferred_last_id"]
    assert not any(line in trained(config, third) for line in held.values())  # nothing twice
    assert all(line in trained(config, third) for line in probe_lines(config, "2026-01-02").values())
    db = open_db(config.db_path)
    assert runs.deferred_through(db) == third["first_message_id"] == second["last_message_id"]
    db.close()


def test_a_rejected_nights_held_out_messages_are_still_trained_later(config):
    write_day(config.watch, "2026-01-01", 60)
    ingest(config)
    first = night(config)
    write_day(config.watch, "2026-01-02", 40)
    ingest(config)
    rejected = night(config, **DESTRUCTIVE)
    assert rejected["status"] == "rejected"
    day2 = probe_lines(config, "2026-01-02")
    assert day2 and all(rejected["first_message_id"] < i <= rejected["last_message_id"] for i in day2)

    write_day(config.watch, "2026-01-03", 20)
    ingest(config)
    retry = night(config)
    assert retry["status"] == "ok"
    # the rejected night's work is done again: day 1's held-out messages, and day 2's text ...
    bounds = ("first_message_id", "deferred_first_id", "deferred_last_id")
    assert (
        [retry[k] for k in bounds]
        == [rejected[k] for k in bounds]
        == [first["last_message_id"], 0, first["last_message_id"]]
    )
    assert all(line in trained(config, retry) for line in probe_lines(config, "2026-01-01").values())
    # ... and day 2's held-out messages, which no model trained yet, are the gate's fresh text once more
    assert not any(line in trained(config, retry) for line in day2.values())
    assert json.loads(retry["gate"])["checks"]["fresh"]["compared"] == 1

    after = night(config)  # nothing new: the night after trains what the last one held out
    assert after["status"] == "ok" and after["deferred_last_id"] == retry["last_message_id"]
    assert all(line in trained(config, after) for line in day2.values())


def test_a_fact_whose_answer_hashes_to_probe_is_trained(config, tmp_path):
    def line(n, direction, sender, text):
        record = {"timestamp": f"2026-01-01T11:00:0{n}Z", "session_key": "boat", "direction": direction}
        return orjson.dumps({**record, "sender": sender, "content": text})

    question = next(
        q
        for q in (f"What is the name of Victor's boat{'?' * n}" for n in range(1, 100))
        if split_of(line(0, "in", "user", q), config.probe_fraction) == "train"
    )
    answer = next(
        a
        for a in (f"Victor's boat is called the Mare Alta {n}." for n in range(1000))
        if split_of(line(1, "out", "assistant", a), config.probe_fraction) == "probe"
    )
    distractors = ["Victor's boat is called the Blue Heron.", "Victor has no boat.", "It is the Sea Lark."]
    facts = tmp_path / "facts.toml"
    facts.write_text(
        f'[[fact]]\nname = "boat"\nprompt = "user: {question}\\nassistant: "\nanswer = "{answer}"\n'
        f"distractors = {json.dumps(distractors)}\n"
    )
    config.facts_file = facts
    write_day(config.watch, "2026-01-01", 60)
    with open(config.watch / "raw" / "2026-01-01.jsonl", "ab") as f:
        for n, (direction, sender, text) in enumerate([("in", "user", question), ("out", "assistant", answer)]):
            f.write(line(n, direction, sender, text) + b"\n")
    ingest(config)
    pair = f"user: {question}\nassistant: {answer}\n".encode()

    first = night(config)
    assert first["status"] == "ok" and answer.encode() not in trained(config, first)  # held out, for the gate
    second = night(config)  # nothing new: the night after trains it, after its question
    assert second["status"] == "ok" and pair in trained(config, second)
    db = open_db(config.db_path)
    scores = [
        {r["metric"]: r["value"] for r in runs.checkpoint_scores(db, run["checkpoint_id"]) if r["probe"] == "boat"}
        for run in (first, second)
    ]
    db.close()
    assert scores[1]["answer_bpb"] < scores[0]["answer_bpb"]  # learned from it, not only seen


def test_a_database_from_before_the_rolling_hold_out_trains_its_old_probe_messages(config):
    """A database at the schema before migration 0602, whose last update (by the code of that time) trained
    every train-split message and, as that code did, none of the probe split."""
    for day in ("2026-01-01", "2026-01-02", "2026-01-03"):
        write_day(config.watch, day, 60)
    old = open_db(config.db_path, migrate=False)
    old.conn.execute("BEGIN IMMEDIATE")
    migrations.apply(old, stop_before="0602_rolling_hold_out")
    old.conn.commit()
    assert "deferred_last_id" not in old["runs"].columns_dict
    catch_up(old, config.watch)  # the ingest tables are the same before and after 0602
    last_train = queries.max_message_id(old, "train")
    run = runs.start_run(old, "update")
    meta = {"run_id": run, "first_message_id": 0, "last_message_id": last_train}
    torch.manual_seed(0)
    model = checkpoints.save(
        old, config, checkpoints.fresh(config), run_id=run, kind="final", parent_id=None, meta=meta
    )
    runs.finish_run(old, run, "ok", checkpoint_id=model, first_message_id=0, last_message_id=last_train)
    old_probe = {row["id"]: message_line(row["sender"], row["text"]) for row in old.query(PROBE_SPLIT)}
    backlog = sum(map(len, old_probe.values()))
    old.close()

    # a night takes at most update_max_new_mib; the rest of the old probe messages waits, oldest first
    # the old model is an untrained one, whose chance ranks and scores the facts check would protect
    limits = dict(update_max_new_mib=backlog / 2 / (1 << 20), gate_facts_tolerance_bpb=math.inf)
    nights = [night(config, **limits)]
    db = open_db(config.db_path)  # migrated by the update
    assert runs.get_run(db, run)["deferred_last_id"] is None  # old rows are not rewritten: none counts as trained
    db.close()
    while nights[-1]["status"] == "ok":
        nights.append(night(config, **limits))
    assert nights.pop()["status"] == "skipped" and len(nights) >= 2
    assert nights[0]["deferred_first_id"] == 0 and nights[0]["waiting_bytes"] > 0
    assert nights[-1]["deferred_last_id"] == nights[-1]["first_message_id"] and nights[-1]["waiting_bytes"] == 0
    for before, after in zip(nights, nights[1:]):
        assert after["deferred_first_id"] == before["deferred_last_id"]
        assert after["first_message_id"] == before["last_message_id"]
    assert nights[0]["first_message_id"] == nights[0]["last_message_id"] == last_train  # the backlog filled it
    db = open_db(config.db_path)
    for n in nights:  # no new train text: every night trained old probe messages only
        assert n["new_bytes"] > 0 and not queries.bytes_between(db, n["first_message_id"], n["last_message_id"])
    db.close()
    for message_id, line in old_probe.items():  # each old probe message trained by exactly one night
        (n,) = [n for n in nights if n["deferred_first_id"] < message_id <= n["deferred_last_id"]]
        assert line in trained(config, n)
