"""Effective configuration: built-in defaults < TOML file < ENGRAM_FF_* environment < command-line flags.

Bad configuration is refused at start with a message that names the key, so a typo in a unit file or
a TOML file never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engram_ff.ingest.reader import Limits

ENV_PREFIX = "ENGRAM_FF_"
FLAGS = {"data_dir": "--data", "watch_dir": "--watch"}  # the keys the command line sets, and its flags


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message names the key and where it came from."""


def user_data_dir() -> Path:
    """systemd's StateDirectory when run as a service, else the XDG data home."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "engram-ff"


@dataclass
class Config:
    data_dir: Path = field(default_factory=user_data_dir)
    watch_dir: Path | None = None  # None: <data_dir>/engram
    schedule: str = "03:00"  # local time of the nightly update, HH:MM
    # local time HH:MM when the night's window ends: an update inside the window (schedule to update_until)
    # may train until then, less WINDOW_RESERVE_S for the probes, instead of update_budget_minutes; a
    # paused one resumes only inside it. Empty: no window, update_budget_minutes alone
    update_until: str = ""
    misfire_grace_hours: float = 6.0
    update_budget_minutes: float = 12.0  # with the probes, a night's update of 1 MiB ends within 15 minutes
    # a night trains at least this many steps (a first night learns its days in one go), but once a model
    # exists, no more than update_max_passes passes over the night's text
    update_min_steps: int = 300
    update_max_steps: int = 3000
    update_epochs: float = 4.0  # passes over new + replayed text, within the budget
    # once a model exists, the most passes over a night's text (new + replay): a tiny day is not the whole world
    update_max_passes: float = 8.0
    # the most new text one night takes (oldest first; the rest waits for the next nights), so that an
    # update's memory does not grow with a backlog (bench/results/update-backlog.md)
    update_max_new_mib: float = 16.0
    # replayed bytes per new byte; with lower_lr 0.3, FF forgot 0.010 nats/byte over 8 nights, against
    # 0.403 without either (bench/results/incremental.md)
    replay_ratio: float = 2.0
    # when older text exists, at least this many bytes of it are replayed (all of it if there is less), so a
    # small day's batches are mostly history; above 32 KiB of new text, replay_ratio 2.0 replays more anyway
    replay_min_bytes: int = 65536
    trainer: str = "ff"  # "ff": Forward-Forward, layer-local losses; "bp": backprop fine-tuning of the same model
    # multiplier of the trainer's tuned learning rate (FF 8e-3, BP 4e-3): below 1 a night learns less and
    # overwrites less
    lr_scale: float = 1.0
    # FF: the lowest k layers stop learning once trained for one update (no backward, no optimiser)
    freeze_layers: int = 0
    lower_lr: float = 0.3  # learning-rate multiplier of every layer below the top once trained for one update
    # FF: layers whose loss sees the replayed rows: "all", "lower" (all but the top), "upper" (the top only)
    replay_layers: str = "all"
    # rows of each batch that rehearse the night's most surprising sessions (daemon/recipe.py rehearsal): the
    # top rehearse_fraction of its distinct sessions by bits per byte under the current model; 0: none
    rehearse_rows: int = 0
    rehearse_fraction: float = 0.15
    # FF: the layers whose loss reads the rehearsed rows: "all", or "top" (the lower layers keep to ordinary text)
    rehearse_layers: str = "all"
    # the context memory (model/memory.py) also reads the night's replayed older text, after the new text: a
    # fact's rows are then learned again against the SSM layers' logits of tonight, which keep moving (bench
    # learning, FF, nights 3-9: 11-16 of 16 facts answered against 3-11 without; learning-memory-replay.md)
    memory_reads_replay: bool = True
    # ... and rereads the text of the nights 1, 2, 4, ..., 2^(n - 1) promoted nights back, spaced repetition
    # that keeps a fact's rows from slipping as the layers below and newer text move (daemon/recipe.py
    # reread_text); 0: none
    memory_reread_nights: int = 5
    # between nights, the context memory learns each new message about a minute after it is stored, and `ask`
    # answers with it (daemon/today.py: an overlay of the checkpoint, today.pt, that the night makes
    # permanent); false: the model learns only at night
    learn_by_day: bool = True
    batch_size: int = 16
    seq_len: int = 256
    # ranks of a data-parallel update (each trains on batch_size / workers rows): a number, or "auto", one per
    # usable core while each keeps 4 rows (daemon/ranks.py); 1 is the single-process update
    workers: int | str = "auto"
    # the update stops with a partial checkpoint while the machine runs on battery, and the daemon resumes it
    # once mains power is back (daemon/idle.py)
    pause_on_battery: bool = True
    # ... and while other processes keep more than this many cores busy (their mean over 2 minutes); 0: never
    pause_above_cores: float = 1.0
    checkpoint_every_seconds: float = 60.0
    keep_checkpoints: int = 5
    # The promotion gate: a night's candidate replaces the current model only if, on the night's probes, it
    # is at most this much worse (bits per byte; inf turns a check off) on the held-out text of the days
    # both were probed on, on the facts' answers (their mean), and on the canary (the oldest held-out text).
    # The plays stream's normal nights, default recipe, measured at most +0.018, +0.95 and +0.011
    # (bench/results/incremental-gate.md; about +1.05 for the facts, night 3 to 4, in incremental.md)
    gate_tolerance_bpb: float = 0.1
    gate_facts_tolerance_bpb: float = 1.5
    gate_canary_tolerance_bpb: float = 0.2
    model_preset: str = "daemon"
    # the seed of the weights a fresh start draws: the same messages give the same model, run after run
    model_seed: int = 0
    probe_fraction: float = Limits.probe_fraction
    probe_max_bytes: int = 4096  # per day and split, so probing stays cheap as days pile up
    # days scored per probe pass: the newest half of them and evenly spaced older ones, the oldest always
    # among them, so a pass in month 12 costs what one in month 1 does
    probe_max_days: int = 32
    facts_file: Path | None = None  # None: no fact probes (the demo's data directory: the bundled example facts)
    max_line_bytes: int = Limits.max_line_bytes
    debounce_seconds: float = 0.2
    rescan_seconds: float = 60.0
    polling: bool = False
    # read what a symlink in the watched folder leads to outside it (a symlink that holds the folder,
    # `ln -s / W/raw/root`, is a loop and never followed)
    follow_outside_symlinks: bool = False
    log_level: str = "INFO"

    @property
    def watch(self) -> Path:
        return self.watch_dir if self.watch_dir is not None else self.data_dir / "engram"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "engram-ff.db"

    @property
    def checkpoint_dir(self) -> Path:
        return self.data_dir / "checkpoints"

    @property
    def today_path(self) -> Path:
        return self.data_dir / "today.pt"

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "engram-ff.lock"

    @property
    def schedule_hour_minute(self) -> tuple[int, int]:
        hour, minute = self.schedule.split(":")
        return int(hour), int(minute)

    @property
    def until_hour_minute(self) -> tuple[int, int]:
        hour, minute = self.update_until.split(":")
        return int(hour), int(minute)

    def as_toml(self, origins: dict[str, str] | None = None) -> str:
        """The configuration as TOML; with `origins` (load_config's), each line ends with where its value
        came from: a file, the environment, a flag, the database, or the default."""
        lines = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None:
                line = f"# {f.name} = (default)"
            elif isinstance(value, bool):
                line = f"{f.name} = {'true' if value else 'false'}"
            elif isinstance(value, (int, float)):
                line = f"{f.name} = {value}"
            else:
                line = f'{f.name} = "{value}"'
            if origins is not None:
                line = f"{line:<56}  # from {origins.get(f.name, 'the default')}"
            lines.append(line)
        lines.append(f'# watch folder in effect: "{self.watch}"')
        lines.append(f'# database: "{self.db_path}"')
        return "\n".join(lines) + "\n"


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _coerce(name: str, raw: object, source: str) -> object:
    """Turn a TOML value or an environment string into the field's type, or name the key in an error."""
    kind = _FIELDS[name].type
    where = f"{name} (from {source})"
    if "Path" in kind:
        if not isinstance(raw, str) or not raw:
            raise ConfigError(f"{where}: expected a path, got {raw!r}")
        return Path(raw).expanduser()
    if kind == "int | str":  # a number, or the one word the key allows ("auto"): _validate checks which
        if isinstance(raw, bool) or not isinstance(raw, (int, str)):
            raise ConfigError(f"{where}: expected an integer or a word, got {raw!r}")
        return raw if isinstance(raw, int) or not raw.strip().isdigit() else int(raw)
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in {"1", "true", "yes", "on", "0", "false", "no", "off"}:
            return raw.lower() in {"1", "true", "yes", "on"}
        raise ConfigError(f"{where}: expected true or false, got {raw!r}")
    if kind in ("int", "float"):
        if isinstance(raw, bool):
            raise ConfigError(f"{where}: expected a number, got {raw!r}")
        try:
            if not isinstance(raw, int | float | str):  # a TOML array, table or date: no number
                raise TypeError(raw)
            value = int(raw) if kind == "int" else float(raw)
        except (TypeError, ValueError, OverflowError):  # OverflowError: int(inf), TOML's `inf` for an integer
            raise ConfigError(
                f"{where}: expected {'an integer' if kind == 'int' else 'a number'}, got {raw!r}"
            ) from None
        if kind == "int" and isinstance(raw, float) and raw != int(raw):
            raise ConfigError(f"{where}: expected an integer, got {raw!r}")
        return value
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: expected a string, got {raw!r}")
    return raw


def _validate(config: Config) -> None:
    if not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", config.schedule):
        raise ConfigError(f"schedule: expected local time HH:MM, got {config.schedule!r}")
    if config.update_until and not re.fullmatch(r"([01]?\d|2[0-3]):[0-5]\d", config.update_until):
        raise ConfigError(f"update_until: expected local time HH:MM, or empty: no window; got {config.update_until!r}")
    if config.update_until and config.schedule_hour_minute == config.until_hour_minute:
        raise ConfigError(f"update_until: the window from schedule to update_until is empty ({config.update_until})")
    if not 0 <= config.memory_reread_nights <= 12:
        raise ConfigError(
            f"memory_reread_nights: must be 0 (none) to 12 (up to 2048 nights back), got {config.memory_reread_nights}"
        )
    if not config.pause_above_cores >= 0:
        raise ConfigError(f"pause_above_cores: must be >= 0 (0: never pause for load), got {config.pause_above_cores}")
    if not 0.0 < config.probe_fraction < 1.0:
        raise ConfigError(f"probe_fraction: must be between 0 and 1, got {config.probe_fraction}")
    for name in (
        "update_budget_minutes",
        "update_epochs",
        "update_max_new_mib",
        "checkpoint_every_seconds",
        "debounce_seconds",
        "rescan_seconds",
        "misfire_grace_hours",
        "update_max_passes",
    ):
        if getattr(config, name) <= 0:
            raise ConfigError(f"{name}: must be positive, got {getattr(config, name)}")
    for name in (
        "update_min_steps",
        "update_max_steps",
        "batch_size",
        "seq_len",
        "keep_checkpoints",
        "max_line_bytes",
        "probe_max_bytes",
        "probe_max_days",
    ):
        if getattr(config, name) < 1:
            raise ConfigError(f"{name}: must be at least 1, got {getattr(config, name)}")
    if config.replay_ratio < 0:
        raise ConfigError(f"replay_ratio: must be >= 0, got {config.replay_ratio}")
    if config.replay_min_bytes < 0:
        raise ConfigError(f"replay_min_bytes: must be >= 0, got {config.replay_min_bytes}")
    for name in ("gate_tolerance_bpb", "gate_facts_tolerance_bpb", "gate_canary_tolerance_bpb"):
        if not getattr(config, name) >= 0:  # NaN fails too
            raise ConfigError(f"{name}: must be >= 0 bits per byte (inf: no limit), got {getattr(config, name)}")
    if config.lr_scale <= 0:
        raise ConfigError(f"lr_scale: must be positive, got {config.lr_scale}")
    if config.trainer not in ("ff", "bp"):
        raise ConfigError(f"trainer: expected 'ff' or 'bp', got {config.trainer!r}")
    if config.replay_layers not in ("all", "lower", "upper"):
        raise ConfigError(f"replay_layers: expected 'all', 'lower' or 'upper', got {config.replay_layers!r}")
    if not 0 <= config.rehearse_rows < config.batch_size:
        raise ConfigError(
            f"rehearse_rows: expected 0 to batch_size - 1 ({config.batch_size - 1}), got {config.rehearse_rows}"
        )
    if not 0 < config.rehearse_fraction <= 1:
        raise ConfigError(f"rehearse_fraction: expected a share above 0 and at most 1, got {config.rehearse_fraction}")
    if config.rehearse_layers not in ("all", "top"):
        raise ConfigError(f"rehearse_layers: expected 'all' or 'top', got {config.rehearse_layers!r}")
    if config.rehearse_rows and config.replay_layers == "lower":  # the top layer's rows would not be a prefix
        raise ConfigError(
            "rehearse_rows: the top layer learns from rehearsed rows, which replay_layers = 'lower' denies"
        )
    if config.freeze_layers < 0:
        raise ConfigError(f"freeze_layers: must be >= 0, got {config.freeze_layers}")
    if not 0 <= config.lower_lr <= 1:
        raise ConfigError(f"lower_lr: expected a multiplier from 0 to 1, got {config.lower_lr}")
    if config.workers != "auto":
        if not isinstance(config.workers, int) or config.workers < 1:
            raise ConfigError(f'workers: expected "auto" or a number of ranks >= 1, got {config.workers!r}')
        if config.batch_size % config.workers:
            raise ConfigError(
                f"workers: {config.workers} ranks cannot share batch_size = {config.batch_size} rows evenly; "
                "choose a divisor of batch_size"
            )
        if config.replay_layers != "all" and config.batch_size < 2 * config.workers:
            raise ConfigError(
                f"workers: with replay_layers = {config.replay_layers!r} every rank needs new and replayed rows: "
                f"batch_size must be at least 2 x workers ({2 * config.workers})"
            )
    if config.trainer == "bp" and (config.freeze_layers or config.replay_layers != "all"):
        raise ConfigError("freeze_layers and replay_layers act on FF's per-layer losses: they need trainer = 'ff'")
    if config.trainer == "bp" and config.rehearse_rows and config.rehearse_layers == "top":
        raise ConfigError("rehearse_layers = 'top' acts on FF's per-layer losses: with trainer = 'bp' use 'all'")
    from engram_ff.model.config import PRESETS  # torch-free

    if config.model_preset not in PRESETS:
        raise ConfigError(f"model_preset: expected one of {', '.join(PRESETS)}, got {config.model_preset!r}")
    if config.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"log_level: expected DEBUG, INFO, WARNING or ERROR, got {config.log_level!r}")


