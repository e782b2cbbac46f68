"""The checkpoint lifecycle on the database's side: which one is current, saving, pruning, resuming,
and taking over the files of a database that was lost.

Crash safety comes from ordering. A checkpoint file is complete on disk (atomic rename, sha256 beside
it) before the row that names it is committed; a run is 'ok' only after its final checkpoint's row
is; so the current model, the newest good final checkpoint, is always one that loads. The file format
itself is model/checkpoint.py's.

The files outlive the database. Each name is unique (a random part: a new database's run ids start
again at 1), each file's metadata says what it is (kind, when, and the last message it trained
through, by a key that survives re-ingesting), and nothing is deleted because the database does not
know it: only rows the database prunes, temp files, and files it named in `checkpoint_writes`
before a write that was killed. A database that knows no checkpoint adopts the files it finds.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from engram_ff.daemon.config import Config
from engram_ff.daemon.layout import FOLDER_MARKER
from engram_ff.model import checkpoint as ckpt
from engram_ff.model.counts import ContextCounts
from engram_ff.model.lm import FFLM, PRESETS, memory_of
from engram_ff.model.match import MatchModel
from engram_ff.model.train import TRAINERS, BPTrainer, FFTrainer
from engram_ff.model.window_mlp import WindowMLP
from engram_ff.state import queries, runs

log = logging.getLogger(__name__)


class TrainerMismatch(ValueError):
    """The checkpoint holds another trainer's optimiser state than the configuration asks for."""


@dataclass
class Loaded:
    model: FFLM | WindowMLP  # what a checkpoint holds; the daemon makes FFLMs
    trainer: FFTrainer | BPTrainer
    checkpoint_id: int | None  # None: a fresh model
    meta: dict


def fresh(config: Config) -> Loaded:
    """The first model, drawn from config.model_seed: torch seeds each process at random, so without a seed two
    runs of the same nights on the same text started from different weights and ended up to 0.03 bits per byte
    apart (bench learning --quick, run twice). The process's own random state is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(config.model_seed)
        model = FFLM(PRESETS[config.model_preset])
    return Loaded(model, TRAINERS[config.trainer](model), None, {})


def upgrade(model: FFLM | WindowMLP, config: Config) -> None:
    """A model saved before the context memory existed (model/memory.py) gets the preset's, empty; a memory saved
    before its counts (model/counts.py) gets the preset's counts, empty; a model saved before the match model
    (model/match.py) gets it. None has a weight to learn first, so the model the gate compares with is judged as a
    new one would be: the memory and the counts learn from the next night, the match model from what it reads."""
    preset = PRESETS[config.model_preset]
    if not isinstance(model, FFLM):
        return
    if preset.match and model.match is None:
        model.config = replace(model.config, match=True)
        model.match = MatchModel()
        log.info("the current model predates the match model: it gets one, which copies what the text it reads repeats")
    if not preset.memory_bits:
        return
    if model.memory is None:
        memory_fields = {f.name: getattr(preset, f.name) for f in fields(preset) if f.name.startswith("memory_")}
        model.config = replace(model.config, **memory_fields)
        model.memory = memory_of(model.config)
        log.info("the current model predates the context memory: it gets an empty one, which learns from tonight")
    elif (
        model.memory.counts is None
        and preset.memory_count_orders
        and max(preset.memory_count_orders) <= max(model.memory.orders)
    ):
        model.config = replace(
            model.config,
            memory_count_orders=preset.memory_count_orders,
            memory_count_bits=preset.memory_count_bits,
        )
        model.memory.counts = ContextCounts(preset.memory_count_orders, preset.memory_count_bits)
        log.info("the current model's memory predates its counts: it gets empty ones, which count from tonight")


def restore(saved: ckpt.Saved, checkpoint_id: int, trainer: str) -> Loaded:
    """A checkpoint's model and its trainer state, which must be the configured trainer's: FF keeps an
    optimiser per layer, BP one for the whole model, and neither can continue the other's."""
    if saved.trainer_kind != trainer:
        raise TrainerMismatch(
            f"trainer: the current checkpoint holds {saved.trainer_kind!r} trainer state but the configuration "
            f"asks for {trainer!r}; set trainer = {saved.trainer_kind!r}, or use a new data_dir to start afresh"
        )
    state = TRAINERS[trainer](saved.model)
    assert saved.trainer_state is not None, "load_model gives a trainer kind only with the trainer's state"
    state.load_state_dict(saved.trainer_state)
    return Loaded(saved.model, state, checkpoint_id, saved.meta)


