"""The nightly update: from the last good checkpoint, train with FF on what arrived since, then probe.

Crash safety comes from ordering. A checkpoint file is complete on disk (atomic rename, sha256 beside
it) before the row that names it is committed; a run is 'ok' only after its final checkpoint's row
is; so the current model, the newest good final checkpoint, is always one that loads. A partial
checkpoint, written every `checkpoint_every_seconds`, lets an update killed half-way resume where it
stopped, with its optimiser state, rather than start again.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from engram_ff.daemon.config import Config
from engram_ff.model import checkpoint as ckpt
from engram_ff.model.lm import FFLM, PRESETS, LMConfig
from engram_ff.model.train import BPTrainer, FFTrainer, byte_batches, train
from engram_ff.state import queries, runs
from engram_ff.state.db import open_db

log = logging.getLogger(__name__)


class TrainerMismatch(ValueError):
    """The checkpoint holds another trainer's optimiser state than the configuration asks for."""


@dataclass
class Loaded:
    model: FFLM
    trainer: FFTrainer | BPTrainer
    checkpoint_id: int | None  # None: a fresh model
    meta: dict


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


TRAINERS = {"ff": FFTrainer, "bp": BPTrainer}


def fresh(config: Config) -> Loaded:
    model = FFLM(PRESETS[config.model_preset])
    return Loaded(model, TRAINERS[config.trainer](model), None, {})


def load(payload: dict, checkpoint_id: int, trainer: str = "ff") -> Loaded:
    """A checkpoint's model and its trainer state, which must be the configured trainer's: FF keeps an
    optimiser per layer, BP one for the whole model, and neither can continue the other's."""
    held = payload.get("trainer_kind", "ff")  # checkpoints from before the BP option are FF's
    if held != trainer:
        raise TrainerMismatch(
            f"trainer: the current checkpoint holds {held!r} trainer state but the configuration "
            f"asks for {trainer!r}; set trainer = {held!r}, or use a new data_dir to start afresh"
        )
    model = FFLM(LMConfig.from_dict(payload["config"]))
    model.load_state_dict(payload["model"])
    state = TRAINERS[trainer](model)
    state.load_state_dict(payload["trainer"])
    return Loaded(model, state, checkpoint_id, payload.get("meta", {}))


def load_current(db, config: Config, kind: str = "final") -> Loaded | None:
    """The newest good checkpoint of `kind` that loads; a torn or corrupt one is marked and skipped."""
    for row in runs.good_checkpoints(db, kind):
        try:
            return load(ckpt.load_checkpoint(row["path"]), row["id"], config.trainer)
        except ckpt.CheckpointError as exc:
            log.error("checkpoint %s is unusable (%s); falling back to the one before it", row["path"], exc)
            runs.set_checkpoint_status(db, row["id"], "corrupt")
    return None


def save(db, config: Config, loaded: Loaded, *, run_id: int, kind: str, parent_id: int | None, meta: dict) -> int:
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path = config.checkpoint_dir / f"run{run_id:06d}-{kind}-{loaded.trainer.steps:07d}.pt"
    digest = ckpt.save_checkpoint(
        path,
        {
            "model": loaded.model.state_dict(),
            "config": loaded.model.config.to_dict(),
            "trainer": loaded.trainer.state_dict(),
            "trainer_kind": "bp" if isinstance(loaded.trainer, BPTrainer) else "ff",
            "meta": meta,
        },
    )
    return runs.add_checkpoint(
        db, run_id=run_id, path=str(path), sha256=digest, kind=kind, parent_id=parent_id, steps=loaded.trainer.steps
    )


def prune(db, keep: int, folder: Path) -> None:
    """After a successful update: keep the newest `keep` final checkpoints and no partial one (none is
    resumable any more, whichever run left it), and delete what a killed write left behind: temp
    files and checkpoint files whose row was never committed."""
    stale = runs.good_checkpoints(db, "final")[keep:] + runs.good_checkpoints(db, "partial")
    for row in stale:
        runs.set_checkpoint_status(db, row["id"], "pruned")
        for path in (Path(row["path"]), ckpt.digest_path(row["path"])):
            path.unlink(missing_ok=True)
    named = {Path(path) for (path,) in db.execute("SELECT path FROM checkpoints")}
    for path in folder.iterdir():
        if path.suffix == ".tmp" or (path.suffix == ".pt" and path not in named):
            log.info("removing %s, left by an interrupted checkpoint write", path)
            path.unlink(missing_ok=True)
            ckpt.digest_path(path).unlink(missing_ok=True)


def plan_layers(trainer: FFTrainer | BPTrainer, config: Config, *, matured: bool, replay_rows: int) -> None:
    """Per-layer guards against forgetting: slow every layer below the top once matured (either trainer);
    with FF also freeze the lowest layers, which then need no backward pass, and let only some layers'
    losses see the replayed rows (the last `replay_rows` of each batch), which backprop's one loss cannot."""
    n_layers = len(trainer.layer_lr)
    if config.freeze_layers >= n_layers:
        raise ValueError(f"freeze_layers: {config.freeze_layers} would freeze all {n_layers} layers of the model")
    if matured:
        if config.freeze_layers:
            trainer.freeze(config.freeze_layers)
        for i in range(config.freeze_layers, n_layers - 1):
            trainer.layer_lr[i] = config.lower_lr
    if replay_rows and config.replay_layers != "all":
        new_rows = config.batch_size - replay_rows
        skip = range(n_layers - 1, n_layers) if config.replay_layers == "lower" else range(n_layers - 1)
        for i in skip:
            trainer.loss_rows[i] = new_rows


