"""`engram-ff bench chaos`: SIGKILL the real daemon at random instants, restart it, prove nothing is lost.

Each trial starts `engram-ff run` (a real subprocess in its own session, with the tiny model of the
tests), lets a writer append a burst of lines while the daemon ingests, trains and probes, and kills
the whole session with SIGKILL (daemon and update child at once: what a power loss or systemd's
cgroup kill does) at an instant picked by one of six triggers: uniform over the daemon's life,
mid-ingest, mid-training, mid-checkpoint-write (a checkpoint temp file exists), the moment an
update starts (a resumed one then dies before its first checkpoint) and mid-probes; `rotation`
rotates a daily file as logrotate would; on 2 ranks (workers = 2), `rank-kill` SIGKILLs the helper rank
mid-training and waits for the daemon to try the night again on one process, and `rank-stop` SIGSTOPs
it and times the daemon's stop by SIGTERM (issue #20: it could not be stopped).
With the daemon dead the state is frozen, and we check:
- every line before each file's committed offset is in `messages` exactly once, and no other;
- `PRAGMA integrity_check` is ok;
- every 'good' checkpoint row names a file whose sha256 matches, and the current one loads;
- the next update resumes from the newest partial checkpoint the interrupted updates left
  (`runs.resumed_from`), checked when the restarted daemon starts it.
At the end the writer stops, the daemon catches up, and every line of every file must be stored
exactly once. A second part drops 1,000 files of 1,000 lines at once into a running daemon and
reports its peak RSS. Results go to bench/results/chaos.md, with `systemd-analyze security` for
both units.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import os
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from engram_ff.bench.common import RESULTS, markdown_table, write_result
from engram_ff.ingest.names import is_log_name

REPO = Path(__file__).resolve().parents[1]
# In this order, each rank trigger follows a kill mid-training, so its daemon's update has steps left to
# train on 2 ranks (after `probes` or `rotation` it would only judge a trained candidate, on one process).
TRIGGERS = (
    *("uniform", "ingest", "training", "rank-kill", "checkpoint", "rank-stop"),
    *("update-start", "probes", "rotation"),
)
RANK_TRIGGERS = ("rank-kill", "rank-stop")  # their daemon trains on 2 ranks (workers = 2)
LINE_BYTES = 160  # every line the writer makes has this length, so a file's line count is size / LINE_BYTES

# The tiny model of the tests, with a checkpoint at nearly every step so kills land inside writes.
FAST_ENV = {
    "ENGRAM_FF_MODEL_PRESET": "tiny",
    "ENGRAM_FF_BATCH_SIZE": "4",
    "ENGRAM_FF_SEQ_LEN": "64",
    "ENGRAM_FF_UPDATE_MIN_STEPS": "150",
    "ENGRAM_FF_UPDATE_MAX_STEPS": "150",
    "ENGRAM_FF_UPDATE_BUDGET_MINUTES": "1",
    "ENGRAM_FF_CHECKPOINT_EVERY_SECONDS": "0.05",
    "ENGRAM_FF_DEBOUNCE_SECONDS": "0.05",
    "OMP_NUM_THREADS": "1",
}


# --- the data: fixed-width recorder lines with unique texts -------------------------------------------
def make_line(tag: str, n: int) -> bytes:
    """A recorder line of exactly LINE_BYTES bytes whose text `tag nNNNNNN` is unique."""
    head = {
        "timestamp": "2026-01-01T10:00:00Z",
        "session_key": f"s-{tag}",
        "direction": "in",
        "sender": "chaos",
        "content": f"{tag} n{n:07d} ",
    }
    raw = orjson.dumps(head)
    pad = LINE_BYTES - 1 - len(raw)
    assert pad >= 0, tag
    head["content"] += "x" * pad
    line = orjson.dumps(head) + b"\n"
    assert len(line) == LINE_BYTES
    return line


def text_of(line: bytes) -> str:
    return orjson.loads(line)["content"]


class Writer(threading.Thread):
    """Appends bursts of lines to a few daily files, sometimes stopping mid-line (as a real writer does)."""

    def __init__(self, watch: Path, seed: int):
        super().__init__(daemon=True, name="chaos-writer")
        self.raw = watch / "raw"
        self.raw.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.jobs: list[tuple[str, int, float]] = []
        self.wake = threading.Condition()
        self.counter = 0  # lines written so far
        self.written: set[str] = set()  # their texts, recorded before each write
        self.files_lock = threading.Lock()  # held while writing; a rotation takes it to find a quiet file
        self.stopping = False

    def burst(self, tag: str, lines: int, seconds: float) -> None:
        """Queue `lines` new lines spread over `seconds` (returns at once)."""
        with self.wake:
            self.jobs.append((tag, lines, seconds))
            self.wake.notify()

    def run(self) -> None:
        while True:
            with self.wake:
                while not self.jobs and not self.stopping:
                    self.wake.wait()
                if not self.jobs:
                    return
                tag, lines, seconds = self.jobs.pop(0)
            self._write(tag, lines, seconds)

    def _write(self, tag: str, lines: int, seconds: float) -> None:
        files = [self.raw / f"2026-01-{day:02d}.jsonl" for day in range(1, 4)] + [self.raw / f"{tag}.jsonl"]
        chunks = max(1, lines // 25)
        for _ in range(chunks):
            path = self.rng.choice(files)
            made = [make_line(tag, self.counter + i) for i in range(lines // chunks)]
            self.written.update(text_of(line) for line in made)
            data = b"".join(made)
            self.counter += lines // chunks
            cut = self.rng.randrange(len(data)) if self.rng.random() < 0.3 else len(data)
            with self.files_lock, open(path, "ab") as f:  # half a line now, the rest a moment later
                f.write(data[:cut])
                f.flush()
                if cut < len(data):
                    time.sleep(0.002)
                    f.write(data[cut:])
            time.sleep(seconds / chunks)

    def rotate(self) -> str:
        """Rotate one of the daily files as logrotate would, in one of its modes (picked at random),
        between two of the writer's appends; returns what was done."""
        with self.files_lock:
            live = sorted(p for p in self.raw.glob("*.jsonl") if p.stat().st_size)
            if not live:
                return "nothing to rotate yet"
            path = self.rng.choice(live)
            stamp = f"{len(list(self.raw.glob(path.name + '*'))):04d}"
            mode = self.rng.choice(["create", "dateext", "compress", "copytruncate"])
            if mode == "copytruncate":
                shutil.copyfile(path, path.with_name(f"{path.name}.{stamp}"))
                os.truncate(path, 0)
            elif mode == "compress":
                with open(path, "rb") as src, gzip.open(path.with_name(f"{path.name}-{stamp}.gz"), "wb") as dst:
                    shutil.copyfileobj(src, dst)
                path.unlink()
            else:
                os.rename(path, path.with_name(f"{path.name}.{stamp}" if mode == "create" else f"{path.name}-{stamp}"))
            return f"{mode} {path.name}"

    def stop(self) -> None:
        with self.wake:
            self.stopping = True
            self.wake.notify()
        self.join()


