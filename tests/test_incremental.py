"""The incremental study's knobs (trainer, freeze_layers, replay_layers) on the daemon's real update path,
and the study itself in its quick mode."""

import copy
import json
import math
import re

import pytest
import torch

from engram_ff.bench import incremental
from engram_ff.daemon import recipe, update
from engram_ff.daemon.config import ConfigError, load_config
from engram_ff.ingest.reader import catch_up
from engram_ff.model.checkpoint import load_checkpoint
from engram_ff.model.lm import FFLM, PRESETS
from engram_ff.model.train import TRAINERS, BPTrainer, FFTrainer
from engram_ff.state.db import open_db
from tests.daemon_helpers import FAST, write_day


@pytest.fixture
def make(tmp_path):
    """make(**fields) -> (config, db) on one data folder that already holds a day of messages."""
    opened = []

    def make(**fields):
        config = load_config(
            environ=FAST,
            data_dir=str(tmp_path / "data"),
            watch_dir=str(tmp_path / "engram"),
            update_min_steps=6,
            update_max_steps=6,
            **fields,
        )
        if not opened:
            write_day(config.watch, "2026-01-01", 60)
        db = open_db(config.db_path)
        catch_up(db, config.watch)
        opened.append(db)
        return config, db

    yield make
    for db in opened:
        db.close()


def next_day(config, db, day="2026-01-02"):
    write_day(config.watch, day, 40)
    catch_up(db, config.watch)


def checkpoint(db, row):
    path = db.execute("SELECT path FROM checkpoints WHERE id = ?", [row["checkpoint_id"]]).fetchone()[0]
    return load_checkpoint(path)


@pytest.mark.parametrize(
    "fields, key",
    [
        (dict(trainer="sgd"), "trainer"),
        (dict(replay_layers="middle"), "replay_layers"),
        (dict(freeze_layers=-1), "freeze_layers"),
        (dict(trainer="bp", freeze_layers=1), "freeze_layers"),
        (dict(lower_lr=1.5), "lower_lr"),
        (dict(lr_scale=0), "lr_scale"),
    ],
)
def test_bad_knobs_are_refused_by_name(tmp_path, fields, key):
    with pytest.raises(ConfigError, match=key):
        load_config(environ={}, data_dir=str(tmp_path), **fields)


def test_bp_slows_its_lower_layers_by_exactly_lower_lr():
    """Adam's step is linear in its rate, so keeping a fraction of a layer's step is that layer at that rate."""
    torch.manual_seed(0)
    x = torch.randint(0, 256, (2, 17))
    model = FFLM(PRESETS["tiny"])
    full, slowed = BPTrainer(copy.deepcopy(model)), BPTrainer(copy.deepcopy(model))
    slowed.layer_lr = [0.25, 1.0]
    for trainer in (full, slowed):
        trainer.train_step(x[:, :-1], x[:, 1:])
    start = model.layer_parameters()
    for layer, rate in ((0, 0.25), (1, 1.0)):
        for p0, pf, ps in zip(start[layer], full.layers[layer], slowed.layers[layer]):
            torch.testing.assert_close(ps - p0, rate * (pf - p0), atol=1e-6, rtol=1e-4)


def test_bp_checkpoint_says_so_and_ff_refuses_it_without_losing_it(make):
    config, db = make(trainer="bp")
    first = update.run_update(config)
    assert first["status"] == "ok" and checkpoint(db, first)["trainer_kind"] == "bp"

    config, db = make(trainer="ff")
    next_day(config, db)
    refused = update.run_update(config)
    assert refused["status"] == "failed" and "holds 'bp' trainer state" in refused["error"]
    assert "trainer" in refused["error"]
    config, db = make(trainer="bp")  # the BP checkpoint is still current and goes on
    again = update.run_update(config)
    assert again["status"] == "ok" and again["parent_checkpoint_id"] == first["checkpoint_id"]


def test_frozen_layer_has_no_gradient_no_optimiser_state_and_does_not_change():
    torch.manual_seed(0)
    trainer = FFTrainer(FFLM(PRESETS["tiny"]))
    x = torch.randint(0, 256, (2, 17))
    trainer.train_step(x[:, :-1], x[:, 1:])
    trainer.freeze(1)
    lower = [p.detach().clone() for p in trainer.model.layer_parameters()[0]]
    upper = [p.detach().clone() for p in trainer.model.layer_parameters()[1]]
    trainer.train_step(x[:, :-1], x[:, 1:])
    assert all(p.grad is None for p in trainer.model.layer_parameters()[0])
    assert trainer.optimizers[0].state_dict()["state"] == {}
    assert all(torch.equal(a, b) for a, b in zip(lower, trainer.model.layer_parameters()[0]))
    assert not all(torch.equal(a, b) for a, b in zip(upper, trainer.model.layer_parameters()[1]))


