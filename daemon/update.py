"""The nightly update: from the current model, train on what arrived since, save, then probe.

A partial checkpoint, written every `checkpoint_every_seconds`, lets an update killed half-way resume
where it stopped, with its optimiser state and the same messages, rather than start again. The
checkpoint lifecycle is daemon/checkpoints.py's; how a night trains is daemon/recipe.py's.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

import torch

from engram_ff.daemon import checkpoints, recipe
from engram_ff.daemon.checkpoints import Loaded
from engram_ff.daemon.config import Config
from engram_ff.daemon.output import duration, size
from engram_ff.daemon.progress import Progress
from engram_ff.daemon.resources import peak_rss_mb
from engram_ff.model import checkpoint as ckpt
from engram_ff.model.train import train
from engram_ff.state import queries, runs
from engram_ff.state.db import open_db

log = logging.getLogger(__name__)

EXIT_CODES = {"ok": 0, "skipped": 0, "failed": 1, "interrupted": 3}
MIB = 1 << 20


@dataclass
class Night:
    """What one update trains, and from where: the new train messages are those with first_id < id <= last_id."""

    start: Loaded
    first_id: int
    last_id: int
    parent_id: int | None  # the final checkpoint the model grew from (None: a fresh model)
    resumed_run: int | None = None  # the interrupted update this one continues
    steps_done: int = 0  # by the update(s) it continues
    seconds_spent: float = 0.0


def plan_night(db, config: Config) -> Night:
    """Continue an interrupted update with its own messages, or start a new one after the last trained id
    with at most update_max_new_mib of new text: the rest waits, and the bounds recorded are exactly what
    this night trains on, so a resumed update trains on the same messages."""
    partial = checkpoints.resumable(db, config)
    if partial is not None:
        meta = partial.meta
        log.info("resuming interrupted update %d from its checkpoint at step %d", meta["run_id"], partial.trainer.steps)
        return Night(
            partial,
            meta["first_message_id"],
            meta["last_message_id"],
            meta.get("parent_id"),
            resumed_run=meta["run_id"],
            steps_done=meta.get("update_steps", 0),
            seconds_spent=meta.get("seconds", 0.0),
        )
    current = checkpoints.load_current(db, config) or checkpoints.fresh(config)
    first_id = runs.trained_through(db)
    last_id = queries.end_of_night(db, first_id, round(config.update_max_new_mib * MIB))
    return Night(current, first_id, last_id, current.checkpoint_id)


def run_update(config: Config, *, should_stop=lambda: False, progress: Progress | None = None) -> dict:
    """One update, exactly the nightly job; returns its `runs` row."""
    db = open_db(config.db_path)
    runs.mark_dead_runs_interrupted(db)
    started = time.monotonic()
    run_id = None
    try:
        night = plan_night(db, config)
        run_id = runs.start_run(db, "update", resumed_from=night.resumed_run)
        return _train_night(db, config, run_id, night, started, should_stop, progress or Progress())
    except Exception as exc:
        if run_id is None and isinstance(exc, sqlite3.Error):
            raise  # the database refused the run's first row, so none can record this: the caller says why
        log_failure("update failed; the previous checkpoint stays current", exc)
        if run_id is None:  # a database that refuses these rows too raises: the caller names it in one line
            run_id = runs.start_run(db, "update")
        runs.finish_run(
            db,
            run_id,
            "failed",
            error=f"{type(exc).__name__}: {exc}",
            wall_seconds=time.monotonic() - started,
            peak_rss_mb=peak_rss_mb(),
        )
        return runs.get_run(db, run_id)
    finally:
        db.close()


def _train_night(
    db, config: Config, run_id: int, night: Night, started: float, should_stop, progress: Progress
) -> dict:
    new_text = queries.text_between(db, night.first_id, night.last_id, split="train")
    bounds = dict(first_message_id=night.first_id, last_message_id=night.last_id)
    if not new_text:
        runs.finish_run(
            db,
            run_id,
            "skipped",
            error="no new training text since the last update",
            new_bytes=0,
            wall_seconds=time.monotonic() - started,
            peak_rss_mb=peak_rss_mb(),
            **bounds,
        )
        return runs.get_run(db, run_id)
    waiting = queries.bytes_after(db, night.last_id)
    if waiting:
        log.info("%.1f MiB of newer text waits for the next nights (update_max_new_mib)", waiting / MIB)
    replay = recipe.replay_sample(db, int(len(new_text) * config.replay_ratio), night.first_id, seed=run_id)
    steps_left = max(0, recipe.step_budget(config, len(new_text) + len(replay)) - night.steps_done)
    budget_s = max(0.0, config.update_budget_minutes * 60 - night.seconds_spent)
    log.info(
        "update %d: %s new, %s replayed, up to %d steps in %s",
        run_id,
        size(len(new_text)),
        size(len(replay)),
        steps_left,
        duration(budget_s),
    )
    model = night.start
    meta = {
        "run_id": run_id,
        "parent_id": night.parent_id,
        **bounds,
        "seconds": night.seconds_spent,
        "update_steps": night.steps_done,
    }

    def save(kind: str) -> int:
        meta["seconds"] = night.seconds_spent + time.monotonic() - started
        return checkpoints.save(db, config, model, run_id=run_id, kind=kind, parent_id=night.parent_id, meta=meta)

    last_save = time.monotonic()

    def on_step(step: int, losses, result) -> None:
        nonlocal last_save
        meta["update_steps"] = night.steps_done + step
        progress.step(step, losses, result)
        if time.monotonic() - last_save >= config.checkpoint_every_seconds:
            save("partial")
            last_save = time.monotonic()

    model.trainer.lr *= config.lr_scale  # a trainer is built afresh for each update, at its default rate
    batches, replay_rows = recipe.update_batches(new_text, replay, config, torch.Generator().manual_seed(run_id))
    recipe.plan_layers(model.trainer, config, matured=night.parent_id is not None, replay_rows=replay_rows)
    progress.start(run_id, steps_left, budget_s)
    result = train(
        model.trainer, batches, budget_s=budget_s, max_steps=steps_left, on_step=on_step, should_stop=should_stop
    )
    progress.finish()
    fields = dict(
        new_bytes=len(new_text),
        replay_bytes=len(replay),
        steps=night.steps_done + result.steps,
        layer_losses=[round(loss, 4) for loss in result.losses],  # for people reading the row: 4 decimals
        parent_checkpoint_id=night.parent_id,
        waiting_bytes=waiting,
        **bounds,
    )
    stopped = should_stop()
    checkpoint_id = save("partial" if stopped else "final")
    runs.finish_run(
        db,
        run_id,
        "interrupted" if stopped else "ok",
        checkpoint_id=checkpoint_id,
        error="stopped by a signal" if stopped else None,
        wall_seconds=time.monotonic() - started,
        peak_rss_mb=peak_rss_mb(),
        **fields,
    )
    if not stopped:
        checkpoints.prune(db, config.keep_checkpoints, config.checkpoint_dir)
    return runs.get_run(db, run_id)


EXPECTED = (OSError, sqlite3.Error, ckpt.CheckpointError, checkpoints.TrainerMismatch)


def log_failure(what: str, exc: Exception) -> None:
    """One line for what a machine does to an update (a full or read-only disk, a locked database, a bad
    checkpoint file); the traceback only for what would be a bug."""
    log.error("%s: %s: %s", what, type(exc).__name__, exc, exc_info=not isinstance(exc, EXPECTED))


def update_and_probe(config: Config, *, should_stop=lambda: False, progress: Progress | None = None) -> dict:
    """The nightly job: an update, then probes of the model it leaves current."""
    row = run_update(config, should_stop=should_stop, progress=progress)
    if row["status"] == "ok" and not should_stop():
        if progress is not None:
            progress.phase("probing the new model")
        run_probes(config, should_stop=should_stop)
    return row


def run_probes(config: Config, *, should_stop=lambda: False) -> list[dict]:
    """A probe pass on the current model; [] if there is none, or if should_stop() ended it early (the
    pass is then recorded as interrupted, with no scores: a reader never sees half a pass)."""
    from engram_ff.daemon.probes import ProbesStopped, probe

    db = open_db(config.db_path)
    try:
        current = checkpoints.load_current(db, config)
        if current is None:
            log.info("no trained checkpoint yet: nothing to probe")
            return []
        run_id = runs.start_run(db, "probe")
        try:
            rows = probe(
                db, config, current.model, run_id=run_id, checkpoint_id=current.checkpoint_id, should_stop=should_stop
            )
        except ProbesStopped:
            runs.finish_run(db, run_id, "interrupted", error="stopped by a signal")
            return []
        except Exception as exc:
            log_failure(f"probe pass {run_id} failed", exc)
            runs.finish_run(db, run_id, "failed", error=f"{type(exc).__name__}: {exc}")
            raise
        runs.finish_run(db, run_id, "ok", checkpoint_id=current.checkpoint_id, peak_rss_mb=peak_rss_mb())
        return rows
    finally:
        db.close()
