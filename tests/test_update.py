"""The nightly update and its probes on a real database, real checkpoint files and a real subprocess."""

import hashlib
import logging
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engram_ff.daemon import checkpoints, probes, update
from engram_ff.daemon.cli import main
from engram_ff.daemon.config import load_config
from engram_ff.daemon.facts import BUNDLED_FACTS
from engram_ff.daemon.output import size
from engram_ff.ingest.reader import catch_up
from engram_ff.model.checkpoint import load_checkpoint
from engram_ff.state import queries
from engram_ff.state.db import open_db
from tests.daemon_helpers import FAST, environment, query, wait_for, write_day


@pytest.fixture
def setup(tmp_path):
    config = load_config(
        environ={**FAST, "ENGRAM_FF_FACTS_FILE": str(BUNDLED_FACTS)},  # facts, as the demo probes them
        data_dir=str(tmp_path / "data"),
        watch_dir=str(tmp_path / "engram"),
    )
    write_day(config.watch, "2026-01-01", 60)
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    yield config, db
    db.close()


def runs(db):
    return list(db.query("SELECT * FROM runs WHERE kind = 'update' ORDER BY id"))


def test_update_trains_records_and_chains_checkpoints(setup):
    config, db = setup
    first = update.run_update(config)
    assert first["status"] == "ok" and first["new_bytes"] > 0 and first["replay_bytes"] == 0
    assert first["steps"] >= 20 and first["peak_rss_mb"] > 0
    assert len(eval(first["layer_losses"])) == 2  # the tiny preset's two layers, each its own loss
    path = Path(db.execute("SELECT path FROM checkpoints WHERE id = ?", [first["checkpoint_id"]]).fetchone()[0])
    assert Path(str(path) + ".sha256").read_text().split()[0] == hashlib.sha256(path.read_bytes()).hexdigest()

    # nothing new, but the first night's held-out messages (the probe split) are trained the night after it
    deferred = update.run_update(config)
    assert deferred["status"] == "ok" and deferred["new_bytes"] > 0
    assert (deferred["first_message_id"], deferred["last_message_id"]) == (first["last_message_id"],) * 2
    assert (deferred["deferred_first_id"], deferred["deferred_last_id"]) == (0, first["last_message_id"])
    assert update.run_update(config)["status"] == "skipped"  # nothing new, nothing held out

    write_day(config.watch, "2026-01-02", 30)
    catch_up(db, config.watch)
    second = update.run_update(config)
    assert second["status"] == "ok" and second["replay_bytes"] > 0
    assert second["parent_checkpoint_id"] == deferred["checkpoint_id"]
    assert second["first_message_id"] == first["last_message_id"]
    assert second["prequential_bpb"] > 0  # the model of the night before, on the new day before training

    metrics = {row[0] for row in db.execute("SELECT DISTINCT metric FROM probe_scores")}
    assert {
        "probe_bpb",
        "trained_bpb",
        "forgetting_probe_bpb",
        "avg_forgetting_probe_bpb",
        "bwt_probe_bpb",
        "answer_bpb",
        "answer_rank",
    } <= metrics
    days = {
        row[0] for row in db.execute("SELECT DISTINCT day FROM probe_history WHERE metric = 'forgetting_trained_bpb'")
    }
    assert days == {"2026-01-01"}  # forgetting is about the days before the newest


def test_stop_saves_a_partial_checkpoint_and_the_next_update_resumes(setup):
    config, db = setup
    calls = {"n": 0}

    def stop_after_a_few_steps():
        calls["n"] += 1
        return calls["n"] > 8

    interrupted = update.run_update(config, should_stop=stop_after_a_few_steps)
    assert interrupted["status"] == "interrupted"
    partial = db.execute("SELECT kind, steps FROM checkpoints WHERE id = ?", [interrupted["checkpoint_id"]]).fetchone()
    assert partial[0] == "partial" and partial[1] > 0

    resumed = update.run_update(config)
    assert resumed["status"] == "ok"
    assert resumed["resumed_from"] == interrupted["id"]
    assert resumed["first_message_id"] == interrupted["first_message_id"]
    assert resumed["steps"] > partial[1]  # counts the steps before the interruption too


