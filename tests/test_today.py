"""Learning by day (daemon/today.py): the memory learns new messages between nights, as an overlay of the
checkpoint that `ask` answers with, built again over each new checkpoint; on a real database, real
checkpoints, the real child process and the service's own job."""

from __future__ import annotations

import logging
import math
import subprocess
import sys

import orjson
import pytest
import torch

from engram_ff.daemon import ask, checkpoints, today, update
from engram_ff.daemon.cli import main
from engram_ff.daemon.service import Service
from engram_ff.ingest.reader import catch_up, split_of
from engram_ff.model.train import evaluate_nats
from engram_ff.state import queries, runs
from tests.daemon_helpers import environment, recorder_line
from tests.test_incremental import make  # noqa: F401  (the fixture)

QUESTION, ANSWER = "What is the code of my bike lock?", "Your bike lock code is 6082."


def fact_lines(day: str, session: str = "fact") -> list[bytes]:
    said = [("user", "in", QUESTION, "11:00:00"), ("assistant", "out", ANSWER, "11:00:05")]
    return [
        orjson.dumps({"timestamp": f"{day}T{t}Z", "session_key": session, "direction": d, "sender": s, "content": text})
        + b"\n"
        for s, d, text, t in said
    ]


def add_lines(config, db, day: str, lines: list[bytes]) -> None:
    with open(config.watch / "raw" / f"{day}.jsonl", "ab") as f:
        f.writelines(lines)
    catch_up(db, config.watch)


def answer_cost(model) -> float:
    """Bits per byte of the fact's exchange: what the model has learned of it."""
    return evaluate_nats(model, f"user: {QUESTION}\nassistant: {ANSWER}\n".encode()) / math.log(2)


@pytest.fixture
def night(make):  # noqa: F811
    """(config, db) after a promoted first night."""
    config, db = make()
    assert update.run_update(config)["status"] == "ok"
    return config, db


