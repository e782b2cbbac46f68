"""When updates run: nightly at `schedule` (local time), and at once when a daemon starts and the last
successful update is more than a day old. The service schedules by these rules, `status` reports them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from apscheduler.triggers.cron import CronTrigger

from engram_ff.daemon.config import Config

PERIOD = timedelta(days=1)


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
