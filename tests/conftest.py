"""Fixtures shared by the ingest and bad-input tests."""

import pytest

from engram_ff.state.db import open_db


@pytest.fixture
def db(tmp_path):
    return open_db(tmp_path / "state.db")


@pytest.fixture
def daily(tmp_path):
    return tmp_path / "engram" / "raw" / "2026-11-27.jsonl"
