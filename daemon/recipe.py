"""How a night trains: how many steps, what it replays, how batches mix new and old text, and which
layers learn how fast. The numbers behind each default are in bench/results/incremental.md."""

from __future__ import annotations

import torch

from engram_ff.daemon.config import Config
from engram_ff.model.train import BPTrainer, FFTrainer, byte_batches
from engram_ff.state import queries


def replay_sample(db, n_bytes: int, before_id: int, seed: int) -> bytes:
    """Random spans of older training text, so that learning today does not overwrite last month."""
    if n_bytes <= 0 or before_id <= 0:
        return b""
    return queries.sample_text(db, n_bytes, max_id=before_id, split="train", seed=seed)


def step_budget(config: Config, text_bytes: int) -> int:
    """`update_epochs` passes over the night's text, within [update_min_steps, update_max_steps]."""
    epoch_steps = config.update_epochs * text_bytes / (config.batch_size * config.seq_len)
    return min(config.update_max_steps, max(config.update_min_steps, round(epoch_steps)))


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


def update_batches(new_text: bytes, replay: bytes, config: Config, generator: torch.Generator, world: int = 1):
    """(batches, replayed rows per batch). Windows come from new and replayed text together; only when
    layers treat replay differently is each batch split into new rows first, then replayed ones in
    proportion to the bytes, so a layer can take its loss on the new rows alone. Over `world` data-parallel
    ranks both counts are multiples of world, so that every rank's shard holds the same share of each."""
    text = new_text + replay
    if config.replay_layers == "all" or min(len(new_text), len(replay)) < 2:
        return byte_batches(text, config.batch_size, config.seq_len, generator), 0
    share = world * round(config.batch_size * len(replay) / len(text) / world)
    replay_rows = min(config.batch_size - world, max(world, share))
    seq_len = min(config.seq_len, len(new_text) - 1, len(replay) - 1)
    new = byte_batches(new_text, config.batch_size - replay_rows, seq_len, generator)
    old = byte_batches(replay, replay_rows, seq_len, generator)
    return ((torch.cat([xn, xo]), torch.cat([yn, yo])) for (xn, yn), (xo, yo) in zip(new, old)), replay_rows
