"""`engram-ff status`: is a daemon running, what has been read, what the model is, and when it learns next.

Short whatever the folder holds: totals, then the newest days and the files read last, each a few rows,
so 100,000 files print as many lines as ten; `--verbose` lists every file, day and event. Read-only: it
opens an existing database and writes nothing (a run whose process died shows as such, without being
marked).
"""

from __future__ import annotations

import math
from pathlib import Path

from engram_ff.daemon import schedule
from engram_ff.daemon.config import Config
from engram_ff.daemon.gate import alarm, gate_line
from engram_ff.daemon.lock import holder
from engram_ff.daemon.output import duration, moment, printable, run_name, size, suggest, table
from engram_ff.state import queries, runs

RECENT_DAYS = 7
RECENT_ROWS = 5


def gather(db, config: Config, *, verbose: bool = False) -> dict:
    """Every fact `status` shows, as plain values (what `--json` prints)."""
    messages = queries.message_summary(db)
    since = queries.newest_days_from(db, RECENT_DAYS)
    last_update = runs.last_update(db)
    pid = holder(config.lock_path)
    watch = config.watch
    if pid is not None and (daemons := queries.remembered(db).get("watch_dir")):
        watch = Path(daemons)  # what the running daemon recorded at its start, whatever this shell's flags say
    facts = {
        "database": str(config.db_path),
        "daemon": {"running": pid is not None, "pid": pid or None},
        "watch_dir": str(watch),
        "watch_dir_exists": watch.is_dir(),
        "facts_file": str(config.facts_file) if config.facts_file else None,
        "files": queries.file_totals(db),
        "messages": messages,
        "quarantine": queries.counts(db)["quarantine"],
        "last_update": runs.decoded(last_update),
        "running": [runs.decoded(r) for r in runs.running_runs(db)],
        "next_update": _next_update(db, config, daemon_running=pid is not None),
        "current_checkpoint": _current(db),
        "learned_by_day": _by_day(db, config),
        "waiting": _waiting(db, config),
        "gate_alarm": alarm(db),
        "days": queries.day_splits(db) if verbose else queries.day_splits_since(db, since),
        "events": queries.event_counts(db) if verbose else queries.event_counts_since(db, since),
        "files_read_last": queries.files(db, None if verbose else RECENT_ROWS),
        "unreadable_files": queries.unreadable_files(db, 1_000_000 if verbose else RECENT_ROWS),
        "latest_quarantined": queries.quarantine(db, 1_000_000 if verbose else RECENT_ROWS),
    }
    return facts


def _current(db) -> dict | None:
    """The current model's checkpoint row, and the run that made it as people name it ('update 3 (run 5)')."""
    current = runs.current_checkpoint(db)
    return None if current is None else {**current, "made_by": run_name(runs.get_run(db, current["run_id"]))}


def _by_day(db, config: Config) -> dict | None:
    """What the memory has learned by day over the current checkpoint (daemon/today.py); None when nothing,
    or when learn_by_day is off."""
    current = runs.current_checkpoint(db)
    if current is None or not config.learn_by_day:
        return None
    return runs.by_day_since(db, current["id"])


def _waiting(db, config: Config) -> dict | None:
    """New text the last successful update left for later nights (a night takes at most update_max_new_mib)."""
    done = runs.last_successful_update(db)
    if done is None or not done["waiting_bytes"]:
        return None
    night = config.update_max_new_mib * (1 << 20)
    return {
        "update": done["id"],
        "name": run_name(done),
        "bytes": done["waiting_bytes"],
        "nights": math.ceil(done["waiting_bytes"] / night),
    }


def _next_update(db, config: Config, *, daemon_running: bool) -> dict:
    nightly = schedule.next_nightly(config)
    catch_up = schedule.overdue(runs.last_successful_update(db))
    return {
        "nightly_at": nightly.isoformat(timespec="minutes"),
        "catch_up_at_start": catch_up,
        "daemon_running": daemon_running,
    }


FACTS_EXAMPLE = """\
  [[fact]]
  name = "sister-city"
  prompt = "user: Where does my sister live?\\nassistant: "
  answer = "Your sister lives in Porto."
  distractors = ["Your sister lives in Leeds.", "Your sister lives in Oslo."]"""


def render(facts: dict, *, verbose: bool = False, data: str | None = None) -> str:
    lines = [_summary(facts, data)]
    if not facts["facts_file"]:
        lines += [
            "",
            "No fact probes: write the facts your model should learn from your chats in a TOML file, e.g.",
            FACTS_EXAMPLE,
            "and name it as facts_file (in --config's file, or ENGRAM_FF_FACTS_FILE=~/facts.toml); every update "
            "then scores each answer, and `learned` and `history` show whether it was learned.",
        ]
    if facts["gate_alarm"]:
        lines.insert(0, f"WARNING: {facts['gate_alarm']}\n")
    sections = [
        ("newest days" if not verbose else "days", _days(facts["days"]), ["day", "split", "messages", "bytes"]),
        (
            "files read last" if not verbose else "files",
            _files(facts["files_read_last"], verbose),
            _file_columns(verbose),
        ),
        ("unreadable files", facts["unreadable_files"], ["path", "last_seen", "error"]),
        ("latest quarantined lines", facts["latest_quarantined"], ["path", "line_offset", "length", "reason"]),
        ("events" + ("" if verbose else ", newest days"), facts["events"], ["day", "type", "action", "count"]),
    ]
    for title, rows, columns in sections:
        if rows:
            lines += ["", f"{title}:", table(rows, columns)]
    if not verbose and facts["files"]["files"] > RECENT_ROWS:
        lines += ["", f"{suggest('status --verbose', data)} lists every file, day and event."]
    return "\n".join(lines)


