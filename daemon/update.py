"""The nightly update: from the current model, train on what arrived since, save, then probe.

A partial checkpoint, written every `checkpoint_every_seconds`, lets an update killed half-way resume
where it stopped, with its optimiser state and the same messages, rather than start again. The
checkpoint lifecycle is daemon/checkpoints.py's; how a night trains is daemon/recipe.py's.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from engram_ff.daemon import checkpoints, ranks, recipe
from engram_ff.daemon.checkpoints import Loaded
from engram_ff.daemon.config import Config
from engram_ff.daemon.resources import peak_rss_mb
from engram_ff.model.train import train
from engram_ff.state import queries, runs
from engram_ff.state.db import open_db

log = logging.getLogger(__name__)

EXIT_CODES = {"ok": 0, "skipped": 0, "failed": 1, "interrupted": 3}


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
    """Continue an interrupted update with its own messages, or start a new one after the last trained id."""
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
    return Night(current, first_id, queries.max_message_id(db, split="train"), current.checkpoint_id)


def run_update(config: Config, *, should_stop=lambda: False, team: ranks.Team | None = None) -> dict:
    """One update, exactly the nightly job; returns its `runs` row. It trains on `workers` ranks that it
    starts itself (daemon/ranks.py), or on torchrun's `team`, of which this process is rank 0."""
    db = open_db(config.db_path)
    runs.mark_dead_runs_interrupted(db)
    started = time.monotonic()
    run_id = None
    team = team or ranks.Team.local(config)
    try:
        night = plan_night(db, config)
        run_id = runs.start_run(db, "update", resumed_from=night.resumed_run)
        return _train_night(db, config, run_id, night, started, should_stop, team)
    except Exception as exc:
        exc = team.abort(exc)
        if run_id is None:
            run_id = runs.start_run(db, "update")
        log.error("update %d failed; the previous checkpoint stays current", run_id, exc_info=exc)
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
        team.finish()
        db.close()


def _train_night(db, config: Config, run_id: int, night: Night, started: float, should_stop, team: ranks.Team) -> dict:
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
    replay = recipe.replay_sample(db, int(len(new_text) * config.replay_ratio), night.first_id, seed=run_id)
    steps_left = max(0, recipe.step_budget(config, len(new_text) + len(replay)) - night.steps_done)
    budget_s = max(0.0, config.update_budget_minutes * 60 - night.seconds_spent)
    log.info(
        "update %d: %d new bytes, %d replayed, up to %d steps in %.0f s",
        run_id,
        len(new_text),
        len(replay),
        steps_left,
        budget_s,
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
        if time.monotonic() - last_save >= config.checkpoint_every_seconds:
            save("partial")
            last_save = time.monotonic()

    model.trainer.lr *= config.lr_scale  # a trainer is built afresh for each update, at its default rate
    generator = torch.Generator().manual_seed(run_id)
    batches, replay_rows = recipe.update_batches(new_text, replay, config, generator, team.world)
    recipe.plan_layers(model.trainer, config, matured=night.parent_id is not None, replay_rows=replay_rows)
    replicas = None
    if team.world > 1:
        meta["workers"] = team.world
        night_for_ranks = ranks.night_for_ranks(model.trainer, config, (new_text, replay), run_id, budget_s, steps_left)
        replicas = team.start(config, night_for_ranks)
        model.trainer.distribute(replicas)
    result = train(
        model.trainer,
        batches,
        budget_s=budget_s,
        max_steps=steps_left,
        on_step=on_step,
        should_stop=should_stop,
        replicas=replicas,
    )
    fields = dict(
        new_bytes=len(new_text),
        replay_bytes=len(replay),
        steps=night.steps_done + result.steps,
        layer_losses=result.losses,
        parent_checkpoint_id=night.parent_id,
        **bounds,
    )
    stopped = result.stopped or should_stop()  # a stop asked of any rank stops them all
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


def update_and_probe(config: Config, *, should_stop=lambda: False, team: ranks.Team | None = None) -> dict:
    """The nightly job: an update, then probes of the model it leaves current."""
    row = run_update(config, should_stop=should_stop, team=team)
    if row["status"] == "ok" and not should_stop():
        run_probes(config)
    return row


def run_probes(config: Config) -> list[dict]:
    from engram_ff.daemon.probes import probe

    db = open_db(config.db_path)
    try:
        current = checkpoints.load_current(db, config)
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