# --- the daemon as a subprocess ----------------------------------------------------------------
class Daemon:
    """`engram-ff run` in a session of its own, so one killpg takes the daemon and its update child."""

    def __init__(self, watch: Path, data: Path, env: dict[str, str], log_path: Path):
        self.data = data
        self.log = open(log_path, "ab")  # noqa: SIM115 (closed in stop())
        self.notify_path = log_path.with_name(f"notify-{os.getpid()}-{time.monotonic_ns()}.sock")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        self.was_ready = False
        self._reading = threading.Lock()
        self._closed = threading.Event()
        threading.Thread(target=self._drain, daemon=True, name="notify-reader").start()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engram_ff.daemon.cli", "run", "--watch", str(watch), "--data", str(data)],
            env={**env, "NOTIFY_SOCKET": str(self.notify_path)},
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started = time.monotonic()

    def ready(self) -> bool:
        """Has the daemon sent READY=1 (migrated, watching, its start-up scan begun)?"""
        self._read_notifications()
        return self.was_ready

    def _read_notifications(self) -> None:
        """Every message waiting. Read them all, all the time, as systemd does: once a unix datagram
        socket's queue is full, the daemon's next notification blocks it (SIGTERM included)."""
        with self._reading:
            while not self._closed.is_set():
                try:
                    message = self.notify.recv(4096)
                except BlockingIOError:
                    return
                self.was_ready = self.was_ready or b"READY=1" in message.split(b"\n")

    def _drain(self) -> None:
        while not self._closed.wait(0.1):
            self._read_notifications()

    def _close(self) -> None:
        self.ready()
        with self._reading:
            self._closed.set()
        self.notify.close()
        self.notify_path.unlink(missing_ok=True)
        self.log.close()

    def kill(self) -> float:
        """SIGKILL the whole session; returns seconds since start."""
        alive = time.monotonic() - self.started
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        _reap_session(self.proc.pid)
        self._close()
        return alive

    def stop(self, timeout: float = 90) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._close()
        return code


def _reap_session(sid: int, timeout: float = 10.0) -> None:
    """Wait until no process of the killed session is left (the update child is not our child)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_session_of(pid) == sid for pid in _pids()):
            return
        time.sleep(0.01)
    raise RuntimeError(f"processes of session {sid} survived SIGKILL")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _session_of(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[3]) if fields[0] != "Z" else None  # a zombie holds nothing


def rss_peak_mib(pid: int) -> float:
    """VmHWM: the process's peak resident memory, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- looking at the frozen state ----------------------------------------------------------------
def read_db(path: Path, sql: str, params=()) -> list[tuple]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        conn.close()


@dataclass
class Check:
    """What the state shows once the daemon is dead (or stopped)."""

    expected: int = 0  # lines wholly before a committed offset (or, settled, in the files)
    stored: int = 0
    lost: int = 0  # expected but not stored
    duplicated: int = 0  # stored more than once
    phantom: int = 0  # stored but not expected: beyond a committed offset, or never written
    pending_bytes: int = 0  # bytes in the files past their committed offsets
    integrity: str = ""
    checkpoints: int = 0  # good checkpoint rows checked
    bad_checkpoints: list[str] = field(default_factory=list)
    current_checkpoint: int | None = None
    temp_files: int = 0  # checkpoint temp files left behind by a kill
    phases: list[str] = field(default_factory=list)  # what was going on at the kill

    @property
    def ok(self) -> bool:
        return self.lost == self.duplicated == self.phantom == 0 and self.integrity == "ok" and not self.bad_checkpoints


