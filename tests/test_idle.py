"""Using the night (issue 22.4): the window's budget, and pausing on battery or load, then resuming."""

import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from engram_ff.daemon import schedule, update
from engram_ff.daemon.child import Stop
from engram_ff.daemon.config import ConfigError, load_config
from engram_ff.daemon.idle import BUSY_WINDOW_S, TICKS, Conditions, busy_cpu_seconds, on_battery, tree_cpu_seconds
from engram_ff.daemon.service import Service
from engram_ff.state import runs
from tests.test_incremental import make, next_day  # noqa: F401  (the fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def supply(root: Path, name: str, **files: str) -> None:
    (root / name).mkdir(parents=True, exist_ok=True)
    for key, value in files.items():
        (root / name / key).write_text(value + "\n")


def test_on_battery_only_when_a_battery_discharges_and_no_mains_supply_is_online(tmp_path):
    power = tmp_path / "power_supply"
    assert not on_battery(power)  # no sysfs at all: a container
    supply(power, "AC", type="Mains", online="1")
    supply(power, "BAT0", type="Battery", status="Charging")
    assert not on_battery(power)
    (power / "BAT0" / "status").write_text("Discharging\n")
    assert not on_battery(power)  # the kernel reports mains online: it wins
    (power / "AC" / "online").write_text("0\n")
    assert on_battery(power)
    supply(power, "ucsi-source-psy-USBC000:001", type="USB", online="1")
    assert not on_battery(power)
    on_battery()  # whatever this machine has, it answers without an error


def test_our_process_tree_and_the_machine_count_cpu_time():
    busy, mine = busy_cpu_seconds(), tree_cpu_seconds(os.getpid())
    spin = "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"
    subprocess.run([sys.executable, "-c", spin], check=True)
    assert tree_cpu_seconds(os.getpid()) - mine > 0.3  # the waited-for child's time is ours
    assert busy_cpu_seconds() - busy > 0.3


def fake_proc(root: Path, ours: float, others: float) -> None:
    """A /proc with one process of ours (pid 100, its child 101) and one other (pid 200), busy as given."""
    ticks = round(ours * TICKS), round(others * TICKS)
    (root / "stat").parent.mkdir(parents=True, exist_ok=True)
    (root / "stat").write_text(f"cpu  {sum(ticks)} 0 0 500000 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")
    for pid, ppid, t in ((100, 1, ticks[0] // 2), (101, 100, ticks[0] - ticks[0] // 2), (200, 1, ticks[1])):
        (root / str(pid)).mkdir(exist_ok=True)
        (root / str(pid) / "stat").write_text(f"{pid} (a (b) c) S {ppid} 0 0 0 -1 0 0 0 0 0 {t} 0 0 0 20 0 1 0\n")


def test_other_work_pauses_an_update_only_over_a_whole_window_and_never_our_own(tmp_path, make):  # noqa: F811
    config, _ = make(pause_on_battery=False, pause_above_cores=1.0)
    now = [0.0]
    proc = tmp_path / "proc"
    fake_proc(proc, ours=0, others=0)
    conditions = Conditions(config, root_pid=100, proc=proc, clock=lambda: now[0])
    assert conditions.why_not() is None
    for t in (30.0, 60.0, 90.0):  # others at 1.5 cores, less than a window seen: no judgement yet
        now[0] = t
        fake_proc(proc, ours=0, others=1.5 * t)
        assert conditions.why_not() is None
        assert conditions.why_not(resuming=True) == "the load of other work is not known yet"
    now[0] = BUSY_WINDOW_S
    fake_proc(proc, ours=0, others=1.5 * BUSY_WINDOW_S)
    assert "other work kept 1.5 cores busy" in conditions.why_not()

    mine = Conditions(config, root_pid=100, proc=proc, clock=lambda: now[0])
    for t in (0.0, BUSY_WINDOW_S):  # the same machine load, all of it ours (the update and its ranks)
        now[0] = t
        fake_proc(proc, ours=1.9 * t, others=0)
        assert mine.why_not() is None

    quiet = Conditions(config, root_pid=100, proc=proc, clock=lambda: now[0])
    for t in (0.0, BUSY_WINDOW_S):  # 0.7 cores: below the limit, but above half of it, so a paused night waits
        now[0] = t
        fake_proc(proc, ours=0, others=0.7 * t)
        assert quiet.why_not() is None
    assert "0.7 cores" in quiet.why_not(resuming=True)


def test_without_proc_stat_no_load_is_known_and_none_holds_a_night(tmp_path, make, caplog):  # noqa: F811
    """The system unit's ProtectProc leaves /proc/stat readable; a sandbox that hides it (ProcSubset=pid) must
    not stop the nights, nor keep a night paused on battery from resuming."""
    config, _ = make(pause_on_battery=False, pause_above_cores=1.0)
    proc = tmp_path / "proc"
    proc.mkdir()
    assert busy_cpu_seconds(proc) is None
    conditions = Conditions(config, proc=proc)
    assert conditions.why_not() is None and conditions.why_not(resuming=True) is None
    assert "pause_above_cores has no effect" in caplog.text


def window_config(tmp_path, **fields):
    return load_config(environ={}, data_dir=str(tmp_path), **fields)


def test_the_nights_window_gives_the_training_its_time_and_a_catch_up_at_noon_the_usual_budget(tmp_path):
    tz = timezone(timedelta(hours=1))
    config = window_config(tmp_path, schedule="23:00", update_until="06:00", update_budget_minutes=12)
    at = lambda h, m=0, day=4: datetime(2026, 12, day, h, m, tzinfo=tz)  # noqa: E731
    assert schedule.window_end(config, at(23, 30)) == at(6, day=5)
    assert schedule.window_end(config, at(1)) == at(6)
    assert schedule.window_end(config, at(12)) is None
    assert schedule.window_end(config, at(6)) is None  # its end is outside it
    assert schedule.training_seconds(config, 0, at(1)) == 5 * 3600 - schedule.WINDOW_RESERVE_S
    assert schedule.training_seconds(config, 300, at(12)) == 12 * 60 - 300
    assert schedule.training_seconds(config, 0, at(5, 55)) == 0  # the probes' reserve is all that is left
    plain = window_config(tmp_path, schedule="03:00")
    assert schedule.window_end(plain, at(3, 30)) is None
    assert schedule.training_seconds(plain, 60, at(3, 30)) == 11 * 60


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"update_until": "25:00"}, "update_until: expected local time HH:MM"),
        ({"update_until": "03:00"}, "the window from schedule to update_until is empty"),
        ({"pause_above_cores": "-1"}, "pause_above_cores: must be >= 0"),
        ({"pause_on_battery": "sometimes"}, "pause_on_battery (from argument pause_on_battery=): expected true"),
    ],
)
def test_a_bad_window_or_pause_setting_is_refused_by_name(tmp_path, fields, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace(")", r"\)")):
        window_config(tmp_path, schedule="03:00", **fields)