def update_batches(new_text: bytes, replay: bytes, config: Config, generator: torch.Generator):
    """(batches, replayed rows per batch). Windows come from new and replayed text together; only when
    layers treat replay differently is each batch split into new rows first, then replayed ones in
    proportion to the bytes, so a layer can take its loss on the new rows alone."""
    text = new_text + replay
    if config.replay_layers == "all" or min(len(new_text), len(replay)) < 2:
        return byte_batches(text, config.batch_size, config.seq_len, generator), 0
    replay_rows = min(config.batch_size - 1, max(1, round(config.batch_size * len(replay) / len(text))))
    seq_len = min(config.seq_len, len(new_text) - 1, len(replay) - 1)
    new = byte_batches(new_text, config.batch_size - replay_rows, seq_len, generator)
    old = byte_batches(replay, replay_rows, seq_len, generator)
    return ((torch.cat([xn, xo]), torch.cat([yn, yo])) for (xn, yn), (xo, yo) in zip(new, old)), replay_rows


def replay_sample(db, n_bytes: int, before_id: int, seed: int) -> bytes:
    """Random spans of older training text, so that learning today does not overwrite last month."""
    if n_bytes <= 0 or before_id <= 0:
        return b""
    return queries.sample_text(db, n_bytes, max_id=before_id, split="train", seed=seed)


def run_update(config: Config, *, should_stop=lambda: False) -> dict:
    """One update, exactly the nightly job; returns its `runs` row."""
    db = open_db(config.db_path)
    runs.mark_dead_runs_interrupted(db)
    resume = _resumable(db)
    run_id = runs.start_run(db, "update", resumed_from=resume["run_id"] if resume else None)
    started = time.monotonic()
    try:
        return _update(db, config, run_id, resume, started, should_stop)
    except Exception as exc:
        log.exception("update %d failed; the previous checkpoint stays current", run_id)
        runs.finish_run(
            db,
            run_id,
            "failed",
            error=f"{type(exc).__name__}: {exc}",
            wall_seconds=time.monotonic() - started,
            peak_rss_mb=peak_rss_mb(),
        )
        return _row(db, run_id)
    finally:
        db.close()


def _resumable(db) -> dict | None:
    """The partial checkpoints of the newest interrupted update that left any. A resumed update killed
    before its own first checkpoint leaves none: then the one it resumed from is resumed again."""
    for last in db.query("SELECT id, status FROM runs WHERE kind = 'update' ORDER BY id DESC"):
        if last["status"] != "interrupted":
            return None
        partials = [row for row in runs.good_checkpoints(db, "partial") if row["run_id"] == last["id"]]
        if partials:
            return {"run_id": last["id"], "rows": partials}
    return None