def check_state(
    watch: Path, data: Path, *, settled: bool = False, written: set[str] | None = None, lines_only: bool = False
) -> Check:
    """The invariants, from the files, the database and the checkpoint folder (nothing may be running).

    Expected: every line before the committed offset of each file row whose name still holds its file
    (device, inode and first bytes as the row recorded them; a file renamed or truncated since its last
    read is checked once settled). settled: every line of every log file in the folder, rotated and
    compressed ones included. Phantom: stored, but neither expected nor (given `written`) ever written.
    A line may be in two files (a rotated copy): lines are counted once. lines_only: the lines alone, so
    that it can be asked while a daemon runs (whose update may be removing checkpoints)."""
    db = data / "engram-ff.db"
    check = Check()
    check.integrity = read_db(db, "PRAGMA integrity_check")[0][0]
    rows = read_db(db, "SELECT path, device, inode, committed_offset, head_len, head_hash FROM files")
    read_up_to = {Path(row[0]): row[3] for row in rows if _holds(*row)}
    expected: set[str] = set()
    for path in sorted(p for p in (watch / "raw").iterdir() if is_log_name(p.name) and p.is_file()):
        text = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
        offset = read_up_to.get(path, 0)
        if not path.name.endswith(".gz"):
            check.pending_bytes += max(0, len(text) - offset)
        whole = text if settled else text[:offset]
        whole = whole[: whole.rfind(b"\n") + 1]
        expected.update(text_of(line) for line in whole.split(b"\n") if line.strip(b"\x00"))
    stored = Counter(text for (text,) in read_db(db, "SELECT text FROM messages"))
    check.expected, check.stored = len(expected), len(stored)
    check.lost = len(expected - set(stored))
    check.duplicated = sum(n - 1 for n in stored.values() if n > 1)
    check.phantom = len(set(stored) - (expected if written is None else written | expected))
    if lines_only:
        return check
    rows = read_db(db, "SELECT id, path, sha256, kind FROM checkpoints WHERE status = 'good' ORDER BY id")
    check.checkpoints = len(rows)
    for checkpoint_id, path, sha, kind in rows:
        if not Path(path).exists() or hashlib.sha256(Path(path).read_bytes()).hexdigest() != sha:
            check.bad_checkpoints.append(f"{kind} checkpoint {checkpoint_id}: {path} missing or its sha256 differs")
    finals = [row for row in rows if row[3] == "final"]
    if finals:
        from engram_ff.model.checkpoint import CheckpointError, load_checkpoint

        check.current_checkpoint = finals[-1][0]
        try:
            load_checkpoint(finals[-1][1])
        except CheckpointError as exc:
            check.bad_checkpoints.append(f"current checkpoint: {exc}")
    check.temp_files = len(list((data / "checkpoints").glob(".*.tmp"))) if (data / "checkpoints").exists() else 0
    return check


def _holds(path: str, device: int | None, inode: int | None, offset: int, head_len: int, head: bytes | None) -> bool:
    """Does the name still hold the file its row read, unchanged before the committed offset (as far as
    the reader itself can tell: its first bytes, a line end at the offset)?"""
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            start = f.read(max(head_len, 1))
            f.seek(max(offset - 1, 0))
            before = f.read(1)
    except OSError:
        return False
    if (st.st_dev, st.st_ino) != (device, inode):
        return False
    if path.endswith(".gz"):
        return st.st_size > 0
    if st.st_size < offset or (head_len and hashlib.blake2b(start[:head_len], digest_size=16).digest() != head):
        return False
    return offset == 0 or before in (b"\n", b"\x00")


def phases_at_kill(data: Path, check: Check, runs_before: int, files_before: set[Path]) -> list[str]:
    """What the daemon was doing when it died, from the evidence it left: runs it started that are still
    'running', checkpoint files it began (a temp file, or a .pt with no row yet), bytes not yet read."""
    db = data / "engram-ff.db"
    running = {
        kind for (kind,) in read_db(db, "SELECT kind FROM runs WHERE status = 'running' AND id > ?", [runs_before])
    }
    known = {Path(path) for (path,) in read_db(db, "SELECT path FROM checkpoints")}
    new_files = set(checkpoint_files(data)) - files_before
    phases = ["ingest"] * bool(check.pending_bytes) + ["training"] * ("update" in running)
    phases += ["checkpoint"] * any(p.suffix == ".tmp" or (p.suffix == ".pt" and p not in known) for p in new_files)
    phases += ["probes"] * ("probe" in running)
    return phases or ["idle"]


def checkpoint_files(data: Path) -> list[Path]:
    folder = data / "checkpoints"
    return [p for p in folder.iterdir() if p.suffix in (".pt", ".tmp")] if folder.exists() else []


