"""The IDX loader on files the tests write: good raw and .gz files, and each way a file can be bad."""

import gzip
import struct

import pytest
import torch

from engram_ff.model.images.idx import IDXError, load_split, read_idx


def idx_bytes(values: torch.Tensor, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, values.ndim]) + struct.pack(f">{values.ndim}i", *values.shape)
    return header + values.numpy().astype(">u1" if type_code == 0x08 else ">i4").tobytes()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (4, 3, 5), dtype=torch.uint8)


def test_reads_raw_and_gzip(tmp_path, images):
    (tmp_path / "a.idx").write_bytes(idx_bytes(images))
    (tmp_path / "b.idx.gz").write_bytes(gzip.compress(idx_bytes(images)))
    assert torch.equal(read_idx(tmp_path / "a.idx"), images)
    assert torch.equal(read_idx(tmp_path / "b.idx.gz"), images)


def test_reads_big_endian_ints(tmp_path):
    values = torch.tensor([[1, -2], [70000, 3]], dtype=torch.int32)
    (tmp_path / "i.idx").write_bytes(idx_bytes(values, type_code=0x0C))
    assert read_idx(tmp_path / "i.idx").tolist() == values.tolist()


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.idx"):
        read_idx(tmp_path / "nothere.idx")


def test_bad_magic_names_the_file(tmp_path, images):
    path = tmp_path / "bad.idx"
    path.write_bytes(b"\x12\x34" + idx_bytes(images)[2:])
    with pytest.raises(IDXError, match=r"bad\.idx: not an IDX file \(magic number 1234"):
        read_idx(path)


@pytest.mark.parametrize("compress", [False, True])
def test_truncated_file_names_it(tmp_path, images, compress):
    data = idx_bytes(images)[:-7]
    path = tmp_path / "short.idx"
    path.write_bytes(gzip.compress(data) if compress else data)
    with pytest.raises(IDXError, match=r"short\.idx: truncated: 69 bytes, but shape \(4, 3, 5\) needs 76"):
        read_idx(path)


def test_cut_gzip_stream_names_the_file(tmp_path, images):
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:-12])
    with pytest.raises(IDXError, match=r"cut\.idx\.gz: broken gzip data"):
        read_idx(path)


def test_load_split_finds_raw_or_gz_and_checks_counts(tmp_path, images):
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(torch.tensor([1, 2, 3, 4], dtype=torch.uint8)))
    x, y = load_split(tmp_path, "train")
    assert torch.equal(x, images) and y.tolist() == [1, 2, 3, 4] and y.dtype == torch.int64
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(torch.tensor([1, 2], dtype=torch.uint8)))
    with pytest.raises(IDXError, match=r"t10k-labels-idx1-ubyte: \(2,\) labels for 4 images"):
        load_split(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match=r"nowhere/train-images-idx3-ubyte\[\.gz\]"):
        load_split(tmp_path / "nowhere", "train")
