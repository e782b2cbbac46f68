"""Read MNIST's IDX files (raw or .gz): any files a user points at; nothing is ever downloaded.

An IDX file is two zero bytes, a type code, the number of dimensions, each dimension as a big-endian
int32, then the values in C order.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
SPLITS = {"train": "train", "test": "t10k"}


class IDXError(ValueError):
    """A file that is not a well-formed IDX file; the message names the file."""


def read_idx(path: str | Path) -> torch.Tensor:
    """The array stored in one IDX file, raw or gzip-compressed (told apart by content, not name)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such IDX file")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise IDXError(f"{path}: broken gzip data ({e})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in DTYPES:
        raise IDXError(f"{path}: not an IDX file (magic number {raw[:4].hex() or 'missing'})")
    ndim, dtype = raw[3], np.dtype(DTYPES[raw[2]])
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise IDXError(f"{path}: truncated header ({len(raw)} of {header} bytes)")
    shape = struct.unpack(f">{ndim}i", raw[4:header])
    expected = header + dtype.itemsize * int(np.prod(shape))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "trailing bytes"
        raise IDXError(f"{path}: {what}: {len(raw)} bytes, but shape {shape} needs {expected}")
    values = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(values.astype(dtype.newbyteorder("=")))


def find_file(data_dir: str | Path, name: str) -> Path:
    """`name` or `name.gz` in data_dir."""
    for candidate in (Path(data_dir) / name, Path(data_dir) / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{Path(data_dir) / name}[.gz]: no such IDX file")


def load_split(data_dir: str | Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST-style images (N, 28, 28) uint8 and labels (N,) int64 of split 'train' or 'test'."""
    prefix = SPLITS[split]
    image_path = find_file(data_dir, f"{prefix}-images-idx3-ubyte")
    label_path = find_file(data_dir, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise IDXError(f"{image_path}: expected (N, rows, cols) images, got shape {tuple(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise IDXError(f"{label_path}: {tuple(labels.shape)} labels for {len(images)} images in {image_path}")
    return images, labels.long()