def resume_target(data: Path) -> int | None:
    """The update the next one must resume from: the newest of the trailing interrupted (or, dead,
    still 'running') updates that left a good partial checkpoint."""
    db = data / "engram-ff.db"
    for run_id, status in read_db(db, "SELECT id, status FROM runs WHERE kind = 'update' ORDER BY id DESC"):
        if status not in ("running", "interrupted"):
            return None
        if read_db(db, "SELECT 1 FROM checkpoints WHERE run_id = ? AND kind = 'partial' AND status = 'good'", [run_id]):
            return run_id
    return None


def age_last_update(data: Path) -> None:
    """As if the machine had been off for a night: the next start runs a catch-up update."""
    if not (data / "engram-ff.db").exists():
        return
    conn = sqlite3.connect(data / "engram-ff.db", timeout=30)
    try:
        with conn:
            conn.execute("UPDATE runs SET ended_at = '2000-01-01T00:00:00.000Z' WHERE status = 'ok'")
    except sqlite3.OperationalError as exc:
        if "no such table" not in str(exc):
            raise
    finally:
        conn.close()


# --- the trials ------------------------------------------------------------------------------------
@dataclass
class Trial:
    number: int
    trigger: str
    alive_s: float = 0.0
    ready: bool = False  # the daemon had come back up (READY=1) before this kill
    triggered: bool = False  # the trigger's moment came (else the kill came at the timeout)
    phases: list[str] = field(default_factory=list)
    check: Check = field(default_factory=Check)  # Chaos.trial's, once the daemon is dead