def load_config(
    config_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    origins: dict[str, str] | None = None,
    **flags: object,
) -> Config:
    """Merge the sources in order of strength; flags left as None do not override. `origins`, if given,
    receives where each key that is not a default came from (`engram-ff config --show-origin`)."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}  # each value of its field's type (_coerce)
    origins = {} if origins is None else origins
    config_file = config_file or environ.get(ENV_PREFIX + "CONFIG")
    if config_file:
        path = Path(config_file).expanduser()
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"configuration file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"configuration file {path} cannot be read: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"configuration file {path} is not valid TOML: {exc}") from None
        except RecursionError:  # tomllib recurses once per level: `x = [[[...` 5,000 deep overflows the stack
            raise ConfigError(f"configuration file {path} is not valid TOML: nested too deeply") from None
        for key, raw in table.items():
            if key not in _FIELDS:
                raise ConfigError(f"{key} (from {path}): unknown key; known keys: {', '.join(_FIELDS)}")
            values[key] = _coerce(key, raw, str(path))
            origins[key] = f"file {path}"
    for env_key, raw in environ.items():
        if env_key.startswith(ENV_PREFIX) and env_key != ENV_PREFIX + "CONFIG":
            key = env_key[len(ENV_PREFIX) :].lower()
            if key not in _FIELDS:
                raise ConfigError(f"{key} (from environment {env_key}): unknown key")
            values[key] = _coerce(key, raw, f"environment {env_key}")
            origins[key] = f"environment {env_key}"
    for key, raw in flags.items():
        if raw is not None:
            source = f"flag {FLAGS[key]}" if key in FLAGS else f"argument {key}="  # a bench's or a test's setting
            values[key] = _coerce(key, raw if not isinstance(raw, Path) else str(raw), source)
            origins[key] = source
    config = Config(**values)
    _validate(config)
    return config


def config_from_args(args, origins: dict[str, str] | None = None) -> Config:
    """The CLI's view: --config, --watch and --data flags over file and environment."""
    return load_config(
        getattr(args, "config", None),
        origins=origins,
        watch_dir=getattr(args, "watch", None),
        data_dir=getattr(args, "data", None),
    )


