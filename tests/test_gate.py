"""A night never leaves the model worse (issue 12): updates sized to their data and the promotion gate, on
real updates of the tiny preset over a real database and real checkpoint files; and an update that
refuses to replace a model it cannot load (issue 16, item 4)."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys

import pytest
import sqlite_utils

from engram_ff.bench.chaos import check_state
from engram_ff.daemon import gate, recipe, update
from engram_ff.daemon.cli import main
from engram_ff.daemon.config import load_config
from engram_ff.daemon.facts import BUNDLED_FACTS
from engram_ff.daemon.probes import probed_days
from engram_ff.daemon.service import Service
from engram_ff.ingest.reader import catch_up
from engram_ff.state import runs
from engram_ff.state.db import connect, open_db
from engram_ff.state.schema import migrations
from tests.daemon_helpers import FAST, environment, query, recorder_line, wait_for, write_day

SMALL_DAY = "The cat needs her pills tonight"  # 31 bytes, in the train split
# A destructive night: on the tiny preset's repetitive text, lr_scale = 50 took the held-out bits per byte up
# by 1.1 once and left them alone another time; 200 took them up by 242, and 2,000 diverges (NaN), still
# destructive after the halvings of three rejected nights in a row (recipe.retry_rate).
DESTRUCTIVE = dict(lr_scale=2000)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py says why


@pytest.fixture
def night(tmp_path, monkeypatch):
    """night(day, lines, **config) ingests `lines` new messages of `day` and runs one update with the FAST
    configuration (plus `config`), as `engram-ff update` would; returns the update's row. The same
    configuration is in the environment, so the CLI commands a test runs see it too."""
    for key, value in {**FAST, "ENGRAM_FF_DATA_DIR": str(tmp_path / "data")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ENGRAM_FF_WATCH_DIR", str(tmp_path / "engram"))
    monkeypatch.setenv("ENGRAM_FF_FACTS_FILE", str(BUNDLED_FACTS))  # facts for the gate to compare
    written: dict[str, int] = {}

    def night(day: str | None, lines: int = 0, *, text: str | None = None, **fields) -> dict:
        config = load_config(**fields)
        if day is not None:
            path = config.watch / "raw" / f"{day}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as f:
                for n in range(written.get(day, 0), written.get(day, 0) + lines):
                    f.write(recorder_line(day, n, text=text))
            written[day] = written.get(day, 0) + lines
            db = open_db(config.db_path)
            catch_up(db, config.watch)
            db.close()
        return update.run_update(config)

    return night


def current_id(config_or_dir) -> int | None:
    db = open_db(config_or_dir.db_path)
    try:
        row = runs.current_checkpoint(db)
        return row["id"] if row else None
    finally:
        db.close()


def checkpoint_row(config, checkpoint_id: int) -> dict:
    db = open_db(config.db_path)
    try:
        return runs.get_checkpoint(db, checkpoint_id)
    finally:
        db.close()


def generate(capsys, path: str) -> str:
    capsys.readouterr()
    argv = ["generate", "--checkpoint", path, "--prompt", "user: message", "--bytes", "60", "--temperature", "0"]
    assert main(argv) == 0
    return capsys.readouterr().out


def test_the_step_budget_bounds_passes_once_a_model_exists_and_small_days_replay_history():
    config = load_config(environ={})
    issue = recipe.step_budget(config, 38 + 76, matured=True)  # issue 12's day: 38 new bytes, 76 replayed
    assert issue == 1  # 300 steps before: 4,757 passes over 114 bytes
    assert recipe.step_budget(config, 38 + 76, matured=False) == 300  # a fresh model has nothing to forget
    normal = 60_000 + recipe.replay_size(config, 60_000, history_bytes=10**6)  # a day of a few hundred messages
    assert normal == 180_000 and recipe.step_budget(config, normal, matured=True) == 300  # as the study ran them
    replay = recipe.replay_size(config, 31, history_bytes=10**6)
    assert replay == 65536 and 31 / (31 + replay) < 0.001  # a small day's batches are mostly history
    assert recipe.replay_size(config, 31, history_bytes=5_000) == 5_000  # the floor never repeats history
    assert recipe.replay_size(config, 31, history_bytes=0) == 0


def test_a_31_byte_day_after_a_normal_one_stays_within_tolerance(night):
    first = night("2026-01-01", 60)
    assert first["status"] == "ok" and "first model" in json.loads(first["gate"])["reason"]
    assert night(None)["status"] == "ok"  # the night after: the first day's held-out messages, trained
    small = night("2026-01-02", 1, text=SMALL_DAY)
    assert small["new_bytes"] == len(f"user: {SMALL_DAY}\n")
    config = load_config()
    passes = small["steps"] * config.batch_size * config.seq_len / (small["new_bytes"] + small["replay_bytes"])
    assert passes <= config.update_max_passes + 0.5  # not 300 steps over 38 bytes
    assert small["replay_bytes"] > 50 * small["new_bytes"]  # learned in the context of the older day
    decision = json.loads(small["gate"])
    assert small["status"] == "ok" and decision["decision"] == "promoted", decision
    held_out = decision["checks"]["held_out"]
    assert held_out["compared"] >= 1 and held_out["delta"] <= config.gate_tolerance_bpb


def test_a_destructive_update_is_rejected_and_the_model_stays_as_it_was(night, capsys):
    config = load_config()
    first = night("2026-01-01", 60)
    before_path = checkpoint_row(config, current_id(config))["path"]
    before = generate(capsys, before_path)

    rejected = night("2026-01-02", 40, **DESTRUCTIVE)
    decision = json.loads(rejected["gate"])
    assert rejected["status"] == "rejected" and decision["decision"] == "rejected", decision
    assert not decision["checks"]["held_out"]["passed"] and "held-out bits per byte +inf" in decision["reason"]
    assert "worse than the current model" in decision["reason"]
    candidate = checkpoint_row(config, rejected["checkpoint_id"])
    assert candidate["status"] == "rejected" and os.path.exists(candidate["path"])  # kept for inspection
    assert current_id(config) == first["checkpoint_id"]
    assert generate(capsys, checkpoint_row(config, current_id(config))["path"]) == before

    assert main(["history"]) == 0
    assert "rejected" in capsys.readouterr().out.splitlines()[-1]  # the newest pass, of the candidate

    promoted = night("2026-01-03", 30)  # the rejected night's messages wait for the next promoted one
    assert promoted["status"] == "ok" and promoted["parent_checkpoint_id"] == first["checkpoint_id"]
    assert promoted["first_message_id"] == first["last_message_id"]
    assert promoted["last_message_id"] > rejected["last_message_id"]
    assert promoted["new_bytes"] > rejected["new_bytes"]  # both days' messages
    assert check_state(config.watch, config.data_dir, settled=True).ok


def test_several_rejections_in_a_row_are_said_loudly_everywhere(night, capsys, caplog, monkeypatch):
    config = load_config()
    night("2026-01-01", 60)
    for n in range(gate.ALARM_AFTER):
        row = night(f"2026-01-0{n + 2}", 10, **DESTRUCTIVE)
        assert row["status"] == "rejected"
        # each retry of the backlog is gentler: text that spoils one candidate cannot block learning for good
        assert json.loads(row["gate"])["learning_rate_scale"] == DESTRUCTIVE["lr_scale"] / 2**n
    assert "updates in a row rejected by the promotion gate" in caplog.text
    capsys.readouterr()
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert f"WARNING: {gate.ALARM_AFTER} updates in a row rejected" in out and "gate: rejected:" in out
    assert main(["history"]) == 0
    assert f"WARNING: {gate.ALARM_AFTER} updates in a row rejected" in capsys.readouterr().out
    service = Service(config, lambda: config)
    service._refresh_last_update()
    assert "rejected" in service.status_line(None) and "WARNING" in service.status_line(None)  # STATUS=
    monkeypatch.setenv("ENGRAM_FF_LR_SCALE", str(DESTRUCTIVE["lr_scale"]))
    assert main(["update"]) == 4  # nothing new, but the backlog of the rejected nights is tried again
    assert "update rejected" in capsys.readouterr().err


def test_a_model_without_a_comparable_probe_pass_is_probed_before_it_is_compared(night):
    config = load_config()
    first = night("2026-01-01", 60)
    db = open_db(config.db_path)
    with db.conn:  # a pass recorded before the gate existed has no text hashes
        db.execute("UPDATE probe_scores SET text_hash = NULL")
    db.close()
    second = night("2026-01-02", 30)
    assert json.loads(second["gate"])["checks"]["held_out"]["compared"] >= 1
    rows = query(config.db_path, "SELECT count(DISTINCT run_id) FROM probe_scores WHERE checkpoint_id = ?", [1])
    assert rows == [(2,)] and first["checkpoint_id"] == 1


def test_probing_a_checkpoint_again_does_not_repeat_its_rows_in_probe_history(night):
    config = load_config()
    first = night("2026-01-01", 60)
    update.run_probes(config)
    update.run_probes(config)
    db = config.db_path
    per_day = query(  # the README's "does it still know last month?" query
        db,
        "SELECT day, value FROM probe_history WHERE metric = 'probe_bpb' "
        "AND checkpoint = (SELECT max(checkpoint) FROM probe_history) ORDER BY day",
    )
    assert [day for day, _ in per_day] == ["2026-01-01"]
    victor = query(db, "SELECT recorded_at, checkpoint, metric, value FROM probe_history WHERE probe = 'who-is-victor'")
    assert len(victor) == 2  # answer_bpb and answer_rank, once
    assert query(db, "SELECT count(DISTINCT run_id) FROM probe_scores WHERE checkpoint_id = ?", [1]) == [(3,)]
    assert first["checkpoint_id"] == 1


def test_probed_days_are_bounded_stable_and_keep_the_oldest():
    days = [f"d{i:03d}" for i in range(400)]
    for n in (1, 31, 32, 33, 100, 365, 400):
        chosen = probed_days(days[:n], 32)
        assert len(chosen) <= 32 and chosen[0] == "d000" and chosen[-16:] == days[max(0, n - 16) : n]
        assert chosen == sorted(chosen)
    for n in range(33, 400):  # tonight's older days are a subset of last night's, or of its stride
        last, tonight = probed_days(days[:n], 32), probed_days(days[: n + 1], 32)
        assert len(set(last) & set(tonight)) >= 12


def test_the_gate_compares_only_the_same_texts_and_facts_the_model_knows():
    config = load_config(environ={})

    def row(metric, value, text_hash, day=None, probe="retention"):
        return dict(metric=metric, value=value, text_hash=text_hash, day=day, probe=probe)

    current = [
        row("probe_bpb", 3.0, 1, "d1"),
        row("probe_bpb", 3.0, 2, "d2"),
        row("answer_bpb", 0.5, 9, probe="known"),
        row("answer_rank", 1, 9, probe="known"),
        row("answer_bpb", 6.0, 8, probe="unknown"),  # ranked first by chance, worse than the held-out text
        row("answer_rank", 1, 8, probe="unknown"),
    ]
    candidate = [
        row("probe_bpb", 3.05, 1, "d1"),
        row("probe_bpb", 9.0, 3, "d2"),  # d2's text grew since: not comparable
        row("answer_bpb", 0.6, 9, probe="known"),
        row("answer_bpb", 9.0, 8, probe="unknown"),
    ]
    decision = gate.decide(candidate, current, config)
    assert decision["decision"] == "promoted", decision
    assert decision["checks"]["held_out"] == dict(
        compared=1, candidate=3.05, current=3.0, delta=0.05, tolerance=0.1, passed=True
    )
    assert decision["checks"]["facts"]["compared"] == 1 and decision["checks"]["canary"]["compared"] == 0
    candidate[0]["value"] = 3.2
    assert gate.decide(candidate, current, config)["decision"] == "rejected"
    assert gate.decide(candidate, None, config)["decision"] == "promoted"


def test_kill_9_during_the_gate_leaves_the_previous_model_current_and_the_next_update_judges(tmp_path):
    facts = tmp_path / "facts.toml"  # long prompts, so that the gate's probe pass takes seconds
    facts.write_text(
        "".join(
            f'[[fact]]\nname = "f{i}"\nprompt = "{f"user: tell me about fact number {i}. " * 20}"\n'
            f'answer = "It is fact {i}."\ndistractors = ["It is not.", "No idea.", "Maybe later."]\n\n'
            for i in range(15)  # 0.16 s a fact on the tiny preset: a 2.4 s window
        )
    )
    data, watch = tmp_path / "data", tmp_path / "engram"
    env = environment(ENGRAM_FF_DATA_DIR=str(data), ENGRAM_FF_WATCH_DIR=str(watch), ENGRAM_FF_FACTS_FILE=str(facts))
    config = load_config(environ=env)
    write_day(watch, "2026-01-01", 60)
    db = open_db(config.db_path)
    catch_up(db, watch)
    db.close()
    first = update.run_update(config)
    assert first["status"] == "ok"
    write_day(watch, "2026-01-02", 40)
    db = open_db(config.db_path)
    catch_up(db, watch)
    db.close()

    child = subprocess.Popen([sys.executable, "-m", "engram_ff.daemon.child"], env=env, stderr=subprocess.DEVNULL)
    candidate_sql = "SELECT id FROM checkpoints WHERE status = 'candidate'"
    wait_for(lambda: query(config.db_path, candidate_sql) or child.poll() is not None, what="the gate")
    child.send_signal(signal.SIGKILL)
    child.wait()
    ((candidate,),) = query(config.db_path, candidate_sql)  # killed while its candidate was probed
    assert current_id(config) == first["checkpoint_id"]
    state = check_state(watch, data, settled=True)
    assert state.ok and state.current_checkpoint == first["checkpoint_id"], state
    count = "SELECT count(*) FROM probe_scores WHERE checkpoint_id = ?"
    killed_pass = query(config.db_path, count, [candidate])[0][0]

    judged = update.run_update(config)
    assert killed_pass in (0, query(config.db_path, count, [judged["checkpoint_id"]])[0][0])  # all or nothing
    killed = query(config.db_path, "SELECT id, status FROM runs WHERE kind = 'update' ORDER BY id")[1]
    assert killed[1] == "interrupted" and judged["resumed_from"] == killed[0]
    assert judged["status"] in ("ok", "rejected") and judged["first_message_id"] == first["last_message_id"]
    assert query(config.db_path, "SELECT status FROM checkpoints WHERE id = ?", [candidate]) == [("pruned",)]
    assert not os.path.exists(checkpoint_row(config, candidate)["path"])
    assert check_state(watch, data, settled=True).ok


def test_no_loadable_checkpoint_refuses_loudly_until_asked_to_start_from_scratch(night, capsys):
    config = load_config()
    first = night("2026-01-01", 60)
    assert main(["update", "--from-scratch"]) == 5  # a model loads: nothing to start over, nothing recorded
    assert "loads, so nothing needs starting over" in capsys.readouterr().err
    assert query(config.db_path, "SELECT count(*) FROM runs WHERE kind = 'update'") == [(1,)]
    shutil.copytree(config.checkpoint_dir, config.data_dir.parent / "backup")
    shutil.rmtree(config.checkpoint_dir)

    refused = night("2026-01-02", 30)
    assert refused["status"] == "refused" and "--from-scratch" in refused["error"]
    assert main(["update"]) == 5
    assert "update refused" in capsys.readouterr().err
    assert main(["status"]) == 0 and "refused" in capsys.readouterr().out
    service = Service(config, lambda: config)
    service._refresh_last_update()
    assert "REFUSED" in service.status_line(None)  # STATUS=
    assert query(config.db_path, "SELECT status FROM checkpoints WHERE id = ?", [first["checkpoint_id"]]) == [
        ("good",)  # a missing file says nothing of its bytes: the row stays, and the database knows the model
    ]

    shutil.copytree(config.data_dir.parent / "backup", config.checkpoint_dir)  # as the refusal asks
    restored = night("2026-01-03", 10)
    assert restored["status"] == "ok" and restored["parent_checkpoint_id"] == first["checkpoint_id"]
    shutil.rmtree(config.checkpoint_dir)
    assert night(None)["status"] == "refused"

    assert main(["update", "--from-scratch"]) == 0
    fresh = query(
        config.db_path,
        "SELECT status, parent_checkpoint_id, first_message_id FROM runs WHERE kind = 'update' ORDER BY id DESC",
    )[0]
    assert fresh == ("ok", None, 0)  # a new model, on every message stored
    assert main(["update"]) == 0  # and the nights go on from it


def test_a_database_from_before_the_gate_is_migrated_with_its_rows(tmp_path):
    """Migration 0300 widens two CHECKs in place (SQLite cannot alter one) on a database that has rows."""
    path = tmp_path / "old.db"
    old = sqlite_utils.Database(connect(path))
    migrations.apply(old, stop_before="0300_promotion_gate")
    with old.conn:  # as the code of that time wrote it (state/runs.py at 0101)
        run = old.execute(
            "INSERT INTO runs (kind, started_at, status, pid) VALUES ('update', ?, 'running', 1)", [runs.now()]
        ).lastrowid
        old.execute(
            "INSERT INTO checkpoints (run_id, path, sha256, kind, parent_id, steps, status, created_at) "
            "VALUES (?, 'x.pt', '0', 'final', NULL, 1, 'good', ?)",
            [run, runs.now()],
        )
    runs.finish_run(old, run, "ok", checkpoint_id=1)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        runs.finish_run(old, run, "rejected")
    old.close()
    db = open_db(path)
    assert runs.model_existed(db) and runs.current_checkpoint(db)["path"] == "x.pt"
    runs.finish_run(db, run, "rejected", gate={"decision": "rejected"})
    runs.set_checkpoint_status(db, 1, "rejected")
    assert runs.get_run(db, run)["status"] == "rejected" and runs.current_checkpoint(db) is None
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_lost_database_never_adopts_a_candidate_the_gate_rejected(night, caplog):
    """The gate's verdict is also beside the file (`.rejected`), so a database made again after a loss
    takes the promoted model, not the newer candidate the gate held back."""
    config = load_config()
    first = night("2026-01-01", 60)
    rejected = night("2026-01-02", 30, **DESTRUCTIVE)
    assert rejected["status"] == "rejected"
    db = open_db(config.db_path)
    kept = db.execute("SELECT path FROM checkpoints WHERE id = ?", [rejected["checkpoint_id"]]).fetchone()[0]
    promoted = db.execute("SELECT path FROM checkpoints WHERE id = ?", [first["checkpoint_id"]]).fetchone()[0]
    db.close()
    assert os.path.exists(f"{kept}.rejected") and not os.path.exists(f"{promoted}.candidate")
    for suffix in ("", "-wal", "-shm"):
        config.db_path.with_name(config.db_path.name + suffix).unlink(missing_ok=True)

    after = night("2026-01-03", 10)  # ingests every day again, adopts the files, trains the newest day
    assert after["status"] == "ok"
    assert query(config.db_path, "SELECT path FROM checkpoints WHERE id = ?", [after["parent_checkpoint_id"]]) == [
        (promoted,)
    ]
    assert f"not adopting {kept}: the promotion gate rejected it" in caplog.text


def test_migration_0601_numbers_the_runs_already_there_by_kind(tmp_path):
    """Updates 1, 3, 5 in runs.id (probe passes between them) become updates 1, 2, 3; new runs go on counting."""
    old = sqlite_utils.Database(connect(tmp_path / "old.db"))
    migrations.apply(old, stop_before="0601_runs_number")
    with old.conn:
        for kind in ("update", "probe", "update", "probe", "update"):
            old.execute("INSERT INTO runs (kind, started_at, status) VALUES (?, ?, 'ok')", [kind, runs.now()])
    migrations.apply(old)
    assert [tuple(r) for r in old.execute("SELECT id, kind, number FROM runs ORDER BY id")] == [
        (1, "update", 1),
        (2, "probe", 1),
        (3, "update", 2),
        (4, "probe", 2),
        (5, "update", 3),
    ]
    assert runs.get_run(old, runs.start_run(old, "update"))["number"] == 4
    old.close()
