"""Fixtures shared by the ingest and bad-input tests, and the fresh-boot clock every test runs under."""

import importlib.util
import os
import time
from pathlib import Path

import pytest

from engram_ff.state.db import open_db

FRESH_BOOT = Path(__file__).parent / "fresh_boot"
FRESH_BOOT_UPTIME_S = 5.0  # what time.monotonic() reads as the suite starts, in every process it starts


def pytest_configure(config):
    """Run the whole suite as on a machine booted FRESH_BOOT_UPTIME_S ago (REAL_MONOTONIC=1 opts out).

    The suite once passed only where the machine had been up for more than an hour; this keeps every run,
    on any machine, as strict as a CI runner booted a minute ago."""
    if os.environ.get("REAL_MONOTONIC") == "1" or "FRESH_BOOT_MONOTONIC_SHIFT" in os.environ:
        return
    os.environ["FRESH_BOOT_MONOTONIC_SHIFT"] = repr(time.monotonic() - FRESH_BOOT_UPTIME_S)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(FRESH_BOOT), os.environ.get("PYTHONPATH")]))
    spec = importlib.util.spec_from_file_location("fresh_boot_clock", FRESH_BOOT / "sitecustomize.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # this process started before the variable


@pytest.fixture
def one_torch_thread():
    """In-process updates on two busy cores: a second torch thread only spins waiting for the first
    (10 ms a tiny step alone, 0.7 s with two), as FAST's OMP_NUM_THREADS=1 avoids in subprocesses."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def two_torch_threads():
    """Two torch threads, as the daemon trains, for tests of what threads must not change (model/memory.py)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def db(tmp_path):
    return open_db(tmp_path / "state.db")


@pytest.fixture
def daily(tmp_path):
    return tmp_path / "engram" / "raw" / "2026-11-27.jsonl"
