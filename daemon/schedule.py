"""When updates run: nightly at `schedule` (local time), and at once when a daemon starts and the last
successful update is more than a day old; with `update_until`, inside the night's window from `schedule`
to `update_until` an update may train until the window ends. The service schedules by these rules,
`status` reports them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from engram_ff.daemon.config import Config

PERIOD = timedelta(days=1)
# Of a window, what training leaves for the candidate's probes and the gate: bench learning's 35 kB nights
# probed in under a minute on 2 cores (bench/results/learning.md), a backlog night's sample in a few.
WINDOW_RESERVE_S = 600.0


def nightly_trigger(config: Config) -> CronTrigger:
    hour, minute = config.schedule_hour_minute
    return CronTrigger(hour=hour, minute=minute)


def next_nightly(config: Config, now: datetime | None = None) -> datetime:
    """The next scheduled update, in local time (the cron trigger's own arithmetic, DST included)."""
    now = now or datetime.now().astimezone()
    return nightly_trigger(config).get_next_fire_time(None, now)


def overdue(last_ok: dict | None, now: datetime | None = None) -> bool:
    """No successful update, or none in the last day: a starting daemon catches up at once."""
    if last_ok is None:
        return True
    return (now or datetime.now(UTC)) - datetime.fromisoformat(last_ok["ended_at"]) > PERIOD


def window_end(config: Config, now: datetime | None = None) -> datetime | None:
    """The end of the night's window if `now` lies inside one (a window may cross midnight), else None:
    no `update_until`, or a catch-up at noon, which keeps to update_budget_minutes."""
    if not config.update_until:
        return None
    now = now or datetime.now().astimezone()
    (sh, sm), (uh, um) = config.schedule_hour_minute, config.until_hour_minute
    for days_back in (0, 1):  # the window that began today, or the one that began yesterday evening
        start = (now - timedelta(days=days_back)).replace(hour=sh, minute=sm, second=0, microsecond=0)
        end = start.replace(hour=uh, minute=um)
        if end <= start:
            end += PERIOD
        if start <= now < end:
            return end
    return None


def training_seconds(config: Config, spent: float, now: datetime | None = None) -> float:
    """Seconds tonight's training may still take: inside a window, up to its end less WINDOW_RESERVE_S;
    otherwise what update_budget_minutes leaves after the `spent` seconds of earlier tries."""
    now = now or datetime.now().astimezone()
    end = window_end(config, now)
    if end is not None:
        return max(0.0, (end - now).total_seconds() - WINDOW_RESERVE_S)
    return max(0.0, config.update_budget_minutes * 60 - spent)