def _update(db, config: Config, run_id: int, resume: dict | None, started: float, should_stop) -> dict:
    current = None
    resume_id = resume["run_id"] if resume else None
    if resume:
        current = load_current(db, config, "partial")
        if current is not None and current.meta.get("run_id") != resume_id:
            current = None
    if current is not None:
        meta = current.meta
        first_id, last_id = meta["first_message_id"], meta["last_message_id"]
        spent = meta.get("seconds", 0.0)
        parent_id = meta.get("parent_id")
        log.info(
            "resuming interrupted update %d from its checkpoint at step %d", resume["run_id"], current.trainer.steps
        )
    else:
        current = load_current(db, config) or fresh(config)
        first_id = runs.trained_through(db)
        last_id = queries.max_message_id(db, split="train")
        spent = 0.0
        parent_id = current.checkpoint_id
    new_text = queries.text_between(db, first_id, last_id, split="train")
    if not new_text:
        runs.finish_run(
            db,
            run_id,
            "skipped",
            error="no new training text since the last update",
            first_message_id=first_id,
            last_message_id=last_id,
            new_bytes=0,
            wall_seconds=time.monotonic() - started,
            peak_rss_mb=peak_rss_mb(),
        )
        return _row(db, run_id)
    replay = replay_sample(db, int(len(new_text) * config.replay_ratio), first_id, seed=run_id)
    text = new_text + replay
    epoch_steps = config.update_epochs * len(text) / (config.batch_size * config.seq_len)
    step_budget = min(config.update_max_steps, max(config.update_min_steps, round(epoch_steps)))
    budget_s = max(0.0, config.update_budget_minutes * 60 - spent)
    resuming = resume_id is not None and current.meta.get("run_id") == resume_id
    steps_done = current.meta.get("update_steps", 0) if resuming else 0
    steps_left = max(0, step_budget - steps_done)
    log.info(
        "update %d: %d new bytes, %d replayed, up to %d steps in %.0f s",
        run_id,
        len(new_text),
        len(replay),
        steps_left,
        budget_s,
    )

    meta = {
        "run_id": run_id,
        "parent_id": parent_id,
        "first_message_id": first_id,
        "last_message_id": last_id,
        "seconds": spent,
        "update_steps": steps_done,
    }
    last_save = time.monotonic()

    def on_step(step: int, losses, result) -> None:
        nonlocal last_save
        meta["update_steps"] = steps_done + step
        if time.monotonic() - last_save >= config.checkpoint_every_seconds:
            meta["seconds"] = spent + time.monotonic() - started
            save(db, config, current, run_id=run_id, kind="partial", parent_id=parent_id, meta=meta)
            last_save = time.monotonic()

    current.trainer.lr *= config.lr_scale  # a trainer is built afresh for each update, at its default rate
    generator = torch.Generator().manual_seed(run_id)
    batches, replay_rows = update_batches(new_text, replay, config, generator)
    plan_layers(current.trainer, config, matured=parent_id is not None, replay_rows=replay_rows)
    result = train(
        current.trainer, batches, budget_s=budget_s, max_steps=steps_left, on_step=on_step, should_stop=should_stop
    )
    meta["seconds"] = spent + time.monotonic() - started
    fields = dict(
        first_message_id=first_id,
        last_message_id=last_id,
        new_bytes=len(new_text),
        replay_bytes=len(replay),
        steps=steps_done + result.steps,
        layer_losses=result.losses,
        parent_checkpoint_id=parent_id,
    )
    if should_stop():
        checkpoint_id = save(db, config, current, run_id=run_id, kind="partial", parent_id=parent_id, meta=meta)
        runs.finish_run(
            db,
            run_id,
            "interrupted",
            checkpoint_id=checkpoint_id,
            error="stopped by a signal",
            wall_seconds=time.monotonic() - started,
            peak_rss_mb=peak_rss_mb(),
            **fields,
        )
        return _row(db, run_id)
    checkpoint_id = save(db, config, current, run_id=run_id, kind="final", parent_id=parent_id, meta=meta)
    runs.finish_run(
        db,
        run_id,
        "ok",
        checkpoint_id=checkpoint_id,
        wall_seconds=time.monotonic() - started,
        peak_rss_mb=peak_rss_mb(),
        **fields,
    )
    prune(db, config.keep_checkpoints, config.checkpoint_dir)
    return _row(db, run_id)


def _row(db, run_id: int) -> dict:
    return next(db.query("SELECT * FROM runs WHERE id = ?", [run_id]))


def update_and_probe(config: Config, *, should_stop=lambda: False) -> dict:
    """The nightly job: an update, then probes of the model it leaves current."""
    row = run_update(config, should_stop=should_stop)
    if row["status"] == "ok" and not should_stop():
        run_probes(config)
    return row


def run_probes(config: Config) -> list[dict]:
    from engram_ff.daemon.probes import probe

    db = open_db(config.db_path)
    try:
        current = load_current(db, config)
        if current is None:
            log.info("no trained checkpoint yet: nothing to probe")
            return []
        run_id = runs.start_run(db, "probe")
        try:
            rows = probe(db, config, current.model, run_id=run_id, checkpoint_id=current.checkpoint_id)
        except Exception as exc:
            runs.finish_run(db, run_id, "failed", error=f"{type(exc).__name__}: {exc}")
            raise
        runs.finish_run(db, run_id, "ok", checkpoint_id=current.checkpoint_id, peak_rss_mb=peak_rss_mb())
        return rows
    finally:
        db.close()


EXIT_CODES = {"ok": 0, "skipped": 0, "failed": 1, "interrupted": 3}
PR_SET_PDEATHSIG = 1


def stop_with_parent(parent_pid: int) -> bool:
    """SIGTERM this update when the daemon that started it dies (SIGKILL, OOM, a crash), so that it saves a
    partial checkpoint and exits instead of training on unsupervised beside the next daemon's update.
    The daemon's thread that started us waits on us, so the signal comes only when the process dies.
    False if the daemon is already gone."""
    import ctypes
    import signal

    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    return os.getppid() == parent_pid


def main() -> int:
    """Entry point of the daemon's update child: configuration arrives as ENGRAM_FF_* variables."""
    import signal

    from engram_ff.daemon.config import load_config
    from engram_ff.daemon.logs import setup_logging
    from engram_ff.daemon.sandbox import adapt_torch

    config = load_config()
    setup_logging(config.log_level)
    adapt_torch()
    stop = {"requested": False}

    def on_term(signum, frame):
        log.info("stop requested: saving a checkpoint")
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if len(sys.argv) > 1 and not stop_with_parent(int(sys.argv[1])):
        log.warning("the daemon that started this update is gone: not starting")
        return EXIT_CODES["interrupted"]
    row = update_and_probe(config, should_stop=lambda: stop["requested"])
    return EXIT_CODES.get(row["status"], 1)


if __name__ == "__main__":
    raise SystemExit(main())
