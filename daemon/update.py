"""The nightly update: from the current model, train a candidate on what arrived since, probe it, and let
the promotion gate (daemon/gate.py) make it the current model or reject it.

Nothing a user says is thrown away, and every gate still sees text neither model trained on: the hold-out
rolls. A message whose hash puts it in the probe split (ingest/reader.py split_of) is held out of the night
that first sees it, whose gate compares the candidate with the current model on it (the `fresh` check,
daemon/gate.py), and the next promoted night trains it, within its conversation (state/queries.py
deferred_text). A night's text is therefore: the probe-split messages at or before its first id that no
promoted night has trained yet (oldest first), then its new train-split messages, together at most
update_max_new_mib; the rest waits. An update records both ranges (runs.first/last_message_id and
runs.deferred_first/last_id), so a resumed update trains the same text, a rejected night's held-out
messages are trained by the next promoted one, and no two promoted nights train the same message. Why not
test-then-train alone (score each night's text before training on all of it): the gate would then judge a
candidate only on text it had trained on, or on older days that both models had, and a night that overfits
its own text would pass; a rolling slice keeps one check on unseen text at the cost of one night's delay
for a tenth of the messages. The test-then-train score is recorded too, as runs.prequential_bpb: the bits
per byte the model the night started from gives the night's new train text, before training on it.

A partial checkpoint, written every `checkpoint_every_seconds`, lets an update killed half-way resume
where it stopped, with its optimiser state and the same messages, rather than start again. The trained
candidate is saved before it is probed, as a 'candidate' checkpoint that is not current, and the gate's
decision is one transaction (state.runs.settle_update): an update killed while its candidate is probed
leaves the previous model current, and the next update resumes the candidate and judges it. The
checkpoint lifecycle is daemon/checkpoints.py's; how a night trains is daemon/recipe.py's.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from dataclasses import dataclass

import torch

from engram_ff.daemon import checkpoints, gate, ranks, recipe, schedule
from engram_ff.daemon.checkpoints import Loaded
from engram_ff.daemon.config import Config
from engram_ff.daemon.errors import UserError
from engram_ff.daemon.output import duration, run_name, size
from engram_ff.daemon.probes import LN2, ProbesStopped, probe, text_hash
from engram_ff.daemon.progress import Progress
from engram_ff.daemon.resources import peak_rss_mb
from engram_ff.model import checkpoint as ckpt
from engram_ff.model import memory
from engram_ff.model.train import evaluate_nats, train
from engram_ff.state import queries, runs
from engram_ff.state.db import open_db

log = logging.getLogger(__name__)

# rejected: the gate kept the previous model; refused: no model loads where the database says one existed
EXIT_CODES = {"ok": 0, "skipped": 0, "failed": 1, "interrupted": 3, "rejected": 4, "refused": 5}
MIB = 1 << 20


class Refused(Exception):
    """The update will not start: it would silently replace a trained model by a fresh one."""


@dataclass
class Night:
    """What one update trains, and from where: the new train messages are those with first_id < id <= last_id,
    the probe-split ones held out of earlier nights those with deferred_first < id <= deferred_last; the
    probe-split messages with first_id < id <= last_id are held out of this night, for its gate."""

    start: Loaded
    first_id: int
    last_id: int
    parent_id: int | None  # the final checkpoint the model grew from (None: a fresh model)
    deferred_first: int = 0
    deferred_last: int = 0
    resumed_run: int | None = None  # the interrupted update this one continues
    steps_done: int = 0  # by the update(s) it continues
    seconds_spent: float = 0.0
    trained: bool = False  # the start is a candidate whose training ended (its update died during the gate)


def plan_night(db, config: Config, *, from_scratch: bool = False) -> Night:
    """Continue an interrupted update with its own messages, or start a new one after the last promoted
    model's messages; from scratch (asked for by the user) only where no model loads, from the first
    message. A new night takes at most update_max_new_mib of text, oldest first: the probe-split messages
    no promoted night trained yet (up to its first id), then new train-split ones; the rest waits, and the
    bounds recorded are exactly what this night trains on, so a resumed update trains on the same messages.
    (The context lines around a deferred message, at most two each, are not counted: like replay.)"""
    night_bytes = round(config.update_max_new_mib * MIB)
    if from_scratch:
        if (loaded := checkpoints.load_current(db, config)) is not None:
            raise UserError(  # a flag typed by mistake: nothing is trained, and nothing is recorded
                f"--from-scratch: the current model (checkpoint {loaded.checkpoint_id}) loads, so nothing needs "
                "starting over; to start afresh anyway, use a new data_dir",
                EXIT_CODES["refused"],
            )
        log.warning("starting a fresh model, as asked (--from-scratch), from the first message stored")
        return Night(checkpoints.fresh(config), 0, queries.end_of_night(db, 0, night_bytes), None)
    partial = checkpoints.resumable(db, config)
    if partial is not None:
        meta = partial.meta
        log.info("resuming interrupted update %d from its checkpoint at step %d", meta["run_id"], partial.trainer.steps)
        return Night(
            partial,
            meta["first_message_id"],
            meta["last_message_id"],
            meta.get("parent_id"),
            deferred_first=meta.get("deferred_first_id", 0),  # a partial from before 0602 trained none
            deferred_last=meta.get("deferred_last_id", 0),
            resumed_run=meta["run_id"],
            steps_done=meta.get("update_steps", 0),
            seconds_spent=meta.get("seconds", 0.0),
            trained=meta.get("trained", False),
        )
    current = checkpoints.load_current(db, config)  # a promoted checkpoint restored from a backup counts
    if current is None and runs.model_existed(db):
        raise Refused(
            "the database records a trained model, but none of its checkpoint files loads (the log says why): "
            "an update now would replace it by a fresh model trained on one night. Restore the files under "
            f"{config.checkpoint_dir}, or run `engram-ff update --from-scratch` to start a new model on every "
            "message stored"
        )
    current = current or checkpoints.fresh(config)
    first_id, deferred_first = runs.trained_through(db), runs.deferred_through(db)
    deferred_last = queries.end_of_night(db, deferred_first, night_bytes, split="probe", through_id=first_id)
    room = night_bytes - queries.bytes_between(db, deferred_first, deferred_last, split="probe")
    last_id = queries.end_of_night(db, first_id, room)
    if room > 0:  # the probe-split messages right after its last train message are held out of it too
        last_id = queries.held_out_through(db, last_id)
    return Night(
        current,
        first_id,
        last_id,
        current.checkpoint_id,
        deferred_first=deferred_first,
        deferred_last=deferred_last,
    )


def run_update(
    config: Config,
    *,
    should_stop=lambda: False,
    progress: Progress | None = None,
    from_scratch: bool = False,
    team: ranks.Team | None = None,
) -> dict:
    """One update, exactly the nightly job (training, probes, gate); returns its `runs` row. It trains on
    `workers` ranks that it starts itself (daemon/ranks.py), or on torchrun's `team`, of which this process
    is rank 0; the gate's probes run here alone."""
    db = open_db(config.db_path)
    runs.mark_dead_runs_interrupted(db)
    started = time.monotonic()
    team = team or ranks.Team.local(config)
    team.should_stop = should_stop
    progress = progress or Progress()
    run_id = None
    try:
        night = plan_night(db, config, from_scratch=from_scratch)
        run_id = runs.start_run(db, "update", resumed_from=night.resumed_run)
        return _train_night(db, config, run_id, night, started, should_stop, progress, team)
    except UserError:
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: no checkpoint now, but no helper left and no run 'running'
        team.kill()
        progress.finish()
        runs.interrupt_own_runs(db, "given up at once by a second Ctrl-C")
        raise
    except Exception as exc:
        progress.finish()  # the log line below gets a line of its own, not the bar's
        exc = team.abort(exc)
        if run_id is None and isinstance(exc, sqlite3.Error):
            raise  # the database refused the run's first row, so none can record this: the caller says why
        if run_id is not None and isinstance(exc, ranks.RankFailed) and should_stop():
            # a stop came while a rank hung: the update is interrupted, and resumes from its last partial
            log.warning("update %d interrupted: %s", run_id, exc)
            return _abandoned(db, run_id, f"{stopped_because(should_stop)}; {exc}", started)
        refused = isinstance(exc, Refused)
        if refused:
            log.error("update refused: %s", exc)
        else:
            log_failure("update failed; the previous checkpoint stays current", exc)
        if run_id is None:  # a database that refuses these rows too raises: the caller names it in one line
            run_id = runs.start_run(db, "update")
        runs.finish_run(
            db,
            run_id,
            "refused" if refused else "failed",
            error=str(exc) if refused else f"{type(exc).__name__}: {exc}",
            wall_seconds=time.monotonic() - started,
            peak_rss_mb=peak_rss_mb(),
        )
        return runs.get_run(db, run_id)
    finally:
        team.finish()
        db.close()


