"""Rehearsal: the night's most surprising sessions get rows of every batch (daemon/recipe.py rehearsal)."""

import logging

import pytest
import torch

from engram_ff.daemon import recipe, update
from engram_ff.daemon.config import ConfigError, load_config
from engram_ff.model.config import PRESETS
from engram_ff.model.lm import FFLM
from engram_ff.model.train import FFTrainer, byte_batches, train
from tests.daemon_helpers import FAST, write_day
from tests.test_incremental import make  # noqa: F401  (the fixture)

ORDINARY = b"user: hello there\nassistant: hello to you\n"
FACT = b"user: what is the code?\nassistant: the code is 7391-QZX.\n"


def trained_on(text: bytes, steps: int = 120) -> FFLM:
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"])
    train(FFTrainer(model), byte_batches(text, 8, 64, torch.Generator().manual_seed(0)), 1e9, steps)
    return model


def test_the_session_the_model_cannot_predict_is_rehearsed_once_however_often_it_was_said():
    model = trained_on(b"\n".join([ORDINARY] * 40))
    night = b"\n".join([ORDINARY] * 10 + [FACT] * 3 + [ORDINARY] * 10)
    assert recipe.rehearsal(model, night, 0.5) == FACT.rstrip(b"\n")  # 2 distinct sessions: the fact's is the top
    assert recipe.rehearsal(model, night, 1.0).split(b"\n\n")[0] == FACT.rstrip(b"\n")
    assert recipe.rehearsal(model, b"", 0.5) == b""


def test_rehearsed_rows_come_last_and_only_the_top_layer_learns_from_them(make):  # noqa: F811
    config, _ = make(rehearse_rows=2, rehearse_layers="top")
    rehearse = b"R" * 100
    batches, replay_rows = recipe.update_batches(b"n" * 500, b"o" * 500, config, torch.Generator(), 1, rehearse)
    x, _ = next(batches)
    assert replay_rows == 0 and x.shape == (config.batch_size, config.seq_len)
    assert (x[-2:] == ord("R")).all() and not (x[:-2] == ord("R")).any()
    trainer = FFTrainer(FFLM(PRESETS["tiny"]))
    rows = recipe.rehearsal_rows(config, rehearse)
    recipe.plan_layers(trainer, config, matured=True, replay_rows=replay_rows, rehearse_rows=rows)
    assert trainer.loss_rows == [config.batch_size - 2, None]
    assert recipe.rehearsal_rows(config, b"") == 0  # nothing to rehearse: every row is the night's text

    split, _ = make(rehearse_rows=2, rehearse_layers="top", replay_layers="upper", replay_ratio=1.0)
    batches, replay_rows = recipe.update_batches(b"n" * 500, b"o" * 1500, split, torch.Generator(), 1, rehearse)
    x, _ = next(batches)
    assert (x[: split.batch_size - 2 - replay_rows] == ord("n")).all() and (x[-2:] == ord("R")).all()
    trainer = FFTrainer(FFLM(PRESETS["tiny"]))
    recipe.plan_layers(trainer, split, matured=True, replay_rows=replay_rows, rehearse_rows=2)
    assert trainer.loss_rows == [split.batch_size - 2 - replay_rows, None]  # the lower layers: new rows only


def test_a_night_with_rehearsal_trains_and_says_what_it_rehearsed(make, caplog):  # noqa: F811
    config, db = make(rehearse_rows=2)
    assert update.run_update(config)["status"] == "ok"  # a first model: nothing is rehearsed
    write_day(config.watch, "2026-01-02", 30)
    from engram_ff.ingest.reader import catch_up

    catch_up(db, config.watch)
    with caplog.at_level(logging.INFO, logger="engram_ff.daemon.update"):
        second = update.run_update(config)
    assert second["status"] in ("ok", "rejected") and second["steps"] > 0
    assert "the night's most surprising sessions" in caplog.text


@pytest.mark.parametrize(
    "fields",
    [
        {"rehearse_rows": 16},
        {"rehearse_fraction": 0},
        {"rehearse_layers": "lower"},
        {"rehearse_rows": 2, "replay_layers": "lower"},
        {"trainer": "bp", "rehearse_rows": 2, "rehearse_layers": "top"},
    ],
)
def test_bad_rehearsal_settings_name_the_key(tmp_path, fields):
    with pytest.raises(ConfigError, match="rehearse"):
        load_config(environ=FAST, data_dir=str(tmp_path), **fields)
