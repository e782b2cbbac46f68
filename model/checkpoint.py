"""Checkpoints that are either whole or refused.

`save_checkpoint` writes a temp file in the target's folder, fsyncs it, renames it over the target
and fsyncs the folder, so a crash leaves the old checkpoint or the new one, never half of one. The
sha256 of the bytes goes beside it in `PATH.sha256` (written the same way, after the checkpoint).
`load_checkpoint` checks that digest before unpickling anything, then loads with weights_only=True,
so a truncated, bit-flipped or foreign file raises CheckpointError naming it. A caller that recorded
the digest elsewhere (the daemon's database) passes it, and then the file beside is not needed: a
lost `.sha256` says nothing about the checkpoint's bytes.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from engram_ff.model.lm import FFLM
    from engram_ff.model.window_mlp import WindowMLP


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, corrupt, or does not match its recorded digest."""


class CheckpointUnreadable(CheckpointError):
    """The file, or the digest it needs, cannot be read now: no evidence about its bytes either way."""


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def digest_path(path: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(path)}.sha256")


def save_checkpoint(path: str | os.PathLike, payload: dict) -> str:
    """Write payload (tensors, state dicts, plain Python values) atomically; return its sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    sha = hashlib.sha256(data).hexdigest()
    _write_atomic(path, data)
    write_digest(path, sha)
    return sha


def write_digest(path: str | os.PathLike, sha: str) -> None:
    """The `sha256sum`-format file beside a checkpoint, written atomically."""
    _write_atomic(digest_path(path), f"{sha}  {Path(path).name}\n".encode())


class NotAFile(OSError):
    """Something other than a regular file (a FIFO, a folder, a device) where a checkpoint file belongs."""


def read_regular(path: str | os.PathLike, limit: int | None = None) -> bytes:
    """A regular file's bytes (at most `limit`). Opened with O_NONBLOCK and its type checked before any
    read: a FIFO at a checkpoint's name hung `ask` for good (issue #20.3); now it is NotAFile."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotAFile(errno.EINVAL, "not a regular file", os.fspath(path))
        os.set_blocking(fd, True)
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read() if limit is None else f.read(limit)
    finally:
        os.close(fd)


def recorded_digest(path: str | os.PathLike) -> str | None:
    """The digest the file beside the checkpoint records, or None if there is none to read (nor anything
    but a small regular file there)."""
    try:
        return read_regular(digest_path(path), 4096).decode().split()[0]
    except (OSError, UnicodeDecodeError, IndexError):
        return None


def load_checkpoint(path: str | os.PathLike, sha256: str | None = None) -> dict:
    """The payload saved at path, after checking its sha256 (the one given, else the file beside it);
    CheckpointError if anything is wrong, CheckpointUnreadable if the file or digest cannot be read."""
    path = Path(path)
    try:
        data = read_regular(path)
    except OSError as e:
        raise CheckpointUnreadable(f"cannot read checkpoint {path}: {e.strerror}") from None
    recorded, source = (sha256, "its recorded digest") if sha256 else (recorded_digest(path), digest_path(path).name)
    if recorded is None:
        raise CheckpointUnreadable(f"checkpoint {path} has no readable digest file {digest_path(path)}")
    actual = hashlib.sha256(data).hexdigest()
    if actual != recorded:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt: sha256 {actual[:12]}... "
            f"but {source} records {recorded[:12]}..."
        )
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # matching digest but not a loadable checkpoint (e.g. written by something else)
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {e}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict payload")
    return payload


FORMAT = 2


@dataclass
class Saved:
    """What a checkpoint holds, whatever format wrote it."""

    model: FFLM | WindowMLP
    trainer_kind: str | None  # "ff", "bp", or None: saved without an optimiser
    trainer_state: dict | None
    meta: dict  # plain values: what the daemon needs to resume and to audit a run
    format: int


def save_model(path: str | os.PathLike, model: FFLM | WindowMLP, trainer=None, meta: dict | None = None) -> str:
    """Write a model (and its trainer's state, to continue training) in the current format; its sha256.

    Format 2 holds: format, kind ("ssm": FFLM, "window": WindowMLP), config, model (the state dict),
    trainer_kind and trainer (the trainer's state dict, or both None), and meta.
    """
    from engram_ff.model.lm import FFLM

    return save_checkpoint(
        path,
        {
            "format": FORMAT,
            "kind": "ssm" if isinstance(model, FFLM) else "window",
            "config": model.config.to_dict(),
            "model": model.state_dict(),
            "trainer_kind": None if trainer is None else trainer.kind,
            "trainer": None if trainer is None else trainer.state_dict(),
            "meta": meta or {},
        },
    )


def load_model(path: str | os.PathLike, sha256: str | None = None) -> Saved:
    """The one loader: rebuild the model a checkpoint holds, of any format; CheckpointError names the file.

    Format 1, written by the daemon up to commit 0ffcbd0, had no "format" and no "kind": it always held
    the SSM model, with "trainer_kind" ("ff" when absent, from before the BP option).
    """
    from engram_ff.model.lm import FFLM, LMConfig
    from engram_ff.model.window_mlp import WindowConfig, WindowMLP

    payload = load_checkpoint(path, sha256)
    version = payload.get("format", 1)
    if version > FORMAT:
        raise CheckpointError(f"checkpoint {path} has format {version}, newer than this engram-ff reads ({FORMAT})")
    builders: dict[str, Callable[[dict], FFLM | WindowMLP]] = {
        "ssm": lambda config: FFLM(LMConfig.from_dict(config)),
        "window": lambda config: WindowMLP(WindowConfig.from_dict(config)),
    }
    try:
        model = builders[payload.get("kind", "ssm")](payload["config"])
        model.load_state_dict(payload["model"])
        trainer_kind = payload.get("trainer_kind", "ff" if version == 1 else None)
        trainer_state = payload.get("trainer")
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path} does not hold a usable model: {e!r}") from None
    return Saved(
        model, trainer_kind if trainer_state is not None else None, trainer_state, payload.get("meta", {}), version
    )