class Chaos:
    """One data directory whose daemon trials kill again and again; `settle()` at the end."""

    def __init__(self, root: Path, seed: int = 0, burst_lines: int = 400, env: dict | None = None):
        self.watch, self.data = root / "engram", root / "data"
        self.log_path = root / "daemon.log"
        self.rng = random.Random(seed)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_FF_", "NOTIFY_SOCKET", "WATCHDOG_"))},
            **FAST_ENV,
            **(env or {}),
        }
        self.burst_lines = burst_lines
        self.writer = Writer(self.watch, seed)
        self.writer.start()
        self.trials: list[Trial] = []
        self.resumes_checked = 0
        self.resume_errors: list[str] = []
        self.rotations: list[str] = []  # what each rotation trial did
        self.rank_kills: list[str] = []  # what each rank-kill trial saw after the helper's SIGKILL
        self.rank_stops: list[tuple[float, int]] = []  # rank-stop: (seconds SIGTERM took, processes left)
        self._expect_resume: tuple[int, int | None] = (0, None)  # (runs.id bound, the next update's resumed_from)

    @property
    def db(self) -> Path:
        return self.data / "engram-ff.db"

    def _max_run(self) -> int:
        return (read_db(self.db, "SELECT coalesce(max(id), 0) FROM runs") or [(0,)])[0][0]

    def trial(self, trigger: str | None = None, timeout: float = 60.0) -> Trial:
        trigger = trigger or self.rng.choice(TRIGGERS)
        trial = Trial(len(self.trials) + 1, trigger)
        age_last_update(self.data)
        runs_before, files_before = self._max_run(), set(checkpoint_files(self.data))
        env = {**self.env, "ENGRAM_FF_WORKERS": "2"} if trigger in RANK_TRIGGERS else self.env
        daemon = Daemon(self.watch, self.data, env, self.log_path)
        if trigger != "ingest":  # the ingest trigger sends its burst once the start-up scan is done
            self.writer.burst(f"t{trial.number:03d}", self.burst_lines, seconds=self.rng.uniform(0.5, 3.0))
        try:
            trial.triggered = self._wait_for_trigger(
                trigger, daemon, timeout, runs_before, files_before, f"t{trial.number:03d}"
            )
        finally:
            trial.alive_s = daemon.kill()
        trial.ready = daemon.was_ready
        trial.check = check_state(self.watch, self.data, written=self.writer.written)
        trial.phases = phases_at_kill(self.data, trial.check, runs_before, files_before)
        self._check_resume()
        self.trials.append(trial)
        return trial

    def _wait_for_trigger(
        self, trigger: str, daemon: Daemon, timeout: float, before: int, files_before: set[Path], tag: str
    ) -> bool:
        """Wait for the trigger's moment (plus a random jitter); False if it never came in `timeout`."""
        checkpoints = self.data / "checkpoints"
        burst: list[bool] = []

        def rotated() -> bool:
            """After READY, a daily file rotated (as logrotate would) under a burst; the kill follows."""
            if not daemon.ready():
                return False
            self.rotations.append(self.writer.rotate())
            return True

        def ingesting() -> bool:
            """After READY, one large burst at once, so the kill can land inside its transactions."""
            if not daemon.ready():
                return False
            if not burst:
                burst.append(True)
                self.writer.burst(tag, 20 * self.burst_lines, seconds=0.2)
            return self._ingesting()

        def training() -> bool:
            return bool(
                read_db(
                    self.db,
                    "SELECT 1 FROM runs r JOIN checkpoints c ON c.run_id = r.id "
                    "WHERE r.kind = 'update' AND r.status = 'running' AND r.id > ? "
                    "AND c.kind = 'partial'",
                    [before],
                )
            )

        def helper() -> int | None:
            if not training():
                return None
            sid = daemon.proc.pid
            ranks = [p for p in _pids() if _session_of(p) == sid and b"engram_ff.daemon.ranks" in _cmdline(p)]
            return ranks[0] if ranks else None

        def rank_killed() -> bool:
            """SIGKILL the helper rank mid-training; then wait for the night to be tried on one process."""
            pid = helper()
            if pid is None:
                return False
            failed = self._max_run()
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                sql = "SELECT id, status, error FROM runs WHERE kind = 'update' AND id >= ?"
                rows = read_db(self.db, sql, [failed])
                done = [r for r in rows if r[1] != "running"]
                if done and len(rows) > len(done):  # the failed one, and the retry under way
                    self.rank_kills.append(f"{done[0][1]} ({(done[0][2] or '').split(':')[0]}), then retried")
                    return True
                time.sleep(0.05)
            self.rank_kills.append("no retry seen in 30 s")
            return True

        def rank_stopped() -> bool:
            """SIGSTOP the helper rank mid-training, then SIGTERM the daemon: how long it takes to stop."""
            pid = helper()
            if pid is None:
                return False
            os.kill(pid, signal.SIGSTOP)
            sid, t0 = daemon.proc.pid, time.monotonic()
            try:
                daemon.proc.send_signal(signal.SIGTERM)
                daemon.proc.wait(90)  # the units' TimeoutStopSec
            except subprocess.TimeoutExpired:
                pass
            seconds = time.monotonic() - t0
            time.sleep(0.5)
            left = [p for p in _pids() if _session_of(p) == sid]  # the helper's group is in the session too
            self.rank_stops.append((seconds, len(left)))
            return True

        delay = self.rng.uniform(0.2, 9.0)
        conditions = {
            "rank-kill": rank_killed,
            "rank-stop": rank_stopped,
            "uniform": lambda: time.monotonic() - daemon.started >= delay,
            "ingest": ingesting,
            "training": lambda: read_db(
                self.db,
                "SELECT 1 FROM runs r JOIN checkpoints c ON c.run_id = r.id "
                "WHERE r.kind = 'update' AND r.status = 'running' AND r.id > ? "
                "AND c.kind = 'partial'",
                [before],
            ),
            "checkpoint": lambda: (
                checkpoints.exists() and any(p not in files_before for p in checkpoints.glob(".*.tmp"))
            ),
            "update-start": lambda: read_db(self.db, "SELECT 1 FROM runs WHERE kind = 'update' AND id > ?", [before]),
            "rotation": rotated,
            "probes": lambda: read_db(
                self.db, "SELECT 1 FROM runs WHERE kind = 'probe' AND status = 'running' AND id > ?", [before]
            ),
        }
        jitter = {
            "uniform": 0.0,
            "ingest": 0.1,
            "training": 0.5,
            "checkpoint": 0.0,
            "update-start": 0.0,
            "probes": 0.05,
            "rotation": 1.0,
            "rank-kill": 0.5,
            "rank-stop": 0.0,
        }[trigger]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and daemon.proc.poll() is None:
            daemon.ready()
            if conditions[trigger]():
                if daemon.proc.poll() is None:
                    time.sleep(self.rng.uniform(0, jitter))
                return True
            time.sleep(0.0005 if trigger == "checkpoint" else 0.005)
        if daemon.proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {daemon.proc.returncode}; see {self.log_path}")
        return False

    def _ingesting(self) -> bool:
        """The writer has bytes out that the daemon has not committed yet."""
        rows = read_db(self.db, "SELECT path, committed_offset FROM files")
        return any(Path(path).exists() and Path(path).stat().st_size > offset for path, offset in rows)

    def _check_resume(self) -> None:
        """The first update started after a kill resumes from what the interrupted ones left; then the
        expectation for the next one is taken from the state this kill left."""
        bound, expected = self._expect_resume
        rows = read_db(
            self.db, "SELECT id, resumed_from FROM runs WHERE kind = 'update' AND id > ? ORDER BY id LIMIT 1", [bound]
        )
        if rows:
            self.resumes_checked += 1
            if rows[0][1] != expected:
                self.resume_errors.append(f"update {rows[0][0]} resumed from {rows[0][1]}, expected {expected}")
        self._expect_resume = (self._max_run(), resume_target(self.data))

    def settle(self, timeout: float = 180.0) -> Check:
        """Stop writing; let a daemon catch up on everything and finish its update and probes; SIGTERM it."""
        self.writer.stop()
        age_last_update(self.data)
        bound = self._max_run()
        daemon = Daemon(self.watch, self.data, self.env, self.log_path)
        deadline = time.monotonic() + timeout
        try:
            while not (
                daemon.ready()
                and check_state(self.watch, self.data, lines_only=True).pending_bytes == 0
                and self._update_done(bound)
            ):
                if daemon.proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited with {daemon.proc.returncode}; see {self.log_path}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the daemon did not catch up in {timeout} s; see {self.log_path}")
                time.sleep(0.1)
        except BaseException:
            daemon.kill()  # never leave a daemon running behind a failed check
            raise
        self._check_resume()
        if daemon.stop() != 0:
            raise RuntimeError(f"the daemon did not stop cleanly; see {self.log_path}")
        return check_state(self.watch, self.data, settled=True, written=self.writer.written)

    def _update_done(self, bound: int) -> bool:
        """The update started after `bound` ended, and so did the probes after it, if it was ok."""
        rows = read_db(self.db, "SELECT id, status FROM runs WHERE kind = 'update' AND id > ?", [bound])
        if not rows or rows[0][1] == "running":
            return False
        return rows[0][1] != "ok" or bool(
            read_db(self.db, "SELECT 1 FROM runs WHERE kind = 'probe' AND id > ? AND status != 'running'", [rows[0][0]])
        )

    def log_count(self, *words: str) -> int:
        """Lines of every daemon's log (output and errors, all trials) holding any of `words`."""
        if not self.log_path.exists():
            return 0
        return sum(any(w in line for w in words) for line in self.log_path.read_text(errors="replace").splitlines())

    def recoveries(self) -> int:
        """Restarts after a kill that came back up (READY=1): every later trial that got that far before
        its own kill, and the settling run (which always does, or settle() raises)."""
        return sum(t.ready for t in self.trials[1:]) + 1


