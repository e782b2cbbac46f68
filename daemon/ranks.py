"""The ranks of a data-parallel update: how many, how rank 0 starts and leads them, what the others do.

Rank 0 is the update process itself (daemon/child.py, or `engram-ff update`): it alone reads the
database and reads and writes checkpoints, so the checkpoint format and everything that reads it stay
as they are. Once it knows what the night trains, it starts `workers - 1` helper ranks
(`python -m engram_ff.daemon.ranks`), which meet it through a rendezvous file in the data directory
(torch's FileStore) and exchange gradients over the loopback interface only (gloo bound to 127.0.0.1):
nothing listens beyond this host. It then broadcasts the night (the text, the model, the trainer's
state and settings); every rank draws the same global batches and trains on its shard
(model/parallel.py), so the replicas stay identical and rank 0's checkpoints are the model.

Under torchrun (several hosts, or ranks started by hand) the ranks are torchrun's: every rank runs
`engram-ff update`, rank 0 does the above but starts no helper, and the others `follow` it. They need
engram-ff installed, not the data.

A rank that dies closes its sockets: rank 0's next collective fails, and the update fails like any
other (the previous checkpoint stays current). A rank that hangs (SIGSTOPped) is given up by rank 0's
collectives (model/parallel.py's Patience: a stop asked for, the budget's end, or TIMEOUT), and then
killed. The helpers of one update are one process group of their own, killed as a whole, so none
outlives its update (issue #20.2); they are not in the terminal's group, so Ctrl-C reaches rank 0 only,
which tells them at the next step. If rank 0 dies, its helpers are killed with it (PR_SET_PDEATHSIG) and
the update resumes from its last partial checkpoint, as a single process would.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from engram_ff.daemon import recipe
from engram_ff.daemon.config import Config
from engram_ff.daemon.logs import setup_logging
from engram_ff.daemon.sandbox import adapt_torch
from engram_ff.model.lm import FFLM, LMConfig
from engram_ff.model.parallel import STOP_GRACE_S, Patience, Replicas, Unanswered
from engram_ff.model.train import TRAINERS, FFTrainer, train

log = logging.getLogger("engram_ff.daemon.ranks")  # also when run as __main__, a helper rank

# "auto" gives every rank at least this many rows of a batch: one thread trains 4 rows at 0.93 of its
# bytes/s at 16 rows, 2 rows at 0.75 (bench/results/parallel-throughput.md, a shared machine).
MIN_ROWS_PER_RANK = 4
HELPER_EXIT_S = 5.0  # a helper ends training at rank 0's step, then only logs and exits; else (Ctrl-C) it is ended
HELPER_DEATH_S = 1.0  # a failed collective: how long a helper that died may take to be seen dead
BUDGET_GRACE_S = 30.0  # past the night's budget by this much, no collective waits any longer
PR_SET_PDEATHSIG = 1
# The helpers' C++ side (gloo, c10) logs only what is fatal: a rank's death is reported by rank 0 in one
# line, not as gloo's socket errors on the terminal (issue #20, rank kills).
QUIET_TORCH = {"TORCH_CPP_LOG_LEVEL": "FATAL", "TORCH_SHOW_CPP_STACKTRACES": "0"}


def usable_cores() -> int:
    """The CPUs this process may run on, and no more than its cgroup's CPU quota (systemd's CPUQuota=)."""
    cores = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


def resolve_workers(config: Config) -> int:
    """How many ranks an update starts: `workers`, or for "auto" one per usable core, as long as each
    keeps MIN_ROWS_PER_RANK rows and the batch splits evenly (equal shares keep the mathematics exact)."""
    if config.workers != "auto":
        return int(config.workers)
    limit = min(usable_cores(), config.batch_size // MIN_ROWS_PER_RANK)
    return max([w for w in range(1, limit + 1) if config.batch_size % w == 0], default=1)


class Team:
    """The ranks of one update, as rank 0 sees them. With one rank it does nothing at all: the
    single-process path is the one it always was."""

    def __init__(self, world: int, replicas: Replicas | None = None):
        self.world = world
        self.replicas = replicas  # torchrun's, joined already; else ours once started
        self.rank = 0 if replicas is None else replicas.rank
        self.helpers: list[subprocess.Popen] = []
        self.store: Path | None = None
        self.threads = torch.get_num_threads()
        self.sent = self.finished = self.aborted = False
        self.should_stop = lambda: False  # the update's: a collective waits only a little once it is true
        self.deadline: float | None = None
        self.group: int | None = None  # the helpers' process group
        self.timed_out = False  # the watchdog ended the helpers past the budget

    @classmethod
    def local(cls, config: Config) -> Team:
        """The team the update starts itself: `workers` ranks on this host."""
        return cls(resolve_workers(config))

    @classmethod
    def torchrun(cls) -> Team | None:
        """torchrun's ranks (RANK, WORLD_SIZE, MASTER_ADDR in the environment), joined; None unless
        torchrun started this process as one of several."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
            return None
        replicas = Replicas.join("env://", int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
        return cls(replicas.world, replicas)

    def start(self, config: Config, night: dict) -> Replicas:
        """Start the helper ranks (unless torchrun did), meet them, and hand every rank the night."""
        if config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} does not split evenly over {self.world} ranks")
        if self.replicas is None:
            self._start_helpers(config)
        assert self.replicas is not None, "torchrun's, or joined by _start_helpers"
        self.deadline = time.monotonic() + night["budget_s"] + BUDGET_GRACE_S  # the budget counts from here
        self.replicas.patience = Patience(should_stop=self.should_stop, deadline=self.deadline)
        if self.helpers:
            threading.Thread(target=self._watch, name="ranks-watchdog", daemon=True).start()
        self.replicas.broadcast(night)
        self.sent = True
        log.info("training on %d ranks of %d rows each", self.world, config.batch_size // self.world)
        return self.replicas

    def _start_helpers(self, config: Config) -> None:
        threads = max(1, usable_cores() // self.world)
        remove_stale_stores(config.data_dir)
        self.store = config.data_dir / f".ranks-{os.getpid()}-{secrets.token_hex(4)}"
        env = {**os.environ, **QUIET_TORCH, "OMP_NUM_THREADS": str(threads)}
        for rank in range(1, self.world):
            argv = [str(self.store), str(rank), str(self.world), str(os.getpid()), config.log_level]
            helper = subprocess.Popen(
                [sys.executable, "-m", "engram_ff.daemon.ranks", *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                process_group=self.group or 0,  # the first helper leads the group, the others join it
            )
            self.group = self.group or helper.pid
            self.helpers.append(helper)
        torch.set_num_threads(threads)
        self.replicas = self._meet()

    def _meet(self) -> Replicas:
        """The rendezvous, on a thread of its own while this one watches: a helper that dies or hangs
        before it joins, or a stop, must not hold rank 0 in init_process_group for TIMEOUT."""
        joined: dict = {}

        def join() -> None:
            try:
                joined["replicas"] = Replicas.join(f"file://{self.store}", 0, self.world, loopback=True)
            except BaseException as exc:  # handed to the waiting thread, which raises it
                joined["error"] = exc

        thread = threading.Thread(target=join, name="rendezvous", daemon=True)
        thread.start()
        started = time.monotonic()
        stop_seen = None
        patience = Patience(should_stop=self.should_stop)  # starting a helper on a busy machine can take a while
        while thread.is_alive():
            thread.join(0.05)
            now = time.monotonic()
            if stop_seen is None and self.should_stop():
                stop_seen = now
            dead = [h for h in self.helpers if h.poll() is not None]
            reason = "a helper rank exited before it joined" if dead else patience.give_up(started, now, stop_seen)
            if reason is not None and thread.is_alive():
                raise Unanswered(f"rank 0 of {self.world}: the ranks did not meet: {reason}")
        if "error" in joined:
            raise joined["error"]
        return joined["replicas"]

    def _watch(self) -> None:
        """The collectives this thread cannot wait for in small steps (DistributedDataParallel's, under the
        BP trainer, wait inside backward()): past the deadline by STOP_GRACE_S with training not finished,
        the helpers are killed, so that rank 0's collective fails at once instead of after TIMEOUT."""
        assert self.deadline is not None and self.group is not None, "started once the helpers met"
        while not self.finished:
            if time.monotonic() > self.deadline + STOP_GRACE_S:
                log.error("the ranks are past the budget and did not finish: ending the helper ranks")
                self.timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.group, signal.SIGKILL)
                return
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the helpers' process group (a stopped process dies of it too), and reap them."""
        if self.group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.group, signal.SIGKILL)
        for helper in self.helpers:
            with contextlib.suppress(OSError):
                helper.kill()
            helper.wait()

    def follow(self) -> int:
        """A rank other than 0 under torchrun: train as rank 0 says, then leave the group."""
        stop = stop_flag()
        assert self.replicas is not None, "torchrun's team is made with its replicas"
        try:
            return follow(self.replicas, should_stop=lambda: stop["requested"])
        except Exception as exc:  # rank 0's failure reaches us as a broken collective
            raise RankFailed(f"rank {self.rank} of {self.world} stops: {first_line(exc)}") from None
        finally:
            self.replicas.close()

    def abort(self, exc: Exception) -> Exception:
        """The update failed: end the helpers, which may wait in a collective that will never come. If one
        of them had died first, that is why: the failure names it rather than the broken collective."""
        self.aborted = True  # finish() must not wait on a collective with ranks that are gone
        died, hung = [], []
        for rank, helper in enumerate(self.helpers, start=1):
            if isinstance(exc, Unanswered) and helper.poll() is None:
                how = "stopped" if process_state(helper.pid) == "T" else "running"
                hung.append(f"rank {rank} of {self.world} (pid {helper.pid}, {how}) did not answer")
                continue
            try:
                code = helper.wait(HELPER_DEATH_S)  # a killed helper's sockets close as it exits: wait for it
            except subprocess.TimeoutExpired:
                continue
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            died.append(f"rank {rank} of {self.world} (pid {helper.pid}) died ({how})")
        self.kill()
        if self.timed_out:
            return RankFailed(f"the ranks were past the budget and did not finish: ended ({first_line(exc)})")
        if died:
            return RankFailed("; ".join(died) + ", and the others cannot train without it")
        if hung:
            return RankFailed(f"{'; '.join(hung)}: given up and killed ({exc})")
        if isinstance(exc, Unanswered):
            return RankFailed(str(exc))
        if isinstance(exc, torch.distributed.DistError):  # gloo's words, several lines with its source paths
            return RankFailed(f"rank 0 of {self.world}: a collective failed: {gloo_words(exc)}")
        return exc

    def finish(self) -> None:
        """Release torchrun's ranks if no night reached them, let our helpers exit, leave the group. Once."""
        if self.finished:
            return
        self.finished = True
        try:
            if self.replicas is not None and not self.sent and not self.aborted:
                self.replicas.broadcast(None)
        except Exception as exc:  # the update already failed or is ending: its own error is the one to say
            log.debug("releasing the ranks failed: %s", first_line(exc))
        finally:
            try:
                for helper in self.helpers:
                    try:
                        helper.wait(HELPER_EXIT_S)
                    except subprocess.TimeoutExpired:
                        log.warning("helper rank (pid %d) still runs after training; ending it", helper.pid)
                self.kill()  # the whole group, whatever it holds now
                if self.replicas is not None:
                    try:
                        self.replicas.close()
                    except Exception as exc:  # a group whose peer died: leaving it is all that is left to do
                        log.debug("leaving the process group failed: %s", first_line(exc))
            finally:  # the rendezvous file goes even if the wait above is interrupted (a second Ctrl-C)
                if self.store is not None:
                    self.store.unlink(missing_ok=True)
                torch.set_num_threads(self.threads)


class RankFailed(RuntimeError):
    """This rank cannot go on: another rank died, or the group could not meet."""


def first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else repr(exc)


def gloo_words(exc: BaseException) -> str:
    """The first line of a gloo error, without the C++ source position it starts with."""
    return re.sub(r"^\[[^\]]*\.(?:cc|cpp|h):\d+\]\s*", "", first_line(exc))


def process_state(pid: int) -> str:
    """The state letter of /proc/PID/stat (R, S, T for stopped, Z...), or "" if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def remove_stale_stores(data_dir: Path) -> None:
    """The rendezvous files a killed update left (one update runs at a time). Anything else at such a name
    (a folder, a FIFO) is not ours to remove: said in one line and left, since each update's store has a
    name of its own (issue #20.3)."""
    for stale in data_dir.glob(".ranks-*"):
        try:
            mode = stale.lstat().st_mode
            if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                stale.unlink(missing_ok=True)
            else:
                log.warning("%s is not a rendezvous file engram-ff left (not a regular file): skipped", stale)
        except OSError as exc:
            log.warning("cannot remove the stale rendezvous file %s (%s): skipped", stale, exc.strerror)


def night_for_ranks(trainer, config: Config, text: tuple[bytes, bytes, bytes], seed: int, budget_s: float, steps: int):
    """What every other rank needs to train exactly as rank 0 does: picklable, tensors included."""
    return {
        "config": config,
        "new_text": text[0],
        "replay": text[1],
        "rehearse": text[2],
        "seed": seed,
        "budget_s": budget_s,
        "steps": steps,
        # the helpers train the SSM layers only: the context memory (64 MiB) learns on rank 0 after them
        "model_config": {**trainer.model.config.to_dict(), "memory_bits": 0},
        "model": {k: v for k, v in trainer.model.state_dict().items() if not k.startswith("memory.")},
        "trainer_kind": trainer.kind,
        "trainer": trainer.state_dict(),
        "lr": trainer.lr,
        "layer_lr": list(trainer.layer_lr),
        "loss_rows": list(getattr(trainer, "loss_rows", [])),
    }


def follow(replicas: Replicas, should_stop=lambda: False) -> int:
    """A rank other than 0: take the night from rank 0, train on this rank's shards, and return."""
    night = replicas.broadcast()
    if night is None:
        return 0
    assert isinstance(night, dict), "rank 0 broadcasts the night as a dict (Team.start)"
    model = FFLM(LMConfig.from_dict(night["model_config"]))
    model.load_state_dict(night["model"])
    trainer = TRAINERS[night["trainer_kind"]](model)
    trainer.load_state_dict(night["trainer"])
    trainer.lr, trainer.layer_lr = night["lr"], night["layer_lr"]
    if night["loss_rows"]:
        assert isinstance(trainer, FFTrainer), "only FF's trainer has loss rows to send"
        trainer.loss_rows = night["loss_rows"]
    trainer.distribute(replicas)
    generator = torch.Generator().manual_seed(night["seed"])
    batches, _ = recipe.update_batches(
        night["new_text"], night["replay"], night["config"], generator, replicas.world, night["rehearse"]
    )
    result = train(trainer, batches, night["budget_s"], night["steps"], should_stop=should_stop, replicas=replicas)
    log.debug("rank %d: %d steps", replicas.rank, result.steps)  # rank 0's log says it for all
    return 0


def stop_flag() -> dict:
    """SIGTERM and SIGINT ask for a stop (systemd and Ctrl-C signal every rank): the ranks agree on it
    at the next step, so that rank 0 saves a checkpoint and every rank leaves training together."""
    stop = {"requested": False}

    def on_signal(signum, frame):
        stop["requested"] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def main() -> int:
    """A helper rank: `python -m engram_ff.daemon.ranks STORE RANK WORLD PARENT_PID LOG_LEVEL`, started by
    rank 0, which it dies with: it holds nothing that a checkpoint does not."""
    store, rank, world, parent, level = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        return 1  # rank 0 died before the line above
    setup_logging(level)
    adapt_torch()
    stop = stop_flag()
    try:
        replicas = Replicas.join(f"file://{store}", rank, world, loopback=True)
        replicas.patience = Patience(should_stop=lambda: stop["requested"])
        try:
            return follow(replicas, should_stop=lambda: stop["requested"])
        finally:
            replicas.close()
    except Exception as exc:  # the others' failure reaches us as a broken collective: one line, not a traceback
        log.error("rank %d of %d stops: %s", rank, world, gloo_words(exc))
        return 1
    except KeyboardInterrupt:
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
