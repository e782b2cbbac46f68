import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engram_ff.model.checkpoint import FORMAT, CheckpointError, load_checkpoint, load_model, save_model
from engram_ff.model.lm import FFLM, PRESETS
from engram_ff.model.train import FFTrainer, byte_batches


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    model = FFLM(PRESETS["tiny"])
    trainer = FFTrainer(model)
    x, y = next(byte_batches(b"hello world, " * 20, 2, 16, torch.Generator().manual_seed(0)))
    trainer.train_step(x, y)
    path = tmp_path / "ckpt" / "model.pt"
    save_model(path, model, trainer, {"steps": 1, "note": "test"})
    return model, trainer, path


def test_round_trip_restores_weights_trainer_and_metadata(trained):
    model, trainer, path = trained
    saved = load_model(path)
    assert saved.meta == {"steps": 1, "note": "test"} and saved.format == FORMAT and saved.trainer_kind == "ff"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, saved.model.state_dict()[name])
    resumed = FFTrainer(saved.model)
    resumed.load_state_dict(saved.trainer_state)
    assert resumed.steps == trainer.steps
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt", "model.pt.sha256"]  # no temp left


def test_truncated_checkpoint_is_refused_naming_the_file(trained):
    _, _, path = trained
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)


def test_bit_flipped_checkpoint_is_refused_naming_the_file(trained):
    _, _, path = trained
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_missing_checkpoint_or_digest_is_refused(trained, tmp_path):
    _, _, path = trained
    with pytest.raises(CheckpointError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    path.with_name("model.pt.sha256").unlink()
    with pytest.raises(CheckpointError, match="digest"):
        load_checkpoint(path)


def test_generate_cli_streams_from_a_checkpoint(trained):
    _, _, path = trained
    cmd = [
        sys.executable,
        "-m",
        "engram_ff.daemon.cli",
        "generate",
        "--checkpoint",
        str(path),
        "--prompt",
        "hel",
        "--bytes",
        "40",
        "--seed",
        "3",
    ]
    first = subprocess.run(cmd, capture_output=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(b"hel") and len(first.stdout) == 3 + 40 + 1
    assert subprocess.run(cmd, capture_output=True, timeout=60).stdout == first.stdout  # seeded


def test_generate_cli_reports_a_bad_checkpoint_without_traceback(trained):
    _, _, path = trained
    path.write_bytes(path.read_bytes()[:100])
    cmd = [sys.executable, "-m", "engram_ff.daemon.cli", "generate", "--checkpoint", str(path)]
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert str(path) in bad.stderr and "Traceback" not in bad.stderr


OLD = Path(__file__).parent / "data" / "checkpoint-0ffcbd0-ff-tiny.pt"


def test_a_checkpoint_of_the_first_format_still_loads_and_continues():
    """Written by daemon/update.py:save at commit 0ffcbd0 (format 1: no "format", no "kind")."""
    saved = load_model(OLD)
    assert saved.format == 1 and saved.trainer_kind == "ff" and saved.meta["update_steps"] == 3
    with torch.inference_mode():
        logits = saved.model.logits(torch.tensor([list(b"user: Who is Victor?\n")]))[0, -1]
    assert torch.allclose(logits, torch.load(OLD.with_suffix(".logits.pt"), weights_only=True))
    trainer = FFTrainer(saved.model)
    trainer.load_state_dict(saved.trainer_state)
    assert trainer.steps == 3
    trainer.train_step(*next(byte_batches(b"Victor is your brother. " * 8, 2, 16, torch.Generator().manual_seed(0))))
    assert trainer.steps == 4


def test_a_model_saved_without_its_trainer_loads_for_inference(tmp_path):
    model = FFLM(PRESETS["tiny"])
    save_model(tmp_path / "m.pt", model)
    saved = load_model(tmp_path / "m.pt")
    assert saved.trainer_kind is None and saved.trainer_state is None


def test_a_newer_format_is_refused_by_name(tmp_path):
    from engram_ff.model.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "future.pt", {"format": FORMAT + 1, "kind": "ssm"})
    with pytest.raises(CheckpointError, match="newer than this engram-ff reads"):
        load_model(tmp_path / "future.pt")


def test_the_first_model_is_the_same_in_every_process_and_leaves_the_random_state_alone():
    """torch seeds each process at random: the daemon's first model must not depend on it, or two runs of
    the same nights on the same text end apart (bench learning --quick differed by 0.03 bits per byte).
    model_seed draws another."""
    script = (
        "import hashlib, sys, torch\n"
        "from engram_ff.daemon.checkpoints import fresh\n"
        "from engram_ff.daemon.config import load_config\n"
        "state = torch.random.get_rng_state()\n"
        "model = fresh(load_config(environ={}, model_preset='tiny', model_seed=int(sys.argv[1]))).model\n"
        "assert torch.equal(state, torch.random.get_rng_state())\n"
        "print(hashlib.sha256(b''.join(t.numpy().tobytes() for t in model.state_dict().values())).hexdigest())\n"
    )
    digests = [
        subprocess.run([sys.executable, "-c", script, seed], capture_output=True, text=True, check=True).stdout
        for seed in ("0", "0", "1")
    ]
    assert digests[0] == digests[1] != digests[2] and len(digests[0].strip()) == 64