# --- load: many files dropped at once ---------------------------------------------------------------
@dataclass
class LoadResult:
    files: int
    lines: int
    stored: int
    duplicated: int
    seconds: float
    daemon_peak_rss_mib: float
    reader_max_wait_s: float
    reader_torn: list[str]  # snapshots where messages and committed offsets disagreed (must be none)


def drop_files(watch: Path, stage: Path, files: int, lines: int) -> None:
    """Write the files outside the folder, then rename them all in: they land at once."""
    stage.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (stage / f"drop-{i:04d}.jsonl").write_bytes(b"".join(make_line(f"d{i:04d}", n) for n in range(lines)))
    (watch / "raw").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        os.rename(stage / f"drop-{i:04d}.jsonl", watch / "raw" / f"drop-{i:04d}.jsonl")


def load_run(root: Path, files: int, lines: int, env: dict | None = None, timeout: float = 900.0) -> LoadResult:
    """Start the daemon, drop files x lines at once, wait for every line; meanwhile a reader keeps
    opening read transactions (as a user's `sqlite3` would) and we time how long each statement waits."""
    watch, data = root / "engram", root / "data"
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_FF_", "NOTIFY_SOCKET"))},
        **FAST_ENV,
        **(env or {}),
    }
    (watch / "raw").mkdir(parents=True, exist_ok=True)
    daemon = Daemon(watch, data, full_env, root / "daemon.log")
    db = data / "engram-ff.db"
    try:
        while not read_db(db, "SELECT 1 FROM runs WHERE kind = 'update' AND status != 'running'"):  # settled
            if daemon.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited; see {root / 'daemon.log'}")
            time.sleep(0.05)
        reader = ReaderProbe(db)
        reader.start()
        start = time.monotonic()
        drop_files(watch, root / "stage", files, lines)
        deadline = start + timeout
        while read_db(db, "SELECT count(*) FROM messages")[0][0] < files * lines:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every line ingested in {timeout} s")
            time.sleep(0.1)
        seconds = time.monotonic() - start
        reader.stop()
        peak = rss_peak_mib(daemon.proc.pid)
    finally:
        daemon.stop()
    stored = read_db(db, "SELECT count(*), count(DISTINCT text) FROM messages")[0]
    return LoadResult(files, lines, stored[0], stored[0] - stored[1], seconds, peak, reader.max_wait, reader.torn)


class ReaderProbe(threading.Thread):
    """A user's reader: read transactions held a while; records the longest wait for a statement."""

    def __init__(self, db: Path, hold_s: float = 0.5):
        super().__init__(daemon=True, name="reader-probe")
        self.db, self.hold_s = db, hold_s
        self.max_wait = 0.0
        self.torn: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30, isolation_level=None)
        try:
            while not self._done.is_set():
                t = time.monotonic()
                conn.execute("BEGIN")
                messages = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
                self.max_wait = max(self.max_wait, time.monotonic() - t)
                self._done.wait(self.hold_s)
                offsets = conn.execute("SELECT coalesce(sum(committed_offset), 0) FROM files").fetchone()[0]
                again = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
                conn.execute("COMMIT")
                if again != messages or offsets != messages * LINE_BYTES:
                    self.torn.append(f"{messages} then {again} messages for {offsets} committed bytes")
        finally:
            conn.close()

    def stop(self) -> None:
        self._done.set()
        self.join()


# --- systemd-analyze security -----------------------------------------------------------------------
def unit_security(user: bool) -> str:
    """The overall exposure line of `systemd-analyze security --offline=true` for one unit."""
    unit = REPO / "systemd" / ("engram-ff.user.service" if user else "engram-ff.service")
    if shutil.which("systemd-analyze") is None:
        return "systemd-analyze not installed"
    with tempfile.TemporaryDirectory() as runtime, tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / "engram-ff.service"  # the file name must be a plain unit name
        copy.write_text(unit.read_text())
        env = {**os.environ, "XDG_RUNTIME_DIR": runtime}
        cmd = ["systemd-analyze", "security", "--offline=true", "--no-pager"] + (["--user"] if user else [])
        out = subprocess.run(cmd + [str(copy)], capture_output=True, text=True, env=env, timeout=60)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if "Overall exposure level" in line]
    return (
        lines[0].split("Overall exposure level for engram-ff.service:")[-1].strip()
        if lines
        else (out.stdout + out.stderr).strip()[-200:]
    )