def test_corrupt_current_checkpoint_falls_back_to_the_previous(setup, caplog):
    config, db = setup
    first = update.run_update(config)
    write_day(config.watch, "2026-01-02", 30)
    catch_up(db, config.watch)
    second = update.run_update(config)
    newest = Path(db.execute("SELECT path FROM checkpoints WHERE id = ?", [second["checkpoint_id"]]).fetchone()[0])
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))

    with caplog.at_level(logging.ERROR):
        current = checkpoints.load_current(db, config)
    assert current.checkpoint_id == first["checkpoint_id"]
    assert str(newest) in caplog.text
    assert (
        db.execute("SELECT status FROM checkpoints WHERE id = ?", [second["checkpoint_id"]]).fetchone()[0] == "corrupt"
    )


def test_failed_update_leaves_the_previous_checkpoint_current(setup, monkeypatch):
    config, db = setup
    first = update.run_update(config)
    write_day(config.watch, "2026-01-02", 30)
    catch_up(db, config.watch)

    def broken_train(*args, **kwargs):
        raise MemoryError("simulated")

    monkeypatch.setattr(update, "train", broken_train)
    failed = update.run_update(config)
    assert failed["status"] == "failed" and "MemoryError" in failed["error"]
    assert checkpoints.load_current(db, config).checkpoint_id == first["checkpoint_id"]


def test_sigterm_during_training_checkpoints_and_exits(tmp_path):
    data, watch = tmp_path / "data", tmp_path / "engram"
    write_day(watch, "2026-01-01", 200)
    env = environment(
        ENGRAM_FF_DATA_DIR=str(data),
        ENGRAM_FF_WATCH_DIR=str(watch),
        ENGRAM_FF_UPDATE_MIN_STEPS="100000",
        ENGRAM_FF_UPDATE_MAX_STEPS="100000",
        ENGRAM_FF_UPDATE_BUDGET_MINUTES="10",
        ENGRAM_FF_CHECKPOINT_EVERY_SECONDS="1000",
    )
    assert (
        subprocess.run(
            [sys.executable, "-m", "engram_ff.daemon.cli", "ingest", "--watch", str(watch), "--data", str(data)],
            env=env,
            capture_output=True,
        ).returncode
        == 0
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "engram_ff.daemon.child"], env=env, stderr=subprocess.PIPE, text=True
    )
    wait_for(lambda: query(data / "engram-ff.db", "SELECT 1 FROM runs WHERE status = 'running'"), what="training")
    child.send_signal(signal.SIGTERM)
    assert child.wait(timeout=60) == 3, child.stderr.read()
    ((status, checkpoint_id),) = query(data / "engram-ff.db", "SELECT status, checkpoint_id FROM runs")
    assert status == "interrupted"
    ((path,),) = query(data / "engram-ff.db", "SELECT path FROM checkpoints WHERE id = ?", [checkpoint_id])
    assert load_checkpoint(path)["meta"]["run_id"] == 1