REMEMBERED = "the database (what this data directory last used)"


def with_remembered(config: Config, origins: dict[str, str] | None = None) -> Config:
    """Fill what no source set from what the data directory's database remembers (migration 0600): the
    watch folder it last watched or ingested, and in the demo's data directory the bundled facts. A
    missing or unreadable database remembers nothing; nothing is created or changed here."""
    if config.watch_dir is not None and config.facts_file is not None:
        return config
    if not config.db_path.is_file():
        return config
    import sqlite3

    from engram_ff.state.db import open_db
    from engram_ff.state.queries import remembered

    try:
        db = open_db(config.db_path, migrate=False)  # not migrated: reading its settings changes nothing
    except sqlite3.Error:
        return config
    try:
        settings = remembered(db)
    except sqlite3.Error:  # a database older than migration 0600, or damaged: it remembers nothing
        settings = {}
    finally:
        db.close()
    watch_dir, facts_file = config.watch_dir, config.facts_file
    if watch_dir is None and settings.get("watch_dir"):
        watch_dir = Path(settings["watch_dir"])
        if origins is not None:
            origins["watch_dir"] = REMEMBERED
    if facts_file is None and settings.get("facts") == "bundled":
        from engram_ff.daemon.facts import BUNDLED_FACTS

        facts_file = BUNDLED_FACTS
        if origins is not None:
            origins["facts_file"] = REMEMBERED
    return dataclasses.replace(config, watch_dir=watch_dir, facts_file=facts_file)
