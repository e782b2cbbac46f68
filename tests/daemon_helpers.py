"""Shared by the daemon's tests: a real notify socket, an environment for a small fast model, polling."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sqlite3
import time
from collections import Counter
from pathlib import Path

import orjson

FAST = {
    "ENGRAM_FF_MODEL_PRESET": "tiny",
    "ENGRAM_FF_BATCH_SIZE": "4",
    "ENGRAM_FF_SEQ_LEN": "64",
    "ENGRAM_FF_UPDATE_MIN_STEPS": "20",
    "ENGRAM_FF_UPDATE_MAX_STEPS": "40",
    "ENGRAM_FF_UPDATE_BUDGET_MINUTES": "0.5",
    "ENGRAM_FF_DEBOUNCE_SECONDS": "0.05",
    # a test's update runs whatever else the machine does, plugged in or not (tests/test_idle.py tests pausing)
    "ENGRAM_FF_PAUSE_ON_BATTERY": "false",
    "ENGRAM_FF_PAUSE_ABOVE_CORES": "0",
    "OMP_NUM_THREADS": "1",
}


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_FF_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    return {**env, **FAST, **extra}


def _common_words() -> list[str]:
    """The play's 256 most common words of 4 to 7 letters: a code made of them reads like text."""
    play = (Path(__file__).resolve().parents[1] / "bench" / "data" / "plays" / "hamlet.txt").read_text()
    counted = Counter(w for w in re.findall(r"[a-z]+", play.lower()) if 4 <= len(w) <= 7)
    return sorted(w for w, _ in counted.most_common(256))


WORDS = _common_words()


def recorder_line(day: str, n: int, sender: str = "user", text: str | None = None) -> bytes:
    """A user's line of `day`, its text unique by a code drawn from (day, n). The text used to name the day
    in every message, at the same place: a token that changes every day is what the context memory
    (model/memory.py) rightly learns to expect anew, so the older days' held-out messages scored worse and
    the gate rejected the night (+0.15 to +0.25 bits per byte on these tiny days), and the tests that need
    a promoted night are about something else. The code then was 10 hex digits, a fifth of each message
    random bytes, and the memory's counts (model/counts.py), which trust a short context seen once, made
    tonight's held-out messages 0.13-0.16 bits per byte worse and the gate rejected the night again: it is
    now three of the play's common words, as random (2^24 codes) and closer to what people write."""
    digest = hashlib.sha256(f"{day} {n}".encode()).digest()
    code = " ".join(WORDS[b] for b in digest[:3])
    return (
        orjson.dumps(
            {
                "timestamp": f"{day}T10:{n // 60 % 60:02d}:{n % 60:02d}Z",
                "session_key": f"s-{day}",
                "direction": "in",
                "channel": "test",
                "sender": sender,
                "content": text or f"message number {n} of {code}: the quick brown fox",
                "tool_calls": [],
            }
        )
        + b"\n"
    )


def write_day(watch: Path, day: str, lines: int, start: int = 0) -> Path:
    raw = watch / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    path = raw / f"{day}.jsonl"
    with open(path, "ab") as f:
        for n in range(start, start + lines):
            f.write(recorder_line(day, n))
    return path


def query(db_path: Path, sql: str, params=()) -> list[tuple]:
    if not db_path.exists():
        return []
    conn = sqlite3.connect(db_path, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()


def wait_for(condition, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class NotifySocket:
    """What systemd does for Type=notify: listen on a datagram socket and collect the messages."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def collect(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536).decode()
            except (TimeoutError, BlockingIOError):
                return
            self.messages.append(dict(line.split("=", 1) for line in data.split("\n") if "=" in line))

    def wait(self, key: str, value: str | None = None, timeout: float = 60.0, after: int = 0) -> int:
        """Index of the first message at or after `after` that has key (=value)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.collect()
            for i, message in enumerate(self.messages[after:], start=after):
                if key in message and (value is None or message[key] == value):
                    return i
        raise AssertionError(f"no {key}={value} from the daemon in {timeout} s; got {self.messages[-5:]}")

    def close(self) -> None:
        self.sock.close()


def installation_outside_tmp():
    """An installation install-service accepts wherever the checkout under test lives (.ci/run copies it
    into /tmp, where install-service rightly refuses it): the base interpreter running the module."""
    import sys

    import pytest

    from engram_ff.daemon.install import Installation

    python = Path(os.path.realpath(sys.executable))
    if str(python).startswith(("/tmp/", "/var/tmp/")):
        pytest.skip(f"the interpreter itself lives in a temporary folder ({python})")
    return Installation(
        f"{python} -m engram_ff.daemon.cli", {"the Python interpreter": python, "its library": Path(sys.base_prefix)}
    )