def _days(rows: list[dict]) -> list[dict]:
    return [{**r, "bytes": size(r["bytes"])} for r in rows]


def _file_columns(verbose: bool) -> list[str]:
    return (
        ["path", "size", "pending", "generation", "messages", "last_seen", "error"]
        if verbose
        else [
            "path",
            "size",
            "pending",
            "last_seen",
            "error",
        ]
    )


def _files(rows: list[dict], verbose: bool) -> list[dict]:
    """Sizes and times for people; `pending` is the bytes after the last newline (a line being written)."""
    return [
        {**r, "size": size(r["size"]), "pending": size(r["pending"]), "last_seen": moment(r["last_seen"])} for r in rows
    ]


def _summary(facts: dict, data: str | None = None) -> str:
    f, m, daemon = facts["files"], facts["messages"], facts["daemon"]
    rows = [
        ("database", facts["database"]),
        ("daemon", f"running (pid {daemon['pid']})" if daemon["running"] else "not running"),
        ("next update", _next_line(facts["next_update"], data)),
        (
            "watching" if daemon["running"] else "watch folder",
            f"{facts['watch_dir']}" + ("" if facts["watch_dir_exists"] else " (does not exist)"),
        ),
        ("facts", facts["facts_file"] or "none probed (below: how to write them)"),
        (
            "files",
            f"{f['files']:,} ({size(f['committed'] + f['pending'])}), {size(f['pending'])} waiting for a newline"
            + (f", {f['errors']:,} unreadable" if f["errors"] else ""),
        ),
        ("messages", _messages_line(m)),
        ("quarantine", f"{facts['quarantine']:,} line{'s' if facts['quarantine'] != 1 else ''}"),
        ("last update", _update_line(facts["last_update"], facts["running"])),
        ("model", _model_line(facts["current_checkpoint"])),
    ]
    if learned := facts["learned_by_day"]:
        rows.append(
            (
                "today",
                f"{size(learned['bytes'])} learned by day over the checkpoint, "
                f"through message {learned['through_id']:,}, {moment(learned['at'])}"
                + ("" if learned["bpb"] is None else f"; {learned['bpb']:.2f} bits per byte before learning it")
                + (
                    f"; {learned['refused']:,} call{'s' if learned['refused'] != 1 else ''} not kept, the newest "
                    f"{learned['refused_why']}"
                    if learned["refused"]
                    else ""
                ),
            )
        )
    if waiting := facts["waiting"]:
        rows.append(
            (
                "waiting to train",
                f"{size(waiting['bytes'])} of newer text left by {waiting['name']}: "
                f"about {waiting['nights']} more night{'s' if waiting['nights'] != 1 else ''} at update_max_new_mib",
            )
        )
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {printable(value)}" for label, value in rows)


def _next_line(next_update: dict, data: str | None = None) -> str:
    nightly = moment(next_update["nightly_at"])
    if next_update["daemon_running"]:
        return f"{nightly} (the running daemon's nightly update)"
    when = "at once, as none succeeded in the last day" if next_update["catch_up_at_start"] else f"at {nightly}"
    return f"none while no daemon runs; {suggest('run', data)} (or the service) updates {when}"


def _messages_line(m: dict) -> str:
    total = m["train"] + m["probe"]
    if not total:
        return "none yet"
    span = f"{m['first_day']} to {m['last_day']}" if m["days"] > 1 else m["first_day"]
    day_word = "day" if m["days"] == 1 else "days"
    held = f"{m['probe']:,} held out for a night first"  # the rolling hold-out (daemon/update.py)
    return f"{total:,} ({m['train']:,} trained at once, {held}) over {m['days']:,} {day_word}, {span}"


def _update_line(last: dict | None, running: list[dict]) -> str:
    if last is None:
        return "none yet"
    if last["status"] == "running":
        state = next((r for r in running if r["id"] == last["id"]), None)
        if state is not None and not state["alive"]:
            return f"{run_name(last)} interrupted: its process died (started {moment(last['started_at'])})"
        return f"{run_name(last)} running since {moment(last['started_at'])}"
    words = f"{run_name(last)} {last['status']}, {moment(last['ended_at'])}, took {duration(last['wall_seconds'])}"
    if last["new_bytes"]:
        words += f": {size(last['new_bytes'])} new, {last['steps'] or 0:,} steps"
    if last.get("gate"):
        words += f"; gate: {gate_line(last)}"
    elif last["error"] and last["status"] != "ok":
        words += f" ({last['error']})"
    return words


def _model_line(current: dict | None) -> str:
    if current is None:
        return "none yet (a fresh model is built by the first update)"
    steps = f"{current['steps']:,} steps"
    return f"checkpoint {current['id']} of {current['made_by']}, {steps}, {moment(current['created_at'])}"