def stopped_because(should_stop) -> str:
    """What an interrupted run's row says: the child's reason (daemon/child.py Stop: "paused: ..." when the
    machine went on battery or got busy, which the daemon resumes), else a signal."""
    return getattr(should_stop, "why", None) or "stopped by a signal"


def _abandoned(db, run_id: int, error: str, started: float) -> dict:
    """Record an update stopped in the middle of a step: interrupted, at its newest partial checkpoint (the
    next update resumes from it; none yet: from where this one started)."""
    mine = [row["id"] for row in runs.good_checkpoints(db, "partial") if row["run_id"] == run_id]
    runs.finish_run(
        db,
        run_id,
        "interrupted",
        checkpoint_id=mine[0] if mine else None,
        error=error,
        wall_seconds=time.monotonic() - started,
        peak_rss_mb=peak_rss_mb(),
    )
    return runs.get_run(db, run_id)


def _train_night(
    db, config: Config, run_id: int, night: Night, started: float, should_stop, progress: Progress, team: ranks.Team
) -> dict:
    bounds = dict(
        first_message_id=night.first_id,
        last_message_id=night.last_id,
        deferred_first_id=night.deferred_first,
        deferred_last_id=night.deferred_last,
    )
    new_text = queries.night_text(db, bounds)
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
    # what update_max_new_mib left for later nights: newer train text, and probe-split text held out of
    # earlier nights that did not fit (tonight's own held-out messages are not waiting: the next night has them)
    waiting = queries.bytes_after(db, night.last_id) + queries.bytes_between(
        db, night.deferred_last, night.first_id, split="probe"
    )
    if waiting:
        log.info("%s of newer text waits for the next nights (update_max_new_mib)", size(waiting))
    matured = night.parent_id is not None
    history = queries.text_bytes_through(db, night.first_id, max(1, config.replay_min_bytes))
    replay_bytes = recipe.replay_size(config, len(new_text), history)
    replay = recipe.replay_sample(db, replay_bytes, night.first_id, seed=run_id)
    budget = recipe.step_budget(config, len(new_text) + len(replay), matured=matured)
    steps_left = 0 if night.trained else max(0, budget - night.steps_done)
    budget_s = schedule.training_seconds(config, night.seconds_spent)
    rate = recipe.retry_rate(runs.rejected_in_a_row(db))
    name = run_name(runs.get_run(db, run_id))  # "update 3 (run 5)", as status, learned and history say
    log.info(
        "%s: %s new, %s replayed, up to %d steps in %s%s",
        name,
        size(len(new_text)),
        size(len(replay)),
        steps_left,
        duration(budget_s),
        f", at {rate:g} of the learning rate after rejected updates" if rate < 1 else "",
    )
    model = night.start
    meta: dict[str, object] = {
        "run_id": run_id,
        "parent_id": night.parent_id,
        **bounds,
        "seconds": night.seconds_spent,
        "update_steps": night.steps_done,
    }

    def save(kind: str, status: str = "good") -> int:
        meta["seconds"] = night.seconds_spent + time.monotonic() - started
        return checkpoints.save(
            db, config, model, run_id=run_id, kind=kind, parent_id=night.parent_id, meta=meta, status=status
        )

    last_save = time.monotonic()

    def on_step(step: int, losses, result) -> None:
        nonlocal last_save
        meta["update_steps"] = night.steps_done + step
        progress.step(step, losses, result)
        if time.monotonic() - last_save >= config.checkpoint_every_seconds:
            save("partial")
            last_save = time.monotonic()

    model.trainer.lr *= config.lr_scale * rate  # a trainer is built afresh for each update, at its default rate
    generator = torch.Generator().manual_seed(run_id)
    rehearse = b""
    if config.rehearse_rows and matured and steps_left > 0:  # a fresh model's surprise says nothing yet
        rehearse = recipe.rehearsal(model.model, new_text, config.rehearse_fraction)
        log.info("%s: rehearsing %s, the night's most surprising sessions", name, size(len(rehearse)))
    batches, replay_rows = recipe.update_batches(new_text, replay, config, generator, team.world, rehearse)
    recipe.plan_layers(
        model.trainer,
        config,
        matured=matured,
        replay_rows=replay_rows,
        rehearse_rows=recipe.rehearsal_rows(config, rehearse, team.world),
    )
    replicas = None
    if team.world > 1 and steps_left > 0:
        meta["workers"] = team.world
        text = (new_text, replay, rehearse)
        night_for_ranks = ranks.night_for_ranks(model.trainer, config, text, run_id, budget_s, steps_left)
        replicas = team.start(config, night_for_ranks)
        model.trainer.distribute(replicas)
    progress.start(run_id, steps_left, budget_s, name=name)
    result = train(
        model.trainer,
        batches,
        budget_s=budget_s,
        max_steps=steps_left,
        on_step=on_step,
        should_stop=should_stop,
        replicas=replicas,
    )
    progress.finish()  # before the helpers' last log lines, which must not land on the bar's line
    team.finish()  # the helper ranks leave now: the gate's probes run here alone, on every core
    fields = dict(
        new_bytes=len(new_text),
        replay_bytes=len(replay),
        steps=night.steps_done + result.steps,
        # for people reading the row: 4 decimals
        layer_losses=night.start.meta["layer_losses"] if night.trained else [round(x, 4) for x in result.losses],
        parent_checkpoint_id=night.parent_id,
        waiting_bytes=waiting,
        **bounds,
    )

    def interrupted(checkpoint_id: int, error: str) -> dict:
        runs.finish_run(
            db,
            run_id,
            "interrupted",
            checkpoint_id=checkpoint_id,
            error=error,
            wall_seconds=time.monotonic() - started,
            peak_rss_mb=peak_rss_mb(),
            **fields,
        )
        return runs.get_run(db, run_id)

    if result.stopped or should_stop():  # a stop asked of any rank stops them all
        return interrupted(save("partial"), stopped_because(should_stop))
    if not night.trained and getattr(model.model, "memory", None) is not None:
        progress.phase("the context memory reads the night's text, and earlier nights' again")
        reread = recipe.reread_text(db, run_id, config.memory_reread_nights)
        replayed = replay[: recipe.MEMORY_REPLAY_MAX_BYTES] if config.memory_reads_replay else b""
        read = b"\n\n".join(part for part in (new_text, replayed, reread) if part)
        # its counts count the new text alone: the replay and the reread were counted on their own nights
        memory_bpb = memory.learn(model.model, read, rate, count_bytes=len(new_text))  # gentler after rejections
        log.info(
            "%s: the context memory read %s once (%s of it earlier nights' text again), at %.3f bits per byte "
            "before learning each part",
            name,
            size(len(read)),
            size(len(reread)),
            memory_bpb,
        )
        meta["memory_bpb"] = round(memory_bpb, 4)
    meta.update(trained=True, layer_losses=fields["layer_losses"])
    candidate = save("final", status="candidate")
    progress.phase("probing the candidate for the promotion gate")
    try:
        judged, prequential = _judge(db, config, model, candidate, night, should_stop)
    except ProbesStopped:  # the candidate is saved: the next update resumes it and judges it
        return interrupted(candidate, f"{stopped_because(should_stop)} while the gate probed the candidate")
    decision = dict(judged, learning_rate_scale=config.lr_scale * rate)
    promoted = decision["decision"] == "promoted"
    runs.settle_update(
        db,
        run_id,
        promoted=promoted,
        checkpoint_id=candidate,
        gate=decision,
        prequential_bpb=prequential,
        wall_seconds=time.monotonic() - started,
        peak_rss_mb=peak_rss_mb(),
        **fields,
    )
    checkpoints.settle_files(runs.get_checkpoint(db, candidate)["path"], promoted=promoted)
    _report(db, name, candidate, night, decision)
    checkpoints.prune(db, config.keep_checkpoints, config.checkpoint_dir)
    return runs.get_run(db, run_id)