# --- the benchmark ---------------------------------------------------------------------------------
PARTS = ("trials", "load", "many-files", "cases")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engram-ff bench chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="7 trials, a 100 x 100 load, 5,000 files idle for 60 s, 800 lines a rotation case",
    )
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--many-files", type=int, default=100_000, help="one-line files for the READY and idle part")
    parser.add_argument("--idle", type=float, default=600.0, help="seconds the idle daemon's CPU is measured over")
    parser.add_argument("--case-lines", type=int, default=3000, help="lines written in each rotation case")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which parts, of {','.join(PARTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="chaos.md", help="file name under bench/results/")
    return parser


def daemon_env() -> dict[str, str]:
    """This environment, without anything of a daemon's own, plus the tiny model of the tests."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_FF_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    return {**keep, **FAST_ENV}


def main(argv: list[str] | None = None) -> int:
    from engram_ff.bench import cases, many_files

    args = build_parser().parse_args(argv)
    if args.quick:
        args.trials, args.files, args.lines = 7, 100, 100
        args.many_files, args.idle, args.case_lines = 5000, 60.0, 800
    parts = [part for part in args.parts.split(",") if part]
    if set(parts) - set(PARTS):
        raise SystemExit(f"--parts: unknown {sorted(set(parts) - set(PARTS))}; known: {', '.join(PARTS)}")
    sections, ok = [], True
    with tempfile.TemporaryDirectory(prefix="engram-chaos-") as tmp:
        root = Path(tmp)
        if "trials" in parts:
            text, good = run_trials(args, root / "trials")
            sections.append(text)
            ok &= good
        if "load" in parts:
            load = load_run(root / "load", args.files, args.lines)
            print(f"load: {load}", flush=True)
            sections.append(load_section(load))
            ok &= load.stored == args.files * args.lines and load.duplicated == 0 and not load.reader_torn
        if "many-files" in parts:
            result = many_files.many_files_run(root / "many", args.many_files, args.idle, daemon_env())
            print(f"many files: {result}", flush=True)
            sections.append(many_files.section(result, args))
            ok &= result.ready_s <= 30 and result.idle_cpu_percent < 1
        if "cases" in parts:
            text, good = cases.run_cases(root / "cases", args.case_lines, daemon_env())
            sections.append(text)
            ok &= good
    security = {"system": unit_security(False), "user": unit_security(True)}
    sections.append(
        "## systemd-analyze security --offline=true\n\n"
        + markdown_table(["unit", "overall exposure"], [[k, v] for k, v in security.items()])
    )
    command = (
        f"python -m engram_ff.bench.chaos --trials {args.trials} --files {args.files} --lines {args.lines} "
        f"--many-files {args.many_files} --idle {args.idle:g} --case-lines {args.case_lines} --parts {','.join(parts)} "
        f"--seed {args.seed}"
    )
    head = (
        f"# Chaos: SIGKILL trials, load, many files, the cases of issue #16, security\n\n`{command}` on "
        f"{os.cpu_count()} CPUs, tiny model (bench/chaos.py FAST_ENV); other jobs may share the CPUs.\n\n"
    )
    path = write_result(args.out, head + "\n".join(sections))
    print(f"wrote {path}")
    return 0 if ok else 1


def run_trials(args, root: Path) -> tuple[str, bool]:
    """The SIGKILL trials and the settling run; their report sections, and whether all held."""
    chaos = Chaos(root, seed=args.seed)
    started = time.monotonic()
    for i in range(args.trials):
        trigger = TRIGGERS[i % len(TRIGGERS)]
        trial = chaos.trial(trigger)
        c = trial.check
        print(
            f"trial {trial.number:3d} {trigger:12s} killed after {trial.alive_s:5.2f} s during "
            f"{'+'.join(trial.phases):24s} lost {c.lost} dup {c.duplicated} phantom {c.phantom} "
            f"integrity {c.integrity} checkpoints {c.checkpoints} bad {len(c.bad_checkpoints)} "
            f"temp files {c.temp_files}",
            flush=True,
        )
    final = chaos.settle()
    seconds = time.monotonic() - started
    print(
        f"settled: {final.stored} lines stored of {final.expected}, lost {final.lost}, duplicated {final.duplicated}",
        flush=True,
    )
    plot_trials(chaos.trials, RESULTS / Path(args.out).with_suffix(".png").name)
    ok = final.ok and all(t.check.ok for t in chaos.trials) and not chaos.resume_errors
    ok &= all(seconds < 90 and left == 0 for seconds, left in chaos.rank_stops)
    ok &= chaos.log_count("Traceback (most recent call last)") == 0
    return trials_section(args, chaos, final, seconds), ok


def plot_trials(trials: list[Trial], path: Path) -> Path:
    """Each kill: when it came (seconds after the daemon started) and what it interrupted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 3.6))
    for phase, marker in (("idle", "o"), ("ingest", "s"), ("training", "^"), ("checkpoint", "x"), ("probes", "D")):
        hits = [t for t in trials if phase in t.phases]
        ax.scatter([t.number for t in hits], [t.alive_s for t in hits], marker=marker, label=phase, alpha=0.7)
    ax.set(
        xlabel="trial",
        ylabel="seconds from start to SIGKILL",
        title="Where the kills landed (every trial: 0 lines lost, 0 duplicated)"
        if all(t.check.ok for t in trials)
        else "Where the kills landed",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def trials_section(args, chaos: Chaos, final: Check, seconds: float) -> str:
    trials = chaos.trials
    by_phase = Counter(phase for t in trials for phase in t.phases)
    by_trigger = Counter(t.trigger for t in trials)
    lost = sum(t.check.lost for t in trials) + final.lost
    dup = sum(t.check.duplicated for t in trials) + final.duplicated
    rows: list[list[object]] = [
        ["trials (SIGKILL of daemon + update child)", len(trials)],
        ["kill triggers", ", ".join(f"{k} {v}" for k, v in sorted(by_trigger.items()))],
        ["what was running at the kill", ", ".join(f"{k} {v}" for k, v in sorted(by_phase.items()))],
        ["lines written / stored at the end", f"{final.expected} / {final.stored}"],
        ["lines lost (all trials + end)", lost],
        ["lines duplicated (all trials + end)", dup],
        ["phantom rows (stored, never written)", sum(t.check.phantom for t in trials) + final.phantom],
        ["integrity_check not ok", sum(t.check.integrity != "ok" for t in trials) + (final.integrity != "ok")],
        [
            "good checkpoints with a bad sha256 or unloadable",
            sum(len(t.check.bad_checkpoints) for t in trials) + len(final.bad_checkpoints),
        ],
        ["recoveries: restarts after a kill that came back up (READY=1)", f"{chaos.recoveries()} / {len(trials)}"],
        ["kills that landed before READY=1 (start-up scan, migrations)", sum(not t.ready for t in trials)],
        ["trials whose trigger never came (killed at the timeout)", sum(not t.triggered for t in trials)],
        [
            "updates that resumed as expected",
            f"{chaos.resumes_checked - len(chaos.resume_errors)} / {chaos.resumes_checked} checked",
        ],
        [
            "checkpoint temp files left by kills (removed at next update)",
            max((t.check.temp_files for t in trials), default=0),
        ],
        [
            "rank-kill: helper SIGKILLed mid-training, then (update, first word of its error)",
            ", ".join(f"{k} x{v}" for k, v in sorted(Counter(chaos.rank_kills).items())) or "none",
        ],
        [
            "rank-stop: helper SIGSTOPped, the daemon's stop by SIGTERM took (TimeoutStopSec=90)",
            ", ".join(f"{s:.1f} s" for s, _ in chaos.rank_stops) or "none",
        ],
        ["rank-stop: processes of the daemon left after its stop", sum(n for _, n in chaos.rank_stops)],
        ["lines of the daemons' log with a Python traceback", chaos.log_count("Traceback (most recent call last)")],
        ["lines of the daemons' log with gloo's own text (.cc:NNN, GLHF)", chaos.log_count(".cc:", "GLHF")],
        ["wall time of the trials", f"{seconds:.0f} s"],
    ]
    errors = "\n".join(f"- {e}" for e in chaos.resume_errors) or "none"
    per_trial = markdown_table(
        [
            "trial",
            "trigger",
            "killed after s",
            "running at the kill",
            "lost",
            "duplicated",
            "integrity",
            "good checkpoints",
            "up (READY) first",
        ],
        [
            [
                t.number,
                t.trigger,
                f"{t.alive_s:.2f}",
                "+".join(t.phases),
                t.check.lost,
                t.check.duplicated,
                t.check.integrity,
                t.check.checkpoints,
                "yes" if t.ready else "no",
            ]
            for t in trials
        ],
    )
    return (
        f"## SIGKILL trials\n\n{markdown_table(['measure', 'value'], rows)}\n"
        f"Rotations in the trials (the `rotation` trigger, between two appends, as logrotate's modes do): "
        f"{', '.join(chaos.rotations) or 'none'}.\n\n"
        f"Resume mismatches: {errors}\n\n"
        f"## Every trial\n\n![kills]({Path(args.out).with_suffix('.png').name})\n\n{per_trial}"
    )


def load_section(load: LoadResult) -> str:
    load_rows: list[list[object]] = [
        ["files x lines dropped at once", f"{load.files} x {load.lines}"],
        ["stored / duplicated", f"{load.stored} / {load.duplicated}"],
        ["seconds until every line was stored", f"{load.seconds:.1f}"],
        ["lines per second", f"{load.files * load.lines / load.seconds:,.0f}"],
        ["daemon peak RSS (VmHWM)", f"{load.daemon_peak_rss_mib:.0f} MiB"],
        ["longest wait of a reader's statement (WAL)", f"{load.reader_max_wait_s * 1000:.1f} ms"],
        ["reader snapshots with messages and offsets out of step", len(load.reader_torn)],
    ]
    return f"## Load\n\n{markdown_table(['measure', 'value'], load_rows)}"


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