def test_freeze_layers_keeps_the_lowest_layer_after_the_first_update(make):
    config, db = make(freeze_layers=1)
    first = update.run_update(config)
    next_day(config, db)
    second = update.run_update(config)
    assert first["status"] == second["status"] == "ok"
    before, after = checkpoint(db, first)["model"], checkpoint(db, second)["model"]
    lowest = [k for k in before if k.startswith(("embed.", "layers.0.", "heads.0."))]
    top = [k for k in before if k.startswith(("layers.1.", "heads.1."))]
    assert all(torch.equal(before[k], after[k]) for k in lowest)  # day 1 trained it; day 2 left it alone
    assert not all(torch.equal(before[k], after[k]) for k in top)

    config, db = make(freeze_layers=2)  # the tiny preset has 2 layers
    next_day(config, db, "2026-01-03")
    refused = update.run_update(config)
    assert refused["status"] == "failed" and "freeze_layers" in refused["error"]


def test_lower_lr_slows_every_layer_below_the_top_once_matured(make):
    config, _ = make(lower_lr=0.25)
    trainer = FFTrainer(FFLM(PRESETS["tiny"]), lr=1e-3)
    recipe.plan_layers(trainer, config, matured=False, replay_rows=0)
    assert trainer.layer_lr == [1.0, 1.0]  # the first night learns at full speed
    recipe.plan_layers(trainer, config, matured=True, replay_rows=0)
    trainer.set_lr_scale(1.0)
    assert [opt.param_groups[0]["lr"] for opt in trainer.optimizers] == [0.25e-3, 1e-3]


@pytest.mark.parametrize("trainer", ["ff", "bp"])
def test_lr_scale_scales_the_trainers_own_rate(make, monkeypatch, trainer):
    config, _ = make(trainer=trainer, lr_scale=0.5)
    rates = []

    def train(state, *args, **kwargs):
        rates.append(state.lr)
        return real_train(state, *args, **kwargs)

    real_train = update.train
    monkeypatch.setattr(update, "train", train)
    assert update.run_update(config)["status"] == "ok"
    assert rates == [pytest.approx(TRAINERS[trainer](FFLM(PRESETS["tiny"])).lr * 0.5)]


def test_the_four_answers_quote_a_results_files_target_table_or_its_bullets():
    table = (
        "# x\n\n- `ff`: a model\n\n## Targets\n\n"
        "| target | measured | met |\n|---|---|---|\n| a <= 1 | 0.9 | yes |\n\n## Next\n"
    )
    assert incremental.verdicts(table) == ["- a <= 1: 0.9 (met: yes)"]
    assert incremental.verdicts("# y\n\n- FF error 9.66%: met\n") == ["- FF error 9.66%: met"]


def test_loss_rows_limit_a_layers_loss_to_the_first_rows():
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"])
    x = torch.randint(0, 256, (4, 17))
    split = FFTrainer(copy.deepcopy(model))
    split.loss_rows = [None, 2]  # the top layer's loss reads rows 0-1 only
    alone = FFTrainer(copy.deepcopy(model))
    top_split = split.train_step(x[:, :-1], x[:, 1:])[1]
    top_alone = alone.train_step(x[:2, :-1], x[:2, 1:])[1]
    assert top_split == pytest.approx(top_alone, rel=1e-5)


def test_replay_rows_come_last_and_only_chosen_layers_see_them(make):
    config, db = make(replay_layers="lower", replay_ratio=1.0)
    new, replay = b"n" * 500, b"r" * 1500
    batches, replay_rows = recipe.update_batches(new, replay, config, torch.Generator().manual_seed(0))
    x, y = next(batches)
    assert replay_rows == 3 and x.shape == (config.batch_size, config.seq_len)  # 3 of 4 rows: 3/4 of the bytes
    assert (x[:1] == ord("n")).all() and (x[1:] == ord("r")).all()

    trainer = FFTrainer(FFLM(PRESETS["tiny"]))
    recipe.plan_layers(trainer, config, matured=True, replay_rows=replay_rows)
    assert trainer.loss_rows == [None, 1]  # the top layer learns from the new rows alone
    upper = load_config(environ=FAST, data_dir=str(config.data_dir), replay_layers="upper")
    trainer = FFTrainer(FFLM(PRESETS["tiny"]))
    recipe.plan_layers(trainer, upper, matured=True, replay_rows=replay_rows)
    assert trainer.loss_rows == [1, None]

    first = update.run_update(config)
    next_day(config, db)
    second = update.run_update(config)
    assert first["status"] == second["status"] == "ok" and second["replay_bytes"] > 0