def newest_loadable(db, rows: list[dict], config: Config) -> Loaded | None:
    """The first of `rows` (newest first) that loads, checked against the digest its row recorded.

    A file whose bytes differ from that digest, or that does not load, is marked 'corrupt' and skipped;
    a 'corrupt' one that matches again (restored from a backup) is good again. A file that cannot be
    read now is skipped and left as it is: that is no evidence about its bytes, and it is tried again
    next time. The `.sha256` beside a file is for tools without the database: a lost one is rewritten."""
    for i, row in enumerate(rows):
        fallback = "falling back to the one before it" if i + 1 < len(rows) else "and there is none before it"
        try:
            saved = ckpt.load_model(row["path"], sha256=row["sha256"])
        except ckpt.CheckpointUnreadable as exc:
            log.error("checkpoint %s cannot be read now (%s); %s", row["path"], exc, fallback)
            continue
        except ckpt.CheckpointError as exc:
            if row["status"] != "corrupt":
                log.error("checkpoint %s is unusable (%s); %s", row["path"], exc, fallback)
                runs.set_checkpoint_status(db, row["id"], "corrupt")
            continue
        if row["status"] == "corrupt":
            log.warning("checkpoint %s matches its recorded sha256 again: good again", row["path"])
            runs.set_checkpoint_status(db, row["id"], "good")
        _restore_digest_file(row["path"], row["sha256"])
        upgrade(saved.model, config)
        return restore(saved, row["id"], config.trainer)
    return None


def _restore_digest_file(path: str, sha256: str) -> None:
    """A lost, wrong or foreign `.sha256` (a FIFO, a folder: issue #20.3) is written again; os.replace
    takes the place of anything but a folder, which is reported and left."""
    if ckpt.recorded_digest(path) == sha256:
        return
    digest = ckpt.digest_path(path)
    if digest.is_dir() and not digest.is_symlink():
        log.warning("%s is a folder, not a digest file: left as it is; the checkpoint itself is intact", digest)
        return
    try:
        ckpt.write_digest(path, sha256)
        log.warning("rewrote %s from the digest the database recorded", ckpt.digest_path(path))
    except OSError as exc:
        log.warning("cannot rewrite %s (%s); the checkpoint itself is intact", ckpt.digest_path(path), exc)


def load_current(db, config: Config) -> Loaded | None:
    """The current model: the newest final checkpoint that loads (after adopting an earlier database's
    files, if this database knows none)."""
    adopt(db, config.checkpoint_dir)
    return newest_loadable(db, runs.current_candidates(db), config)