def test_history_command_prints_and_plots(setup, capsys, tmp_path):
    config, db = setup
    update.run_update(config)
    write_day(config.watch, "2026-01-02", 30)
    catch_up(db, config.watch)
    update.run_update(config)
    plot = tmp_path / "history.png"
    assert main(["history", "--data", str(config.data_dir), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert "held_out_bpb" in out and "facts_first" in out and "prequential_bpb" in out
    assert plot.stat().st_size > 10_000


def test_a_bad_fact_costs_only_its_own_scores(setup, tmp_path, monkeypatch, caplog):
    """A facts file edited into a bad one after the daemon checked it, and a fact whose scoring fails:
    the pass still records everything else."""
    config, db = setup
    update.run_update(config)
    bad = tmp_path / "facts.toml"
    bad.write_text('fact = "x"\n')
    config.facts_file = bad
    rows = update.run_probes(config)
    assert {row["kind"] for row in rows} == {"probe", "trained", "summary", "canary"}
    assert f"fact probes skipped this pass: fact probes file {bad}: 'fact' must be" in caplog.text

    config.facts_file = BUNDLED_FACTS  # the demo's three
    real = probes.rank_among

    def fails_for_victor(model, prompt, answer, distractors):
        if prompt.startswith(b"user: Who is Victor?"):
            raise RuntimeError("simulated")
        return real(model, prompt, answer, distractors)

    monkeypatch.setattr(probes, "rank_among", fails_for_victor)
    rows = update.run_probes(config)
    facts = {row["probe"] for row in rows if row["kind"] == "fact"}
    assert facts == {"victor-boat", "wifi-password"}
    assert "fact probe 'who-is-victor' not scored: RuntimeError: simulated" in caplog.text
    assert {"probe", "trained"} <= {row["kind"] for row in rows}


def test_only_bytes_that_differ_from_the_recorded_digest_make_a_checkpoint_corrupt(setup, caplog):
    """A lost `.sha256`, or a file that cannot be read for a while, says nothing about the checkpoint's
    bytes: the database's own digest decides. A file found corrupt and later restored is good again."""
    config, db = setup
    first = update.run_update(config)
    write_day(config.watch, "2026-01-02", 30)
    catch_up(db, config.watch)
    second = update.run_update(config)
    newest = Path(db.execute("SELECT path FROM checkpoints WHERE id = ?", [second["checkpoint_id"]]).fetchone()[0])
    digest = Path(f"{newest}.sha256")

    def status():
        return db.execute("SELECT status FROM checkpoints WHERE id = ?", [second["checkpoint_id"]]).fetchone()[0]

    original_digest = digest.read_text()
    digest.unlink()
    assert checkpoints.load_current(db, config).checkpoint_id == second["checkpoint_id"]
    assert digest.read_text() == original_digest and status() == "good"  # rewritten from the database's digest

    newest.rename(newest.with_suffix(".away"))  # unreadable for a while: a moved disk, a permission
    assert checkpoints.load_current(db, config).checkpoint_id == first["checkpoint_id"]
    assert status() == "good" and f"checkpoint {newest} cannot be read now" in caplog.text
    newest.with_suffix(".away").rename(newest)
    assert checkpoints.load_current(db, config).checkpoint_id == second["checkpoint_id"]

    original = newest.read_bytes()
    newest.write_bytes(original[: len(original) // 2])
    assert checkpoints.load_current(db, config).checkpoint_id == first["checkpoint_id"]
    assert status() == "corrupt"
    newest.write_bytes(original)  # restored from a backup
    assert checkpoints.load_current(db, config).checkpoint_id == second["checkpoint_id"]
    assert status() == "good" and f"checkpoint {newest} matches its recorded sha256 again" in caplog.text


def test_a_backlog_is_trained_in_nights_of_update_max_new_mib_and_status_says_what_waits(setup, capsys):
    config, db = setup  # one day of 60 messages: about 3 KiB of train text
    config.update_max_new_mib = 1536 / (1 << 20)  # 1.5 KiB a night
    nights = [update.run_update(config)]
    assert main(["status", "--data", str(config.data_dir), "--watch", str(config.watch)]) == 0
    out = capsys.readouterr().out
    waiting = size(nights[0]["waiting_bytes"])  # the status run's update_max_new_mib is the default, 16
    assert f"{waiting} of newer text left by update 1 (run 1): about 1 more night at update_max_new_mib" in out
    while nights[-1]["status"] == "ok":
        nights.append(update.run_update(config))
    assert nights.pop()["status"] == "skipped" and len(nights) >= 3
    last_train, last_probe = (queries.max_message_id(db, split) for split in ("train", "probe"))
    assert nights[0]["first_message_id"] == nights[0]["deferred_last_id"] == 0
    newest = max(last_train, last_probe)  # the newest message may be in either split
    assert nights[-1]["last_message_id"] == newest
    assert nights[-1]["deferred_last_id"] >= last_probe
    for before, after in zip(nights, nights[1:]):  # nothing skipped, nothing twice, in either split
        assert after["first_message_id"] == before["last_message_id"]
        assert after["deferred_first_id"] == before["deferred_last_id"] <= after["first_message_id"]
        assert after["parent_checkpoint_id"] == before["checkpoint_id"]
    for night in nights:  # the recorded bounds are exactly what it trained on, whole messages up to the cap
        assert night["new_bytes"] == len(queries.night_text(db, night))
        messages = queries.bytes_between(db, night["first_message_id"], night["last_message_id"])
        messages += queries.bytes_between(db, night["deferred_first_id"], night["deferred_last_id"], split="probe")
        assert messages < 1536 + 100
        done = night["last_message_id"] == newest and night["deferred_last_id"] == night["first_message_id"]
        assert (night["waiting_bytes"] > 0) == (not done)
    assert nights[0]["waiting_bytes"] > 0 and nights[-1]["waiting_bytes"] == 0