def expected_configuration(method: str) -> dict:
    """What a method's name promises, read from the name alone: `TRAINER[-replayR][-lower|-upper]
    [-slowS][-freezeK][-lrX]`; whatever it does not name is plain fine-tuning."""
    trainer, *parts = method.split("-")
    want = dict(trainer=trainer, replay_ratio=0.0, replay_layers="all", lower_lr=1.0, freeze_layers=0, lr_scale=1.0)
    for part in parts:
        if part in ("lower", "upper"):
            want["replay_layers"] = part
            continue
        name, value = re.fullmatch(r"([a-z]+)([\d.]+)", part).groups()
        key = {"replay": "replay_ratio", "slow": "lower_lr", "freeze": "freeze_layers", "lr": "lr_scale"}[name]
        want[key] = float(value) if key != "freeze_layers" else int(value)
    return want


@pytest.mark.parametrize("method", sorted(incremental.METHODS))
def test_every_study_method_is_the_configuration_its_name_says(tmp_path, method):
    """Until issue 12 PLAIN left replay_ratio at the daemon's 2.0, so every "no replay" method replayed."""
    args = incremental.build_parser().parse_args(["--steps-per-day", "7"])
    config = incremental.method_config(tmp_path, incremental.METHODS[method], args)
    want = expected_configuration(method)
    assert {key: getattr(config, key) for key in want} == want
    if want["replay_ratio"] == 0:  # no replay at all: not even the floor a small day gets
        assert recipe.replay_size(config, new_bytes=100, history_bytes=10**6) == 0
    assert config.update_min_steps == config.update_max_steps == 7  # every method trains the same steps
    assert recipe.step_budget(config, 10_000, matured=True) == 7
    gate = (config.gate_tolerance_bpb, config.gate_facts_tolerance_bpb, config.gate_canary_tolerance_bpb)
    assert gate == (math.inf,) * 3  # every night is kept


def test_quick_study_writes_matrices_tables_and_plots(tmp_path):
    assert incremental.main(["--quick", "--days", "2", "--methods", "ff,ff-freeze1", "--results", str(tmp_path)]) == 0
    report = (tmp_path / "incremental-quick.md").read_text()
    assert "| ff-freeze1 |" in report and "## The plan's four questions" in report
    assert report.count("| after \\ day | 1 | 2 |") == 2  # an R matrix per method, every day probed
    assert (tmp_path / "incremental-quick_R.png").stat().st_size > 0
    assert (tmp_path / "incremental-quick_forgetting.png").stat().st_size > 0
    assert (tmp_path / "incremental-quick_frontier.png").stat().st_size > 0
    assert "## The promotion gate's checks, night by night" in report and "| ff-freeze1 | held_out |" in report


def test_studies_run_apart_merge_into_one_report_only_when_their_settings_agree(tmp_path):
    for part, methods in (("a", "ff"), ("b", "bp")):
        assert (
            incremental.main(
                ["--quick", "--days", "2", "--methods", methods, "--results", str(tmp_path), "--stem", part]
            )
            == 0
        )
    parts = [str(tmp_path / "a.json"), str(tmp_path / "b.json")]
    assert incremental.main(["--merge", *parts, "--results", str(tmp_path), "--stem", "both"]) == 0
    report = (tmp_path / "both.md").read_text()
    assert [r["method"] for r in json.loads((tmp_path / "both.json").read_text())["runs"]] == ["ff", "bp"]
    assert "| ff |" in report and "| bp |" in report and "Each FF method without replay against each BP one" in report
    assert report.count("--methods") == 2  # each part's command, so either can be rerun

    incremental.main(["--quick", "--days", "3", "--methods", "ff", "--results", str(tmp_path), "--stem", "c"])
    with pytest.raises(SystemExit, match="days"):
        incremental.main(["--merge", parts[0], str(tmp_path / "c.json"), "--results", str(tmp_path)])