def current_model(db) -> tuple[FFLM | WindowMLP, dict] | None:
    """The current model for inference (`ask`, `generate`) and its checkpoint row, whatever trainer made
    it. Read-only: a file that does not load is skipped with a log line and left for the next update to
    mark corrupt."""
    for row in runs.good_checkpoints(db, "final"):
        try:  # by the digest the database recorded: the file beside it may be lost, or not a file at all
            return ckpt.load_model(row["path"], sha256=row["sha256"]).model, row
        except ckpt.CheckpointError as exc:
            log.warning("checkpoint %s is unusable (%s); trying the one before it", row["path"], exc)
    return None


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
    """Name the file in the database, write it, then record its row (which replaces the name)."""
    make_folder(config.checkpoint_dir)
    path = unique_path(config.checkpoint_dir, f"run{run_id:06d}-{kind}-{loaded.trainer.steps:07d}")
    meta = {**meta, "kind": kind, "created_at": _timestamp(time.time())}
    if "last_message_id" in meta:
        meta["trained_through"] = queries.message_key(db, meta["last_message_id"])
    if meta.get("deferred_last_id"):
        meta["deferred_through"] = queries.message_key(db, meta["deferred_last_id"], split="probe")
    runs.begin_checkpoint_write(db, str(path), run_id)
    digest = ckpt.save_model(path, loaded.model, loaded.trainer, meta)
    if status == "candidate":  # before its row: a file the gate has not promoted is never adopted
        verdict_path(path, "candidate").write_text("not promoted by the gate (yet)\n")
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


def make_folder(folder: Path) -> None:
    """The checkpoint folder, marked as engram-ff's when engram-ff creates it."""
    if not folder.is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FOLDER_MARKER).write_text("made by engram-ff; `engram-ff reset` removes this folder\n")


def verdict_path(path: str | Path, verdict: str) -> Path:
    """A small file beside a checkpoint the gate did not promote: `.candidate` until it decides, then
    `.rejected`. Only a database that lost its rows needs them: adopt() takes no such file as a model."""
    return Path(f"{path}.{verdict}")


def settle_files(path: str, *, promoted: bool) -> None:
    """After the gate's decision is committed: a promoted file loses its mark, a rejected one is marked so."""
    candidate = verdict_path(path, "candidate")
    if promoted:
        candidate.unlink(missing_ok=True)
    elif candidate.exists():
        candidate.replace(verdict_path(path, "rejected"))


def unique_path(folder: Path, stem: str) -> Path:
    """stem + 8 random hex digits: a new database's run 1 never lands on an old database's run 1."""
    while True:
        path = folder / f"{stem}-{secrets.token_hex(4)}.pt"
        if not path.exists():
            return path


def prune(db, keep: int, folder: Path) -> None:
    """After an update the gate judged: keep the newest `keep` final checkpoints, and as many rejected ones
    for inspection; no partial one and no unjudged candidate (none is resumable any more, whichever run left
    it); and delete what a killed write left behind: temp files and files named before a write whose row was
    never committed. Any other file the database does not know (an earlier database's, one copied in) is kept
    and said so: it may be the only copy of a model."""
    stale = runs.good_checkpoints(db, "final")[keep:] + runs.good_checkpoints(db, "partial")
    stale += runs.checkpoints_with_status(db, "final", "rejected")[keep:]
    stale += runs.checkpoints_with_status(db, "final", "candidate")
    for row in stale:
        runs.set_checkpoint_status(db, row["id"], "pruned")
        for path in _with_companions(row["path"]):
            path.unlink(missing_ok=True)
    for kind in ("partial", "final"):  # a prune killed between marking a row and unlinking its file
        for row in runs.checkpoints_with_status(db, kind, "pruned"):
            for path in _with_companions(row["path"]):
                path.unlink(missing_ok=True)
    for row in runs.good_checkpoints(db, "final"):  # a promotion killed before settle_files took the mark off
        verdict_path(row["path"], "candidate").unlink(missing_ok=True)
    for name in runs.unfinished_checkpoint_writes(db):
        if Path(name).exists():
            log.info("removing %s, left by an interrupted checkpoint write", name)
        for path in _with_companions(name):
            path.unlink(missing_ok=True)
        runs.forget_checkpoint_write(db, name)
    for path in folder.glob(".*.tmp"):
        log.info("removing %s, left by an interrupted checkpoint write", path)
        path.unlink(missing_ok=True)
    known = {Path(path).name for path in runs.checkpoint_paths(db)}
    unknown = sorted(path.name for path in folder.glob("*.pt") if path.name not in known)
    if unknown:
        log.info(
            "keeping %d checkpoint file(s) in %s that this database did not write: %s",
            len(unknown),
            folder,
            ", ".join(unknown),
        )