# Bytes of a night's own text scored by the current model (before it trains: test-then-train) and by both
# models (its held-out messages): a normal day (issue 22's days are 35 kB) whole; a backlog night, a sample
# of it, so the gate's cost stays that of a probe pass or so (32 days of 2 x 4 KiB, a 16 KiB canary).
PREQUENTIAL_MAX_BYTES = 65536
FRESH_MAX_BYTES = 16384


def _judge(
    db, config: Config, candidate: Loaded, candidate_id: int, night: Night, should_stop
) -> tuple[dict, float | None]:
    """Probe the candidate (the night's probe pass) and compare it with the current model's newest pass; and
    score both on the night's held-out messages, which neither trained on (the gate's `fresh` check). Returns
    the decision and the prequential bits per byte (None for a first model: nothing scored the night before)."""
    parent_id = night.parent_id
    reference = None if parent_id is None else runs.newest_pass(db, parent_id)
    current = None
    if reference is not None and not gate.comparable(reference):
        assert parent_id is not None, "a reference is the parent's pass"
        log.info("the current model (checkpoint %d) has no comparable probe pass: probing it first", parent_id)
        current = ckpt.load_model(runs.get_checkpoint(db, parent_id)["path"]).model
        reference = _probe(db, config, current, parent_id, should_stop)
    rows = _probe(db, config, candidate.model, candidate_id, should_stop)
    if reference is None:
        return gate.decide(rows, reference, config), None
    if current is None:
        assert parent_id is not None, "a reference is the parent's pass"
        try:
            current = ckpt.load_model(runs.get_checkpoint(db, parent_id)["path"]).model
        except (OSError, ckpt.CheckpointError) as exc:  # its newest pass still judges; only tonight's text cannot
            log.warning("the current model's file does not load now (%s): no fresh check, no prequential score", exc)
            return gate.decide(rows, reference, config), None
    held_out = queries.held_out_between(db, night.first_id, night.last_id, night.deferred_first, night.deferred_last)
    held_out = held_out[:FRESH_MAX_BYTES]
    new = queries.text_between(db, night.first_id, night.last_id, split="train")[:PREQUENTIAL_MAX_BYTES]
    scored = [(text, _nats(current, text)) for text in (held_out, new) if len(text) >= 2]
    prequential = sum(len(t) * nats for t, nats in scored) / sum(len(t) for t, _ in scored) / LN2 if scored else None
    if len(held_out) >= 2:
        hashed = text_hash(held_out)
        rows = [*rows, dict(metric="fresh_bpb", value=_nats(candidate.model, held_out) / LN2, text_hash=hashed)]
        reference = [*reference, dict(metric="fresh_bpb", value=scored[0][1] / LN2, text_hash=hashed)]
    return gate.decide(rows, reference, config), None if prequential is None else round(prequential, 4)


