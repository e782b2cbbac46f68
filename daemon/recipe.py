"""How a night trains: how many steps, what it replays, how batches mix new and old text, and which
layers learn how fast. The numbers behind each default are in bench/results/incremental.md."""

from __future__ import annotations

import random

import torch

from engram_ff.daemon.config import Config
from engram_ff.model.scoring import continuation_nats
from engram_ff.model.train import BPTrainer, FFTrainer, byte_batches
from engram_ff.state import queries, runs

REHEARSAL_SCORED_BYTES = 1 << 20  # the sessions scored for rehearsal: a backlog night scores its first MiB


def replay_size(config: Config, new_bytes: int, history_bytes: int) -> int:
    """Bytes of older text to replay: `replay_ratio` per new byte, and at least `replay_min_bytes`, the floor
    that makes a small day's batches mostly history. The floor never exceeds the history (it would only
    repeat it); the ratio does, as it always has, so a normal day's mix stays the study's 2:1."""
    if history_bytes <= 0:
        return 0
    return max(int(config.replay_ratio * new_bytes), min(config.replay_min_bytes, history_bytes))


def replay_sample(db, n_bytes: int, before_id: int, seed: int) -> bytes:
    """Random spans of older training text, so that learning today does not overwrite last month."""
    if n_bytes <= 0 or before_id <= 0:
        return b""
    return queries.sample_text(db, n_bytes, max_id=before_id, split="train", seed=seed)


# A night's text the memory rereads at most (reread_text): more than a day of chat (35 kB in bench learning,
# 10-150 kB on the year's ordinary nights), so nearly all are reread whole. It was 1 MiB, and in the compressed year
# night 30 took 2.83 times night 10 for the same new text: its rereads reached 1 MiB of the backlog night after
# the burst (bench/results/year-30-memory.md); with 128 KiB, 1.24 times (year-30-reread.md). A night's cost
# should follow its own text, not the history's largest nights.
REREAD_NIGHT_MAX_BYTES = 128 << 10
# The replay the memory reads at most (memory_reads_replay). A day's replay is twice its text, so a night of
# up to 512 KiB new reads all of it, as before; but the year benchmark's burst night (7.5 MB new) had the memory
# read its 15 MB of replay too, and the night took 808 s against 12-16 s for an ordinary one (`engram-ff bench
# year`, night 150, its first run with the context memory: bench/results/year-memory-partial.md).
MEMORY_REPLAY_MAX_BYTES = 1 << 20


def reread_text(db, run_id: int, nights: int, night_max_bytes: int = REREAD_NIGHT_MAX_BYTES) -> bytes:
    """What earlier nights trained on, for the context memory to read again: the nights 1, 2, 4, ...,
    2^(nights - 1) promoted nights back, so that a day is reread on a spaced schedule and each reading
    finds the memory's rows for it as the layers below and the newer text have left them (settling what
    has slipped). Memory-only, 13 days after a fact day, 1, 2, 4 and 8 nights back kept 12 of 12 facts
    against 11, answers at 0.01 bits per byte against 0.05, and predicted new days as well (2.238 bits
    per byte either way; bench/results/memory-sweep-7.md).

    A night larger than `night_max_bytes` (a backlog's, up to update_max_new_mib) is reread as one
    stretch of that size, at a place that differs from one rereading to the next: the memory read about
    36 kB a second in a development measurement (the daemon preset, 2 idle cores, 300 kB of the plays),
    so five 16 MiB nights in full would take it 40 minutes, and five 128 KiB stretches 18 seconds."""
    lags = [1 << i for i in range(nights)]
    if not lags:
        return b""
    earlier = runs.promoted_updates_before(db, run_id, lags[-1])
    parts = []
    for lag in lags:
        if lag > len(earlier):
            break
        text = queries.night_text(db, earlier[lag - 1])
        if len(text) > night_max_bytes:
            start = random.Random(run_id * 64 + lag).randrange(len(text) - night_max_bytes + 1)
            text = text[start : start + night_max_bytes]
        if text:
            parts.append(text)
    return b"\n\n".join(parts)


def step_budget(config: Config, text_bytes: int, *, matured: bool) -> int:
    """`update_epochs` passes over the night's text (new + replay), at least `update_min_steps` and at most
    `update_max_steps`; and, once a model exists, at most `update_max_passes` passes, which wins over the
    minimum: a 38-byte day with 76 bytes of replay took 300 steps, 4,757 passes, and the held-out bits per
    byte went from 4.53 to 10.69 (issue 12). A fresh model has nothing to forget, and its first night is how
    it learns its first days at all (the demo's 4.3 KB of training text take 300 steps, 285 passes, to learn
    "Who is Victor?" to 0.0005 bits per byte). The cap is 8 and not 4 so that a normal day trains as the
    incremental study ran it: 300 steps over a play with 2:1 replay (245 KB or more) are under 8 passes."""
    window = min(config.seq_len, max(1, text_bytes - 1))  # byte_batches shortens windows to fit short text
    per_pass = text_bytes / (config.batch_size * window)  # steps that see each byte once on average
    steps = max(config.update_min_steps, config.update_epochs * per_pass)
    if matured:
        steps = min(steps, config.update_max_passes * per_pass)
    return max(1, min(config.update_max_steps, round(steps)))