def test_a_night_paused_on_battery_saves_its_steps_and_the_next_try_resumes_them(tmp_path, make):  # noqa: F811
    config, db = make(pause_on_battery=True)
    assert update.run_update(config)["status"] == "ok"
    next_day(config, db)
    power = tmp_path / "power_supply"
    supply(power, "AC", type="Mains", online="1")
    supply(power, "BAT0", type="Battery", status="Charging")
    conditions = Conditions(config, power=power)
    asked, check = [0], conditions.why_not

    def unplugged_after_three_steps(**kw):
        asked[0] += 1
        if asked[0] == 4:
            (power / "AC" / "online").write_text("0\n")
            (power / "BAT0" / "status").write_text("Discharging\n")
        return check(**kw)

    conditions.why_not = unplugged_after_three_steps
    paused = update.run_update(config, should_stop=Stop(conditions))
    assert (paused["status"], paused["error"]) == ("interrupted", "paused: the machine runs on battery")
    partial = runs.get_checkpoint(db, paused["checkpoint_id"])
    assert partial["kind"] == "partial" and 0 < paused["steps"] < 6

    (power / "AC" / "online").write_text("1\n")
    resumed = update.run_update(config, should_stop=Stop(Conditions(config, power=power)))
    assert resumed["status"] == "ok" and resumed["resumed_from"] == paused["id"]
    assert resumed["steps"] == 6  # the paused steps count: the night is not started over


def test_the_daemon_postpones_a_night_on_battery_and_resumes_it_on_mains_power(tmp_path, make):  # noqa: F811
    if on_battery():
        pytest.skip("this machine runs on battery: the update child would pause too")
    config, db = make(pause_on_battery=True)
    power = tmp_path / "power_supply"
    supply(power, "AC", type="Mains", online="0")
    supply(power, "BAT0", type="Battery", status="Discharging")
    service = Service(config, lambda: config)
    service.conditions = Conditions(config, power=power)
    assert service.run_update() is None
    assert service.paused == "the machine runs on battery" and runs.last_update(db) is None
    assert service.status_line(None).startswith("update paused (the machine runs on battery)")

    scheduler = BackgroundScheduler()
    scheduler.start()
    try:
        service.resume_if_free(scheduler)
        assert service.paused is not None and not scheduler.get_jobs()  # still on battery: nothing to do
        (power / "AC" / "online").write_text("1\n")
        service.resume_if_free(scheduler)
        assert service.paused is None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (
            runs.last_update(db) is None or runs.last_update(db)["status"] == "running" or service.update_lock.locked()
        ):
            time.sleep(0.2)
    finally:
        scheduler.shutdown(wait=True)
    assert runs.last_update(db)["status"] == "ok"
