"""The day's learning: the context memory learns each message soon after it arrives, not only at night.

Why. A model that learns only at night predicts a day with what it knew the night before. On the fact
night of bench learning (facts said up to 8 times within the day) the daemon's model coded the day at
2.75 bits per byte against bz2's 2.42, which reads the day as it codes it; the same model with its memory
learning as it read the day coded it at 2.35 (bench/results/learning-month-kn-strong.md), and a count
model coded the night before is above bz2 on that night whatever its discounts (bench/results/counts.md).
And a message drawn into a night's held-out slice waited until the next night to be learned at all.

How. Between nights the daemon runs `learn_today` (in a child, `python -m engram_ff.daemon.today`, a minute
after new messages are stored and after each update): the current model's context memory reads the messages
it has not trained, in the order they came, with its own test-then-train pass (model/memory.py `learn`: the
rows and counts learn, the SSM layers only read). What changed is kept as an overlay, `today.pt` in the data
directory: the rows of each memory table that differ from the current checkpoint's, with that checkpoint's
id and digest and the newest message read. The next call reads only messages newer than that.

Why an overlay, and why this keeps what the gate protects. The night is unchanged: it trains from the
promoted checkpoint, never from the overlay, and its memory reads the same messages again for good, so
nothing is counted twice. The gate compares checkpoints, neither of which holds the overlay, so its
held-out text is still text neither model trained on. Once a new checkpoint is promoted the overlay no
longer matches it and is built again from that checkpoint and the messages it has not trained: the
slice the night held out (each message between its neighbours, as the next night will train it), then
whatever came after. So `ask` and `generate` answer from the checkpoint's weights plus what the memory
learned since, never from a lookup of messages; and the overlay is a cache of learning the database can
always redo: a lost or damaged `today.pt` is rebuilt, and nothing is lost with it. What a call learns is kept
only if the gate's canary and facts checks still hold against the checkpoint's own scores (_refusal).
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass

import torch

from engram_ff.daemon import gate, probes
from engram_ff.daemon.config import Config, load_config
from engram_ff.daemon.errors import UserError, database_errors
from engram_ff.model import checkpoint as ckpt
from engram_ff.model import memory as context_memory
from engram_ff.state import queries, runs

log = logging.getLogger(__name__)

# What stops a call without a traceback: a database in trouble, a full disk, no memory for the model. The
# messages stay stored, and the next call learns them.
NOT_LEARNED = (UserError, OSError, RuntimeError, MemoryError)
# The most text one call reads, newest first: 35 kB, a day of chat, took 1.6 s on one core with the daemon
# preset, so this takes under a minute; a backlog's older messages wait for their nights.
MAX_BYTES = 1 << 20
FORMAT = 1


@dataclass
class Learned:
    checkpoint_id: int  # the checkpoint the overlay is over
    through: int  # the newest message id the memory has read
    new_bytes: int  # what this call read
    bpb: float  # their cost before it learned them (prequential), bits per byte; nan if it read nothing
    rebuilt: bool  # the overlay was built afresh from the checkpoint (none, stale or unusable before)
    refused: str | None = None  # why what it learned was not kept (_refusal); None: kept


def learn_today(db, config: Config) -> Learned | None:
    """Let the current model's memory read the messages it has not learned yet, and keep what changed in
    today.pt. None where there is nothing to learn onto: no model yet, or one without a context memory."""
    from engram_ff.daemon.checkpoints import current_model

    found = current_model(db)
    memory = None if found is None else getattr(found[0], "memory", None)
    if found is None or not isinstance(memory, context_memory.ContextMemory):
        return None
    model, row = found
    overlay = overlay_onto(model, config, row)
    trained = runs.trained_through(db)
    if overlay is not None:
        held = b""
        text, through = queries.newest_text_after(db, max(overlay["through"], trained), MAX_BYTES)
    else:  # the night's held-out slice, each message between its neighbours, then everything after the night
        held = queries.deferred_text(db, runs.deferred_through(db), trained)[-MAX_BYTES:]
        text, through = queries.newest_text_after(db, trained, MAX_BYTES - len(held))
    read = b"\n".join(part for part in (held, text) if part)
    if overlay is not None and not read:
        return Learned(row["id"], overlay["through"], 0, math.nan, False)
    base = {name: buffer.clone() for name, buffer in memory.named_buffers()}
    bpb = context_memory.learn(model, read) if len(read) >= 2 else math.nan
    before = {} if overlay is None else overlay["changes"]
    refused = _refusal(db, config, model, row) if read else None
    changes = before if refused is not None else _changed_rows(memory, base, before)
    write_overlay(config, row, through, changes)  # a refused call still moves `through`: it is not read again
    learned = Learned(row["id"], through, len(read), bpb, overlay is None, refused)
    if read:  # after the file: a row never names learning that is not there
        runs.record_by_day(
            db,
            checkpoint_id=row["id"],
            through_id=through,
            bytes=len(read),
            bpb=None if math.isnan(bpb) else bpb,
            rebuilt=int(learned.rebuilt),
            refused=refused,
        )
    return learned


def _refusal(db, config: Config, model, row: dict) -> str | None:
    """Why the memory's learning in this call is not kept, or None: the gate's canary and facts checks (the two
    a day's learning can fail in a second, daemon/probes.py `canary_and_facts`), with the model as it has now
    learned against the checkpoint's own newest probe pass, at the gate's tolerances. The overlay is never
    promoted, so this is its gate: text that makes what the checkpoint knew worse (a paste of random
    characters made a known fact's answer 3.9 bits per byte worse in tests/test_today.py, before a memory pass
    could take at most half of a set) stays out of `ask`'s answers, and the night, whose candidate the gate
    judges whole, learns it or not. Nothing is lost: the
    messages stay stored."""
    reference = runs.newest_pass(db, row["id"])
    if not reference:
        return None
    model.eval()
    decision = gate.decide(probes.canary_and_facts(db, config, model), reference, config)
    return None if decision["decision"] == "promoted" else decision["reason"]


def learn_now(config: Config) -> Learned | None:
    """learn_today on the data directory's database, opened for it; None where learn_by_day is off. Raises
    one of NOT_LEARNED where it cannot learn."""
    from engram_ff.state.db import open_db

    if not config.learn_by_day:
        return None
    with database_errors(config.db_path):
        db = open_db(config.db_path)
        try:
            return learn_today(db, config)
        finally:
            db.close()


def model_for_answers(db, config: Config):
    """The current model as `ask` and `generate` use it: the checkpoint, plus what its memory learned since
    (today.pt) when learn_by_day is on. (model, checkpoint row), or None where no model exists yet."""
    from engram_ff.daemon.checkpoints import current_model

    found = current_model(db)
    if found is not None and config.learn_by_day and getattr(found[0], "memory", None) is not None:
        overlay_onto(found[0], config, found[1])
    return found


def overlay_onto(model, config: Config, row: dict) -> dict | None:
    """today.pt put into the model, if it is over the checkpoint `row` and fits; else None, the model as it was."""
    overlay = read_overlay(config, row)
    if overlay is None:
        return None
    try:
        apply(model, overlay)
    except ValueError as exc:
        log.warning("ignoring %s (%s): it is built again from the messages", config.today_path, exc)
        return None
    return overlay


def read_overlay(config: Config, row: dict) -> dict | None:
    """today.pt if it is over the checkpoint `row` and whole; None (a log line where it is unusable, not
    where it is merely absent or over an older checkpoint: the next call builds it again)."""
    path = config.today_path
    if not path.exists():
        return None
    try:
        payload = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError as exc:
        log.warning("ignoring the day's learning in %s (%s): it is built again from the messages", path, exc)
        return None
    if payload.get("format") != FORMAT or not isinstance(payload.get("changes"), dict):
        log.warning("ignoring %s: not a day's learning this engram-ff wrote; it is built again", path)
        return None
    if (payload.get("checkpoint_id"), payload.get("checkpoint_sha256")) != (row["id"], row["sha256"]):
        return None  # over an earlier model: the night has learned its messages for good
    return payload


def apply(model, overlay: dict) -> None:
    """The overlay's rows put into the model's memory tables. A row set that does not fit the tables (another
    preset) raises ValueError: the model is left as it was."""
    buffers = dict(model.memory.named_buffers())
    checked = []
    for name, (rows, values) in overlay["changes"].items():
        table = buffers.get(name)
        if (
            table is None
            or rows.dtype != torch.long
            or rows.ndim != 1
            or (len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < len(table))
            or values.dtype != table.dtype
            or values.shape != (len(rows), *table.shape[1:])
        ):
            raise ValueError(f"the day's learning does not fit this model's memory ({name})")
        checked.append((table, rows, values))
    for table, rows, values in checked:
        table[rows] = values


def _changed_rows(memory, base: dict, before: dict) -> dict:
    """{table name: (rows, their values now)}: every row this call changed (against `base`, the tables before
    it) and every row the overlay held before (`before`), so the overlay stays over the checkpoint itself."""
    changes = {}
    for name, table in memory.named_buffers():
        if table.ndim == 0:
            continue
        differs = (table != base[name]).reshape(len(table), -1).any(-1)
        if name in before:
            differs[before[name][0]] = True
        rows = differs.nonzero().squeeze(1)
        if len(rows):
            changes[name] = (rows, table[rows].clone())
    return changes


def write_overlay(config: Config, row: dict, through: int, changes: dict) -> None:
    ckpt.save_checkpoint(
        config.today_path,
        dict(
            format=FORMAT,
            checkpoint_id=row["id"],
            checkpoint_sha256=row["sha256"],
            through=through,
            changes=changes,
        ),
    )


def main() -> int:
    """`python -m engram_ff.daemon.today [DAEMON_PID]`: one call of learn_today, its configuration from
    ENGRAM_FF_* variables (as the update child's). Exit 0 whether or not there was anything to learn."""
    from engram_ff.daemon.child import stop_with_parent
    from engram_ff.daemon.logs import setup_logging
    from engram_ff.daemon.sandbox import adapt_torch

    config = load_config()
    setup_logging(config.log_level)
    adapt_torch()
    torch.set_num_threads(1)  # a background task while the person is about: one core
    if len(sys.argv) > 1 and not stop_with_parent(int(sys.argv[1])):
        return 0
    try:
        learned = learn_now(config)
    except NOT_LEARNED as exc:
        log.error("not learned by day (%s); the messages are stored, and the next call learns them", exc)
        return 1
    if learned is not None and learned.refused:
        log.warning(
            "not kept by day: %d bytes through message %d, %s; the night learns them, under the gate",
            learned.new_bytes,
            learned.through,
            learned.refused,
        )
    elif learned is not None and learned.new_bytes:
        log.info(
            "learned by day: %d bytes%s at %.3f bits per byte before learning them (through message %d)",
            learned.new_bytes,
            ", the overlay built afresh" if learned.rebuilt else "",
            learned.bpb,
            learned.through,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