def retry_rate(rejected_in_a_row: int) -> float:
    """The learning-rate multiplier of an update after `rejected_in_a_row` rejected ones: halved for each.
    A rejected night's text stays in the next night's (nothing is lost), so text that made one candidate
    worse would make every later one worse too, and the model would never learn again: in the quick year
    (`engram-ff bench year --quick`) a junk day's candidate was rejected and so were all five nights after
    it. Halving the rate each time makes the retry gentler until a candidate moves little enough to pass;
    the night after a promotion is back at the full rate."""
    return 0.5**rejected_in_a_row


def plan_layers(
    trainer: FFTrainer | BPTrainer, config: Config, *, matured: bool, replay_rows: int, rehearse_rows: int = 0
) -> None:
    """Per-layer guards against forgetting: slow every layer below the top once matured (either trainer);
    with FF also freeze the lowest layers, which then need no backward pass, and let only some layers'
    losses see the replayed rows (after the new ones) or the rehearsed rows (last of each batch), which
    backprop's one loss cannot."""
    n_layers = len(trainer.layer_lr)
    if config.freeze_layers >= n_layers:
        raise ValueError(f"freeze_layers: {config.freeze_layers} would freeze all {n_layers} layers of the model")
    if matured:
        if config.freeze_layers:
            assert isinstance(trainer, FFTrainer), "configuration allows freeze_layers only with trainer = 'ff'"
            trainer.freeze(config.freeze_layers)
        for i in range(config.freeze_layers, n_layers - 1):
            trainer.layer_lr[i] = config.lower_lr
    rows = config.batch_size - rehearse_rows
    if replay_rows and config.replay_layers != "all":
        assert isinstance(trainer, FFTrainer), "configuration allows replay_layers only with trainer = 'ff'"
        skip = range(n_layers - 1, n_layers) if config.replay_layers == "lower" else range(n_layers - 1)
        for i in skip:
            trainer.loss_rows[i] = rows - replay_rows
    if rehearse_rows and config.rehearse_layers == "top":
        assert isinstance(trainer, FFTrainer), "configuration allows rehearse_layers = 'top' only with trainer = 'ff'"
        for i in range(n_layers - 1):
            trainer.loss_rows[i] = min(rows, trainer.loss_rows[i] or rows)


def rehearsal(model, new_text: bytes, fraction: float) -> bytes:
    """The night's sessions that the current model finds most surprising, per byte: what it has not learned.

    A fact said once is a short session whose every specific (a name, a number) the model cannot predict,
    while ordinary chat is mostly predictable language; rehearsing the top `fraction` of the distinct
    sessions gives the fact many exposures in one night while the rest of the text keeps its few. Scored
    before training, each session from the start of a line, as state/text.py writes sessions apart.
    Repeated sessions count once, so a fact said 8 times does not crowd out one said once."""
    pieces = new_text[:REHEARSAL_SCORED_BYTES].split(b"\n\n")
    sessions = [s for s in dict.fromkeys(p.strip(b"\n") for p in pieces) if len(s) >= 2]
    if not sessions or fraction <= 0:
        return b""
    surprise = {s: continuation_nats(model, b"\n", s) for s in sessions}  # mean nats per byte
    ranked = sorted(sessions, key=surprise.__getitem__, reverse=True)
    return b"\n\n".join(ranked[: max(1, round(fraction * len(ranked)))])


def rehearsal_rows(config: Config, rehearse: bytes, world: int = 1) -> int:
    """Rows of each batch that rehearse: `rehearse_rows`, a multiple of the ranks, none without text."""
    if len(rehearse) < 2 or not config.rehearse_rows:
        return 0
    return max(world, world * round(config.rehearse_rows / world))


def update_batches(
    new_text: bytes,
    replay: bytes,
    config: Config,
    generator: torch.Generator,
    world: int = 1,
    rehearse: bytes = b"",
):
    """(batches, replayed rows per batch). Windows come from new and replayed text together; only when
    layers treat replay differently is each batch split into new rows first, then replayed ones in
    proportion to the bytes, so a layer can take its loss on the new rows alone. Rehearsal rows (see
    `rehearsal`) come last, so that `rehearse_layers = "top"` can keep them from the lower layers' losses.
    Over `world` data-parallel ranks every count is a multiple of world, so that every rank's shard holds
    the same share of each."""
    n_rehearse = rehearsal_rows(config, rehearse, world)
    rows = config.batch_size - n_rehearse
    batches, replay_rows = _new_and_replay(new_text, replay, config, rows, generator, world)
    if not n_rehearse:
        return batches, replay_rows
    again = byte_batches(rehearse, n_rehearse, config.seq_len, generator)

    def joined():
        for (x, y), (xr, yr) in zip(batches, again):
            t = min(x.shape[1], xr.shape[1])  # a short rehearsal set has short windows: the batch takes theirs
            yield torch.cat([x[:, :t], xr[:, :t]]), torch.cat([y[:, :t], yr[:, :t]])

    return joined(), replay_rows


def _new_and_replay(new_text: bytes, replay: bytes, config: Config, rows: int, generator, world: int):
    text = bytearray().join((new_text, replay))  # one copy, which the batches share rather than copy again
    if config.replay_layers == "all" or min(len(new_text), len(replay)) < 2:
        return byte_batches(text, rows, config.seq_len, generator), 0
    share = world * round(rows * len(replay) / len(text) / world)
    replay_rows = min(rows - world, max(world, share))
    seq_len = min(config.seq_len, len(new_text) - 1, len(replay) - 1)
    new = byte_batches(new_text, rows - replay_rows, seq_len, generator)
    old = byte_batches(replay, replay_rows, seq_len, generator)
    return ((torch.cat([xn, xo]), torch.cat([yn, yo])) for (xn, yn), (xo, yo) in zip(new, old)), replay_rows
