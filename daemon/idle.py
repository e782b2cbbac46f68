"""Whether the machine can give an update its time now: on mains power, and not busy with other work.

The nightly update is background work (the unit runs it at Nice=19 and the idle CPU class), but on a
laptop unplugged at night, or a home server that starts a long job of its own, even idle-class training
drains the battery or heats the machine for nothing. The update child therefore asks `Conditions.why_not`
before each step and stops with a partial checkpoint when the answer is not None; the daemon asks the
same question every half minute and resumes the paused night when the answer is None again
(daemon/service.py). A stopped night loses nothing: the next update resumes from its partial checkpoint.

Load is the CPU time other processes used, from /proc/stat's busy time minus our own process tree's
(the update's helper ranks included), over the last BUSY_WINDOW_S seconds: a short spike (a compile, a
page load) pauses nothing, and the update's own load never counts against it.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from engram_ff.daemon.config import Config

log = logging.getLogger(__name__)

POWER = Path("/sys/class/power_supply")
PROC = Path("/proc")
SAMPLE_S = 15.0  # load is sampled at most this often: reading /proc costs about a millisecond per 100 processes
BUSY_WINDOW_S = 120.0  # and judged on its mean over this long, once that much has been seen
RESUME_SHARE = 0.5  # a night paused for load resumes below this share of pause_above_cores: no flapping at the edge
TICKS = os.sysconf("SC_CLK_TCK")


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:  # a supply that vanished (unplugged USB), a file the kernel does not offer
        return ""


def on_battery(root: Path = POWER) -> bool:
    """True when a battery discharges and no mains or USB supply is online. A machine without a battery
    (a desktop, a server, a container) never is; one that reports nothing clear is taken as plugged in,
    so that a missing sysfs never stops the nights."""
    if not root.is_dir():
        return False
    supplies = [(_read(d / "type"), d) for d in sorted(root.iterdir())]
    if any(kind in ("Mains", "USB") and _read(d / "online") == "1" for kind, d in supplies):
        return False
    return any(kind == "Battery" and _read(d / "status") == "Discharging" for kind, d in supplies)


def busy_cpu_seconds(proc: Path = PROC) -> float | None:
    """Seconds of CPU time all cores spent busy since boot: /proc/stat's first line less idle and iowait.
    None where /proc/stat cannot be read (a sandbox with ProcSubset=pid)."""
    fields = _read(proc / "stat").split("\n", 1)[0].split()
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal (guest is in user)
    return (sum(ticks) - ticks[3] - ticks[4]) / TICKS


def tree_cpu_seconds(root_pid: int, proc: Path = PROC) -> float:
    """CPU seconds used by root_pid and every live process below it (user + system, and the children each
    has already waited for)."""
    parent, used = {}, {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        text = _read(entry / "stat")
        if not text:
            continue
        rest = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
        parent[int(entry.name)] = int(rest[1])
        used[int(entry.name)] = sum(int(x) for x in rest[11:15]) / TICKS  # utime stime cutime cstime
    total, mine = 0.0, {root_pid}
    for pid in sorted(used):  # a child's pid may be below its parent's after wrap-around: walk up instead
        p, seen = pid, set()
        while p not in mine and p in parent and p not in seen and p > 1:
            seen.add(p)
            p = parent[p]
        if p in mine:
            mine.add(pid)
            total += used[pid]
    return total


class OtherLoad:
    """Cores' worth of CPU that processes outside our tree used, over a sliding window of samples."""

    def __init__(self, root_pid: int, proc: Path = PROC, clock: Callable[[], float] = time.monotonic):
        self.root_pid, self.proc, self.clock = root_pid, proc, clock
        self.samples: deque[tuple[float, float]] = deque()  # (time, busy seconds not ours)
        self.readable = True  # False once /proc/stat could not be read: no load is known, none pauses

    def sample(self) -> None:
        now = self.clock()
        if not self.readable or (self.samples and now - self.samples[-1][0] < SAMPLE_S):
            return
        busy = busy_cpu_seconds(self.proc)
        if busy is None:
            log.warning("%s cannot be read here: pause_above_cores has no effect", self.proc / "stat")
            self.readable = False
            return
        self.samples.append((now, busy - tree_cpu_seconds(self.root_pid, self.proc)))
        while len(self.samples) > 2 and now - self.samples[1][0] >= BUSY_WINDOW_S:
            self.samples.popleft()

    def cores(self) -> float | None:
        """The mean over the window, or None until a whole window has been seen."""
        if not self.samples:
            return None
        (t0, b0), (t1, b1) = self.samples[0], self.samples[-1]
        if t1 - t0 < BUSY_WINDOW_S:
            return None
        return max(0.0, (b1 - b0) / (t1 - t0))


class Conditions:
    """Why an update should not run now (`why_not`), from `pause_on_battery` and `pause_above_cores`."""

    def __init__(self, config: Config, root_pid: int | None = None, power: Path = POWER, proc: Path = PROC, **kw):
        self.config, self.power = config, power
        self.load = OtherLoad(root_pid or os.getpid(), proc, **kw)

    def why_not(self, *, resuming: bool = False) -> str | None:
        """None when an update may run now. `resuming` a paused one asks more: a whole window of load seen,
        and below RESUME_SHARE of the limit."""
        if self.config.pause_on_battery and on_battery(self.power):
            return "the machine runs on battery"
        limit = self.config.pause_above_cores * (RESUME_SHARE if resuming else 1.0)
        if limit > 0 and self.load.readable:
            self.load.sample()
            cores = self.load.cores()
            if cores is None and resuming and self.load.readable:
                return "the load of other work is not known yet"
            if cores is not None and cores > limit:
                return (
                    f"other work kept {cores:.1f} cores busy over the last {BUSY_WINDOW_S / 60:.0f} minutes "
                    f"(pause_above_cores = {self.config.pause_above_cores:g})"
                )
        return None
