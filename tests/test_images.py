"""The image benchmark end to end on a tiny synthetic IDX set, so CI without Fashion-MNIST runs it too."""

import gzip
import struct

import torch

from engram_ff.bench import images


def write_idx(path, values: torch.Tensor) -> None:
    header = bytes([0, 0, 0x08, values.ndim]) + struct.pack(f">{values.ndim}i", *values.shape)
    path.write_bytes(gzip.compress(header + values.numpy().tobytes()))


def test_bench_images_on_a_tiny_synthetic_set(tmp_path, capsys):
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 300), ("t10k", 100)):
        labels = torch.randint(0, 10, (n,), generator=g)
        pictures = (torch.rand(n, 28, 28, generator=g) * 60 + labels[:, None, None] * 19).to(torch.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", pictures)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels.to(torch.uint8))
    out = tmp_path / "results"
    argv = ["--quick", "--data-dir", str(tmp_path), "--results-dir", str(out), "--epochs", "2", "--hidden", "32x32"]
    assert images.main(argv) == 0
    report = (out / "images-quick.md").read_text()
    for row in ("| FF (goodness) |", "| FF (readout) |", "| BP |", "FF seconds per epoch / BP's"):
        assert row in report
    assert (out / "images-quick.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "test error" in capsys.readouterr().out


def test_bench_images_names_a_missing_file(tmp_path, capsys):
    assert images.main(["--quick", "--data-dir", str(tmp_path), "--results-dir", str(tmp_path)]) == 2
    assert f"{tmp_path}/train-images-idx3-ubyte[.gz]: no such IDX file" in capsys.readouterr().err
