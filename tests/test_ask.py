"""`engram-ff ask` on a real database and a real checkpoint of a tiny model that has learned one exchange.

The senders are the data's own ("me" and "bot", as a recorder names them), so the question must be asked
in those names, and the answer must stop where the model starts the next message."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import orjson
import pytest
import torch

from engram_ff.daemon import checkpoints
from engram_ff.daemon.cli import main
from engram_ff.daemon.config import load_config
from engram_ff.ingest.reader import catch_up
from engram_ff.model.train import byte_batches, train
from engram_ff.state import runs
from engram_ff.state.db import open_db
from tests.daemon_helpers import FAST, environment

EXCHANGE = b"\nme: Who is Victor?\nbot: Victor is your brother.\nme: Thanks.\n"


def recorder(sender: str, direction: str, text: str, n: int) -> bytes:
    return orjson.dumps(
        {
            "timestamp": f"2026-11-20T10:00:{n:02d}Z",
            "session_key": "s",
            "direction": direction,
            "channel": "t",
            "sender": sender,
            "content": text,
        }
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data directory whose current model has learned EXCHANGE (100 steps: about 5 s on one core)."""
    root = tmp_path_factory.mktemp("ask")
    config = load_config(environ=FAST, data_dir=str(root / "data"), watch_dir=str(root / "engram"))
    (config.watch / "raw").mkdir(parents=True)
    lines = [("me", "in", "Who is Victor?"), ("bot", "out", "Victor is your brother."), ("me", "in", "Thanks.")]
    (config.watch / "raw" / "2026-11-20.jsonl").write_bytes(
        b"\n".join(recorder(s, d, t, n) for n, (s, d, t) in enumerate(lines)) + b"\n"
    )
    db = open_db(config.db_path)
    catch_up(db, config.watch)
    torch.manual_seed(0)
    loaded = checkpoints.fresh(config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 shared cores one thread trains faster (bench/incremental.py's --threads)
    try:
        train(loaded.trainer, byte_batches(EXCHANGE * 40, 8, 64, torch.Generator().manual_seed(0)), 120.0, 100)
    finally:
        torch.set_num_threads(threads)
    run_id = runs.start_run(db, "update")
    checkpoint_id = checkpoints.save(db, config, loaded, run_id=run_id, kind="final", parent_id=None, meta={})
    runs.finish_run(db, run_id, "ok", checkpoint_id=checkpoint_id)
    db.close()
    return config.data_dir


def test_ask_prints_only_the_answer_up_to_the_end_of_the_turn(data_dir, capsys):
    assert main(["ask", "Who is Victor?", "--data", str(data_dir)]) == 0
    assert capsys.readouterr().out == "Victor is your brother.\n"


def test_show_prompt_shows_the_question_in_the_datas_own_names(data_dir, capsys):
    assert main(["ask", "Who is Victor?", "--data", str(data_dir), "--show-prompt"]) == 0
    assert capsys.readouterr().out == "me: Who is Victor?\nbot: Victor is your brother.\n"


def test_sampling_is_seeded(data_dir, capsys):
    args = ["ask", "Who is Victor?", "--data", str(data_dir), "--sample", "--seed", "3", "--bytes", "40"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    assert capsys.readouterr().out == first and len(first.encode()) <= 41


def test_generate_defaults_to_the_current_model(data_dir, capsys):
    assert (
        main(
            [
                "generate",
                "--data",
                str(data_dir),
                "--prompt",
                "me: Who is Victor?\nbot:",
                "--temperature",
                "0",
                "--bytes",
                "24",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.startswith("me: Who is Victor?\nbot: Victor is your brother.")


def test_no_model_yet_is_one_line(tmp_path, capsys):
    open_db(tmp_path / "engram-ff.db").close()
    assert main(["ask", "Who is Victor?", "--data", str(tmp_path)]) == 1
    assert capsys.readouterr().err == (
        f"engram-ff: no trained model in {tmp_path} yet: run `engram-ff update --data {tmp_path}` first\n"
    )


def test_an_answer_longer_than_the_cap_is_refused_in_one_line(data_dir, capsys):
    """Issue #20.8: --bytes 100000000 ran for over 25 minutes."""
    assert main(["ask", "Who is Victor?", "--data", str(data_dir), "--bytes", "100000000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at most 10,000 bytes" in err


def test_a_fifo_in_place_of_a_checkpoints_digest_neither_hangs_ask_nor_probe(data_dir, capsys):
    """Issue #20.3: a FIFO at the `.sha256` hung ask, probe and generate until they were killed."""
    (digest,) = (data_dir / "checkpoints").glob("*.pt.sha256")
    kept = digest.read_bytes()
    digest.unlink()
    os.mkfifo(digest)
    try:
        env = environment(ENGRAM_FF_DATA_DIR=str(data_dir))
        asked = subprocess.run(
            [sys.executable, "-m", "engram_ff.daemon.cli", "ask", "Who is Victor?"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,  # it hung for good before
        )
        assert asked.returncode == 0 and asked.stdout == "Victor is your brother.\n", asked.stderr
        assert "Traceback" not in asked.stderr
        assert main(["probe", "--data", str(data_dir)]) == 0  # the update's loader: it writes the digest again
        assert stat.S_ISREG(digest.lstat().st_mode) and digest.read_bytes() == kept
        assert "rewrote" in capsys.readouterr().err or digest.read_bytes() == kept
    finally:
        if not stat.S_ISREG(digest.lstat().st_mode):
            digest.unlink()
            digest.write_bytes(kept)