def test_a_fact_said_today_is_learned_before_the_night_and_ask_answers_it(night, capsys):
    config, db = night
    day = "2026-01-02"
    add_lines(config, db, day, [recorder_line(day, n) for n in range(20)] + fact_lines(day))
    checkpoint_only = checkpoints.current_model(db)[0]

    learned = today.learn_today(db, config)
    assert learned.rebuilt and learned.through == queries.max_message_id(db) and learned.new_bytes > 1000
    assert 0 < learned.bpb < 8 and config.today_path.is_file()
    with_today = today.model_for_answers(db, config)[0]
    assert answer_cost(with_today) < answer_cost(checkpoint_only) - 1.0
    for layer, kept in zip(with_today.layers, checkpoint_only.layers):  # only the memory learns by day
        assert all(torch.equal(a, b) for a, b in zip(layer.state_dict().values(), kept.state_dict().values()))
    who = ask.voices(db)
    said = ask.answer(with_today, ask.prompt(QUESTION, who), who, max_bytes=64).decode()
    assert "6082" in said
    assert main(["ask", QUESTION, "--data", str(config.data_dir)]) == 0
    assert "6082" in capsys.readouterr().out  # the command answers from the overlay, as the library does

    (row,) = db.query("SELECT * FROM by_day")  # its history, for status and sqlite3
    assert (row["through_id"], row["bytes"], row["rebuilt"]) == (learned.through, learned.new_bytes, 1)
    assert row["bpb"] == pytest.approx(learned.bpb)
    assert main(["status", "--data", str(config.data_dir)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("today "))
    assert "learned by day" in line and f"through message {learned.through}" in line
    assert f"{learned.bpb:.2f} bits per byte" in line


def test_each_call_reads_only_what_came_since(night):
    config, db = night
    day = "2026-01-02"
    add_lines(config, db, day, [recorder_line(day, n) for n in range(10)])
    first = today.learn_today(db, config)
    again = today.learn_today(db, config)
    assert (again.new_bytes, again.through, again.rebuilt) == (0, first.through, False) and math.isnan(again.bpb)
    add_lines(config, db, day, fact_lines(day))
    more = today.learn_today(db, config)
    assert not more.rebuilt and more.through == queries.max_message_id(db)
    assert more.new_bytes == len(f"user: {QUESTION}\nassistant: {ANSWER}\n")
    assert answer_cost(today.model_for_answers(db, config)[0]) < answer_cost(checkpoints.current_model(db)[0]) - 1.0


def fact_in(split: str, day: str) -> list[bytes]:
    """The fact's exchange in a session whose answer lands in `split`: "probe", which the rolling hold-out keeps
    out of its night, or "train", which the night trains."""
    for n in range(1000):
        lines = fact_lines(day, session=f"fact-{n}")
        if split_of(lines[1].rstrip(b"\n"), 0.1) == split:
            return lines
    raise AssertionError(f"no session name puts the answer in the {split} split")


def test_after_a_night_the_overlay_is_built_again_over_the_new_checkpoint_with_what_it_held_out(night):
    """The night trains the day for good and holds a tenth out for tomorrow: the overlay over the old checkpoint
    is dropped, and the held-out answer is learned by day over the new one, in its conversation."""
    config, db = night
    day = "2026-01-02"
    add_lines(config, db, day, [recorder_line(day, n) for n in range(30)] + fact_in("probe", day))
    assert db.execute("SELECT split FROM messages WHERE text = ?", [ANSWER]).fetchone()[0] == "probe"
    before = today.learn_today(db, config)
    assert update.run_update(config)["status"] == "ok"
    checkpoint = checkpoints.current_model(db)
    assert checkpoint[1]["id"] != before.checkpoint_id
    assert today.read_overlay(config, checkpoint[1]) is None  # over the old checkpoint: not used any more
    assert today.model_for_answers(db, config)[0] is not None  # and ask still answers, from the checkpoint

    rebuilt = today.learn_today(db, config)
    assert rebuilt.rebuilt and rebuilt.checkpoint_id == checkpoint[1]["id"]
    day_text = queries.newest_text_after(db, 0, 1 << 20)[0]
    assert len(ANSWER) < rebuilt.new_bytes < len(day_text) / 2  # the held-out slice, not what the night trained
    assert answer_cost(today.model_for_answers(db, config)[0]) < answer_cost(checkpoint[0]) - 1.0


def test_learning_that_makes_what_the_checkpoint_knew_worse_is_not_kept(make, tmp_path, capsys):  # noqa: F811
    """The overlay's gate: text that gives the fact's question another answer 400 times, learned by day, would
    make the checkpoint's fact worse (its answer by 0.5 bits per byte when this test was written, above the
    tolerance set here); it is refused whole, `ask` still answers, the text is not read again, and the next
    ordinary message is learned and kept. (A paste of random characters made the answer 3.9 bits per byte worse
    before a pass could take at most half of a set; now 0.01: tests/test_memory.py.)"""
    facts = tmp_path / "facts.toml"
    wrong = ("Your bike lock code is 1234.", "Your bike lock code is 9930.", "Your bike lock code is 4417.")
    facts.write_text(
        f'[[fact]]\nname = "bike-lock"\nprompt = "user: {QUESTION}\\nassistant: "\nanswer = "{ANSWER}"\n'
        f"distractors = {list(wrong)!r}\n".replace("'", '"')
    )
    config, db = make(facts_file=str(facts), gate_facts_tolerance_bpb=0.25)
    add_lines(config, db, "2026-01-01", fact_in("train", "2026-01-01"))
    assert update.run_update(config)["status"] == "ok"
    checkpoint = checkpoints.current_model(db)
    known = {r["metric"]: r["value"] for r in runs.newest_pass(db, checkpoint[1]["id"]) if r["probe"] == "bike-lock"}
    assert known["answer_rank"] == 1 and known["answer_bpb"] < 1.0  # the checkpoint knows it: the gate holds it

    day = "2026-01-02"
    paste = [f"user: {QUESTION}\nassistant: No idea, I keep no codes.\n" * 10 for _ in range(40)]
    add_lines(config, db, day, [recorder_line(day, n, text=text) for n, text in enumerate(paste)])
    refused = today.learn_today(db, config)
    assert refused.refused is not None and refused.through == queries.max_message_id(db)
    assert refused.refused.startswith("worse than the current model: facts' answer bits per byte +")
    assert today.read_overlay(config, checkpoint[1])["changes"] == {}  # over the checkpoint: nothing of the paste
    assert answer_cost(today.model_for_answers(db, config)[0]) == answer_cost(checkpoint[0])
    (row,) = db.query("SELECT refused, bytes FROM by_day")
    assert row == {"refused": refused.refused, "bytes": refused.new_bytes}
    assert main(["status", "--data", str(config.data_dir)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("today "))
    assert "1 call not kept, the newest worse than the current model" in line

    add_lines(config, db, day, fact_lines(day, session="again"))  # ordinary text after it: learned and kept
    kept = today.learn_today(db, config)
    assert kept.refused is None and kept.new_bytes == len(f"user: {QUESTION}\nassistant: {ANSWER}\n")
    assert runs.by_day_since(db, checkpoint[1]["id"])["calls"] == 1


def test_learn_by_day_off_answers_from_the_checkpoint_alone(night, make):  # noqa: F811
    config, db = night
    day = "2026-01-02"
    add_lines(config, db, day, [recorder_line(day, n) for n in range(10)] + fact_lines(day))
    today.learn_today(db, config)
    off, _ = make(learn_by_day=False)
    plain = checkpoints.current_model(db)[0]
    assert answer_cost(today.model_for_answers(db, off)[0]) == answer_cost(plain)


def test_a_damaged_or_foreign_overlay_is_a_log_line_and_is_built_again(night, caplog):
    config, db = night
    day = "2026-01-02"
    add_lines(config, db, day, [recorder_line(day, n) for n in range(10)])
    first = today.learn_today(db, config)
    data = bytearray(config.today_path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    config.today_path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="engram_ff.daemon.today"):
        again = today.learn_today(db, config)
    assert "truncated or corrupt" in caplog.text and "built again" in caplog.text
    assert again.rebuilt and again.through == first.through and again.new_bytes == first.new_bytes

    row = checkpoints.current_model(db)[1]  # rows of another preset's bigger tables: never half applied
    today.write_overlay(config, row, first.through, {"rows": (torch.tensor([1 << 30]), torch.zeros(1, 8).half())})
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engram_ff.daemon.today"):
        model = today.model_for_answers(db, config)[0]
    assert "does not fit this model's memory (rows)" in caplog.text
    assert answer_cost(model) == answer_cost(checkpoints.current_model(db)[0])


def test_no_model_yet_means_nothing_to_learn_onto(make):  # noqa: F811
    config, db = make()
    assert today.learn_today(db, config) is None and not config.today_path.exists()


def test_the_child_and_the_services_job_learn_what_came_and_nothing_twice(night):
    """The real child process, as the service starts it, through the service's own job; then a second tick with
    nothing new starts no child at all."""
    config, db = night
    day = "2026-01-02"
    add_lines(config, db, day, [recorder_line(day, n) for n in range(10)] + fact_lines(day))
    env = environment(ENGRAM_FF_DATA_DIR=str(config.data_dir), ENGRAM_FF_WATCH_DIR=str(config.watch))
    child = subprocess.run(
        [sys.executable, "-m", "engram_ff.daemon.today"], env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 0 and "learned by day" in child.stderr and "Traceback" not in child.stderr
    assert today.read_overlay(config, checkpoints.current_model(db)[1])["through"] == queries.max_message_id(db)

    service = Service(config, lambda: config)
    add_lines(config, db, day, [recorder_line(day, n) for n in range(10, 14)])
    assert service.learn_by_day() == 0
    assert today.read_overlay(config, checkpoints.current_model(db)[1])["through"] == queries.max_message_id(db)
    assert service.learn_by_day() is None  # nothing new since: no child


def test_the_ingest_and_update_commands_learn_by_day_as_the_daemon_does(night, capsys, monkeypatch):
    """Without a daemon, `ingest` and `update` do what its by-day child would: ask answers what was just read."""
    config, db = night
    for key, value in environment().items():
        if key.startswith("ENGRAM_FF_"):
            monkeypatch.setenv(key, value)
    day = "2026-01-02"
    with open(config.watch / "raw" / f"{day}.jsonl", "ab") as f:
        f.writelines([recorder_line(day, n) for n in range(20)] + fact_lines(day))
    where = ["--watch", str(config.watch), "--data", str(config.data_dir)]
    assert main(["ingest", *where]) == 0
    assert "22 new messages" in (out := capsys.readouterr().out) and "learned by day: " in out
    assert today.read_overlay(config, checkpoints.current_model(db)[1])["through"] == queries.max_message_id(db)
    assert main(["ask", QUESTION, "--data", str(config.data_dir)]) == 0
    assert "6082" in capsys.readouterr().out

    assert main(["update", *where]) == 0
    assert "ok" in capsys.readouterr().out
    assert today.read_overlay(config, checkpoints.current_model(db)[1]) is not None  # over the new checkpoint


def test_a_child_that_cannot_write_its_overlay_says_so_in_one_line(night):
    """A folder where today.pt belongs: the child cannot learn, says so, and leaves the folder and messages."""
    config, db = night
    day = "2026-01-02"
    add_lines(config, db, day, [recorder_line(day, n) for n in range(5)])
    config.today_path.mkdir()
    env = environment(ENGRAM_FF_DATA_DIR=str(config.data_dir), ENGRAM_FF_WATCH_DIR=str(config.watch))
    child = subprocess.run(
        [sys.executable, "-m", "engram_ff.daemon.today"], env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == 1 and "Traceback" not in child.stderr
    assert "not learned by day" in child.stderr and "the messages are stored" in child.stderr
    assert config.today_path.is_dir() and queries.max_message_id(db) > 0
    assert not list(db.query("SELECT * FROM by_day"))  # no row names learning that is not there


def test_what_is_learned_by_day_changes_nothing_the_night_trains(tmp_path, two_torch_threads):
    """Two data directories, the same messages, the same nights; one learns by day in between. Their nights'
    checkpoints are the same to the bit: the night trains from the checkpoint, never from the overlay. On two
    threads, as the daemon trains: before the memory gave each row one defined write a chunk, two runs of
    the same night on two threads already differed (model/memory.py _claim)."""
    from engram_ff.daemon.config import load_config
    from engram_ff.model.checkpoint import load_checkpoint
    from engram_ff.state.db import open_db
    from tests.daemon_helpers import FAST, write_day

    watch = tmp_path / "engram"
    pairs = []
    for name in ("plain", "by-day"):
        config = load_config(
            environ=FAST, data_dir=str(tmp_path / name), watch_dir=str(watch), update_min_steps=6, update_max_steps=6
        )
        pairs.append((config, open_db(config.db_path)))

    def night() -> list[dict]:
        states = []
        for config, db in pairs:
            catch_up(db, config.watch)
            torch.manual_seed(0)
            row = update.run_update(config)
            assert row["status"] == "ok"
            path = db.execute("SELECT path FROM checkpoints WHERE id = ?", [row["checkpoint_id"]]).fetchone()[0]
            states.append(load_checkpoint(path)["model"])
        return states

    write_day(watch, "2026-01-01", 60)
    first = night()
    assert all(torch.equal(first[0][k], first[1][k]) for k in first[0])  # the same night twice: the same bits
    day = "2026-01-02"
    with open(watch / "raw" / f"{day}.jsonl", "ab") as f:
        f.writelines([recorder_line(day, n) for n in range(20)] + fact_lines(day))
    by_day, db = pairs[1]
    catch_up(db, watch)
    assert today.learn_today(db, by_day).new_bytes > 0
    plain, learned = night()
    assert plain.keys() == learned.keys() and all(torch.equal(plain[k], learned[k]) for k in plain)
    for _, db in pairs:
        db.close()
