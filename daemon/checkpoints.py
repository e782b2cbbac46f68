"""The checkpoint lifecycle on the database's side: which one is current, saving, pruning, resuming.

Crash safety comes from ordering. A checkpoint file is complete on disk (atomic rename, sha256 beside
it) before the row that names it is committed; a run is 'ok' only after its final checkpoint's row
is; so the current model, the newest good final checkpoint, is always one that loads. The file format
itself is model/checkpoint.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from engram_ff.daemon.config import Config
from engram_ff.model import checkpoint as ckpt
from engram_ff.model.lm import FFLM, PRESETS
from engram_ff.model.train import TRAINERS, BPTrainer, FFTrainer
from engram_ff.state import runs

log = logging.getLogger(__name__)


class TrainerMismatch(ValueError):
    """The checkpoint holds another trainer's optimiser state than the configuration asks for."""


@dataclass
class Loaded:
    model: FFLM
    trainer: FFTrainer | BPTrainer
    checkpoint_id: int | None  # None: a fresh model
    meta: dict


def fresh(config: Config) -> Loaded:
    model = FFLM(PRESETS[config.model_preset])
    return Loaded(model, TRAINERS[config.trainer](model), None, {})


def restore(saved: ckpt.Saved, checkpoint_id: int, trainer: str) -> Loaded:
    """A checkpoint's model and its trainer state, which must be the configured trainer's: FF keeps an
    optimiser per layer, BP one for the whole model, and neither can continue the other's."""
    if saved.trainer_kind != trainer:
        raise TrainerMismatch(
            f"trainer: the current checkpoint holds {saved.trainer_kind!r} trainer state but the configuration "
            f"asks for {trainer!r}; set trainer = {saved.trainer_kind!r}, or use a new data_dir to start afresh"
        )
    state = TRAINERS[trainer](saved.model)
    state.load_state_dict(saved.trainer_state)
    return Loaded(saved.model, state, checkpoint_id, saved.meta)


def newest_loadable(db, rows: list[dict], config: Config) -> Loaded | None:
    """The first of `rows` (newest first) that loads; a torn or corrupt one is marked and skipped."""
    for i, row in enumerate(rows):
        try:
            return restore(ckpt.load_model(row["path"]), row["id"], config.trainer)
        except ckpt.CheckpointError as exc:
            fallback = "falling back to the one before it" if i + 1 < len(rows) else "and there is none before it"
            log.error("checkpoint %s is unusable (%s); %s", row["path"], exc, fallback)
            runs.set_checkpoint_status(db, row["id"], "corrupt")
    return None


def load_current(db, config: Config) -> Loaded | None:
    """The current model: the newest good final checkpoint that loads."""
    return newest_loadable(db, runs.good_checkpoints(db, "final"), config)


def resumable(db, config: Config) -> Loaded | None:
    """The newest partial checkpoint of the newest interrupted update that left one that loads, or its
    candidate if it was killed during the gate (trained, not yet judged). A resumed update killed before
    its own first checkpoint leaves none: then the one it resumed from is resumed again. Any other newer
    update (ok, rejected, failed, skipped) means there is nothing to resume."""
    for run in runs.update_runs_newest_first(db):
        if run["status"] != "interrupted":
            return None
        saved = runs.checkpoints_with_status(db, "final", "candidate") + runs.good_checkpoints(db, "partial")
        mine = sorted((row for row in saved if row["run_id"] == run["id"]), key=lambda row: -row["id"])
        loaded = newest_loadable(db, mine, config)
        if loaded is not None:
            return loaded
    return None


def save(
    db,
    config: Config,
    loaded: Loaded,
    *,
    run_id: int,
    kind: str,
    parent_id: int | None,
    meta: dict,
    status: str = "good",
) -> int:
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = config.checkpoint_dir / f"run{run_id:06d}-{kind}-{loaded.trainer.steps:07d}.pt"
    digest = ckpt.save_model(path, loaded.model, loaded.trainer, meta)
    return runs.add_checkpoint(
        db,
        run_id=run_id,
        path=str(path),
        sha256=digest,
        kind=kind,
        parent_id=parent_id,
        steps=loaded.trainer.steps,
        status=status,
    )


def prune(db, keep: int, folder: Path) -> None:
    """After an update the gate judged: keep the newest `keep` final checkpoints, and as many rejected ones
    for inspection; no partial one and no unjudged candidate (none is resumable any more, whichever run left
    it); and delete what a killed write left behind: temp files and checkpoint files whose row was never
    committed."""
    stale = runs.good_checkpoints(db, "final")[keep:] + runs.good_checkpoints(db, "partial")
    stale += runs.checkpoints_with_status(db, "final", "rejected")[keep:]
    stale += runs.checkpoints_with_status(db, "final", "candidate")
    for row in stale:
        runs.set_checkpoint_status(db, row["id"], "pruned")
        for path in (Path(row["path"]), ckpt.digest_path(row["path"])):
            path.unlink(missing_ok=True)
    named = {Path(path) for path in runs.checkpoint_paths(db)}
    for path in folder.iterdir():
        if path.suffix == ".tmp" or (path.suffix == ".pt" and path not in named):
            log.info("removing %s, left by an interrupted checkpoint write", path)
            path.unlink(missing_ok=True)
            ckpt.digest_path(path).unlink(missing_ok=True)