def _with_companions(path: str) -> list[Path]:
    """A checkpoint file and the small files beside it: its digest and the gate's mark."""
    return [Path(path), ckpt.digest_path(path), verdict_path(path, "candidate"), verdict_path(path, "rejected")]


def adopt(db, folder: Path) -> None:
    """A database that knows no checkpoint (new, or made again after the old one was lost) takes over the
    checkpoint files it finds: every one whose bytes match its `.sha256` is recorded, oldest first, so
    the newest final one is the current model and the usual pruning applies to the rest.

    What "continue" means with new message ids: the new database read the same files again, so the
    messages are the same but their ids are not. The final checkpoint's metadata names the last message
    it trained through by (day, hash of the raw line), which is the same in any database; every message
    up to that one's new id counts as trained, so the next update trains on what came after it. Files
    are read in path order, as Engram's daily files were written, so this is the same set of messages
    when each day has one file; otherwise a few may be trained twice or only replayed. A checkpoint
    written before its metadata held that key counts everything already ingested as trained. The probe
    split's progress is named the same way (`deferred_through`); a checkpoint written before the rolling
    hold-out (state/schema.py 0602) trained none of it, so the next nights train it all. Nothing is
    adopted while the database holds no message: there would be nothing to say "trained up to here" by."""
    if runs.knows_checkpoints(db) or not folder.is_dir() or not queries.max_message_id(db):
        return
    found = sorted((f for f in map(_describe, folder.glob("*.pt")) if f is not None), key=lambda f: f["created"])
    if not found:
        return
    finals = [f for f in found if f["kind"] == "final"]
    current = finals[-1] if finals else None
    key = current and current["meta"].get("trained_through")
    through = queries.id_of_key(db, key) if key else (queries.max_message_id(db) if current else 0)
    deferred_key = current and current["meta"].get("deferred_through")  # none before the rolling hold-out:
    deferred = queries.id_of_key(db, deferred_key, split="probe") if deferred_key else 0  # the probe split waits
    runs.adopt_checkpoints(db, found, through, deferred)
    if current is None:
        log.warning("this database knows no checkpoint; %s holds only partial ones: a new model starts", folder)
        return
    log.warning(
        "this database knows no checkpoint, but %s holds %d from an earlier one: continuing from %s; messages up "
        "to id %d here count as trained (%s)",
        folder,
        len(found),
        Path(current["path"]).name,
        through,
        f"through {key['day']}" if key else "all ingested so far: the checkpoint does not say how far it got",
    )


def _describe(path: Path) -> dict | None:
    """What a checkpoint file says it is, if its bytes match its `.sha256` and the gate did not hold it
    back; None (and a log line) if not."""
    for verdict in ("candidate", "rejected"):
        if verdict_path(path, verdict).exists():
            log.warning(
                "not adopting %s: the promotion gate %s it; it is kept",
                path,
                verdict.replace("candidate", "had not judged"),
            )
            return None
    try:
        payload = ckpt.load_checkpoint(path)
    except ckpt.CheckpointError as exc:
        log.warning("not adopting %s (%s); it is kept", path, exc)
        return None
    meta = payload.get("meta") or {}
    return dict(
        path=str(path),
        sha256=ckpt.recorded_digest(path),
        kind=meta.get("kind") or ("partial" if "-partial-" in path.name else "final"),
        steps=(payload.get("trainer") or {}).get("steps", 0),
        created=meta.get("created_at") or _timestamp(path.stat().st_mtime),
        meta=meta,
    )


def _timestamp(seconds: float) -> str:
    """The format of `created_at` in a checkpoint's metadata, to the microsecond: a partial and its run's
    final can be written in the same second."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="microseconds")