def _nats(model, text: bytes) -> float:
    """evaluate_nats, with a diverged model's NaN as inf (infinitely bad, as the probes record it)."""
    nats = evaluate_nats(model, text)
    return math.inf if math.isnan(nats) else nats


def _probe(db, config: Config, model, checkpoint_id: int, should_stop=lambda: False) -> list[dict]:
    """One probe pass, recorded as a run of its own; should_stop() between two days ends it with no
    scores (ProbesStopped): a reader never sees half a pass."""
    run_id = runs.start_run(db, "probe")
    started = time.monotonic()
    try:
        rows = probe(db, config, model, run_id=run_id, checkpoint_id=checkpoint_id, should_stop=should_stop)
    except ProbesStopped:
        runs.finish_run(db, run_id, "interrupted", error="stopped by a signal")
        raise
    except Exception as exc:
        log_failure(f"probe pass {run_id} failed", exc)
        runs.finish_run(db, run_id, "failed", error=f"{type(exc).__name__}: {exc}")
        raise
    runs.finish_run(
        db,
        run_id,
        "ok",
        checkpoint_id=checkpoint_id,
        wall_seconds=time.monotonic() - started,
        peak_rss_mb=peak_rss_mb(),
    )
    return rows


def _report(db, name: str, candidate: int, night: Night, decision: dict) -> None:
    if decision["decision"] == "promoted":
        log.info("%s promoted checkpoint %d: %s", name, candidate, decision["reason"])
        return
    log.warning(
        "%s rejected its candidate (checkpoint %d, kept for inspection); checkpoint %s stays current and "
        "the next update trains on these messages again: %s",
        name,
        candidate,
        night.parent_id,
        decision["reason"],
    )
    if loud := gate.alarm(db):
        log.error("%s", loud)


EXPECTED = (OSError, sqlite3.Error, ckpt.CheckpointError, checkpoints.TrainerMismatch, ranks.RankFailed)


def log_failure(what: str, exc: Exception) -> None:
    """One line for what a machine does to an update (a full or read-only disk, a locked database, a bad
    checkpoint file); the traceback only for what would be a bug."""
    log.error("%s: %s: %s", what, type(exc).__name__, exc, exc_info=not isinstance(exc, EXPECTED))


def run_probes(config: Config, *, should_stop=lambda: False) -> list[dict]:
    """The probes alone, on the current model (`engram-ff probe`): its newest pass, which the next gate
    compares with; [] if there is no model, or if should_stop() ended the pass early (recorded as
    interrupted, with no scores)."""
    db = open_db(config.db_path)
    try:
        current = checkpoints.load_current(db, config)
        if current is None:  # the caller says so, once
            return []
        assert current.checkpoint_id is not None, "loaded from a checkpoint: not a fresh model"
        try:
            return _probe(db, config, current.model, current.checkpoint_id, should_stop)
        except ProbesStopped:
            return []
    finally:
        db.close()
