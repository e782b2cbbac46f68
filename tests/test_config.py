"""Configuration: defaults < TOML file < ENGRAM_FF_* environment < flags, and bad values named."""

import pytest

from engram_ff.daemon.cli import main
from engram_ff.daemon.config import ConfigError, load_config


def test_sources_in_order_of_strength(tmp_path):
    toml = tmp_path / "engram-ff.toml"
    toml.write_text('schedule = "02:30"\nreplay_ratio = 0.5\nwatch_dir = "/from/file"\n')
    config = load_config(toml, environ={"ENGRAM_FF_REPLAY_RATIO": "2"}, watch_dir="/from/flag")
    assert config.schedule == "02:30"  # file over default
    assert config.replay_ratio == 2.0  # environment over file
    assert str(config.watch) == "/from/flag"  # flag over file


def test_defaults_live_under_the_data_dir(tmp_path):
    config = load_config(environ={"XDG_DATA_HOME": str(tmp_path)}, data_dir=str(tmp_path / "d"))
    assert config.db_path == tmp_path / "d" / "engram-ff.db"
    assert config.watch == tmp_path / "d" / "engram"


@pytest.mark.parametrize(
    "text, key",
    [
        ('schedul = "03:00"', "schedul"),
        ('schedule = "25:61"', "schedule"),
        ('replay_ratio = "lots"', "replay_ratio"),
        ("update_max_steps = 2.5", "update_max_steps"),
        ("batch_size = inf", "batch_size"),  # int(inf) raises OverflowError: once a traceback
        ("batch_size = -inf", "batch_size"),
        ("batch_size = [16]", "batch_size"),
        ("polling = 3", "polling"),
        ("probe_fraction = 1.5", "probe_fraction"),
        ('model_preset = "huge"', "model_preset"),
        ("schedule = ", "not valid TOML"),
        ("x = " + "[" * 5000 + "]" * 5000, "nested too deeply"),  # tomllib recurses per level
    ],
)
def test_bad_file_values_name_the_key(tmp_path, text, key):
    toml = tmp_path / "bad.toml"
    toml.write_text(text + "\n")
    with pytest.raises(ConfigError, match=key):
        load_config(toml, environ={})


def test_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="ENGRAM_FF_DEBOUNCE_SECONDS"):
        load_config(environ={"ENGRAM_FF_DEBOUNCE_SECONDS": "soon"})


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(tmp_path / "nope.toml", environ={})


def test_config_command_prints_effective_values(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENGRAM_FF_SCHEDULE", "04:15")
    assert main(["config", "--data", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'schedule = "04:15"' in out
    assert f'data_dir = "{tmp_path}"' in out


def test_config_command_refuses_bad_configuration(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ENGRAM_FF_KEEP_CHECKPOINTS", "0")
    assert main(["config", "--data", str(tmp_path)]) == 2
    assert "keep_checkpoints" in capsys.readouterr().err
