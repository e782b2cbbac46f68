"""`engram-ff learned`: what the last night learned, in a few lines a person reads over coffee.

The last update that trained: the days its new text came from, how much it read and replayed, its
steps and time, the promotion gate's decision where a gate recorded one (`runs.gate`, JSON), and the
scores that moved most between the model it grew from and the model it made (the newest probe pass on
each). Read-only.
"""

from __future__ import annotations

import orjson

from engram_ff.daemon.output import duration, moment, number, printable, run_name, size, suggest, table
from engram_ff.state import queries, runs

BIGGEST = 8
SCORED = ("probe_bpb", "answer_bpb")  # held-out text of a day, and a fact's answer: bits per byte


def gather(db) -> dict | None:
    """The facts (what `--json` prints); None if no update has trained yet."""
    run = runs.last_trained_update(db)
    if run is None:
        return None
    before = runs.checkpoint_scores(db, run["parent_checkpoint_id"])
    after = runs.checkpoint_scores(db, run["checkpoint_id"])
    return {
        "run": runs.decoded(run),
        "update": run_name(run),
        "gate": _gate(run),
        "days": queries.new_days(db, run["first_message_id"] or 0, run["last_message_id"] or 0),
        "changes": changes(before, after),
        "facts_first": {"before": _first(before), "after": _first(after)},
        "since": [
            {**{k: r[k] for k in ("id", "number", "status", "ended_at", "error")}, "update": run_name(r)}
            for r in runs.updates_after(db, run["id"])
        ],
    }


def _gate(run: dict) -> dict | None:
    """The gate's record of this update, if the database has a gate (runs.gate) and it decided."""
    raw = run.get("gate")
    if not raw:
        return None
    try:
        value = raw if isinstance(raw, dict) else orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {"decision": None, "reason": raw}
    return value if isinstance(value, dict) else {"decision": None, "reason": value}


def changes(before: list[dict], after: list[dict]) -> list[dict]:
    """Scores on both sides, biggest move first: a day's held-out bits per byte, a fact's answer's."""
    old = {(r["probe"], r["day"], r["metric"]): r["value"] for r in before if r["metric"] in SCORED}
    moved = []
    for r in after:
        if r["metric"] in SCORED:
            was = old.get((r["probe"], r["day"], r["metric"]))
            change = None if was is None else r["value"] - was
            moved.append({"probe": r["probe"], "day": r["day"], "metric": r["metric"]})
            moved[-1].update(before=was, after=r["value"], change=change)
    return sorted(moved, key=lambda r: -abs(r["change"]) if r["change"] is not None else 0.0)


def _first(scores: list[dict]) -> str | None:
    ranks = [r["value"] for r in scores if r["metric"] == "answer_rank"]
    return f"{sum(rank == 1 for rank in ranks)}/{len(ranks)}" if ranks else None


def render(facts: dict | None, data: str | None = None) -> str:
    if facts is None:
        return f"Nothing learned yet: no update has trained. {suggest('update', data)} runs one now."
    run, days = facts["run"], facts["days"]
    lines = [f"{facts['update']}, {moment(run['ended_at'])}: {_decision(run, facts['gate'])}"]
    if days:
        span = days[0]["day"] if len(days) == 1 else f"{days[0]['day']} to {days[-1]['day']}"
        n_messages = sum(d["messages"] for d in days)
        word = "day" if len(days) == 1 else "days"
        lines.append(f"new text: {size(run['new_bytes'])} in {n_messages:,} messages from {len(days)} {word}, {span}")
    elif run["resumed_from"]:
        lines.append(f"new text: {size(run['new_bytes'])} (it resumed run {run['resumed_from']})")
    lines.append(
        f"trained {run['steps'] or 0:,} steps in {duration(run['wall_seconds'])}, with {size(run['replay_bytes'])} of "
        f"older text replayed; checkpoint {run['checkpoint_id']}"
        + (
            f", grown from checkpoint {run['parent_checkpoint_id']}"
            if run["parent_checkpoint_id"]
            else ", a fresh model"
        )
    )
    facts_first = facts["facts_first"]
    if facts_first["after"]:
        was = f" (before: {facts_first['before']})" if facts_first["before"] else ""
        lines.append(f"facts ranked first among their distractors: {facts_first['after']}{was}")
    moved = [r for r in facts["changes"] if r["change"] is not None][:BIGGEST]
    if moved:
        lines += ["", "biggest changes, in bits per byte (lower is better):"]
        lines.append(
            table(
                [{**r, "day": r["day"] or "-", "change": f"{r['change']:+.3f}"} for r in moved],
                ["probe", "day", "metric", "before", "after", "change"],
            )
        )
    elif facts["changes"]:
        lines += ["", "first probe pass: nothing earlier to compare with"]
    for later in facts["since"]:
        why = f" ({later['error']})" if later["error"] else ""
        lines.append(f"since then: {later['update']} {later['status']}{why}")
    return "\n".join(printable(line) if "\n" not in line else line for line in lines)


def _decision(run: dict, gate: dict | None) -> str:
    if gate is None:
        return "kept (no promotion gate recorded a decision)" if run["status"] == "ok" else run["status"]
    decision = gate.get("decision") or run["status"]
    reason = gate.get("reason")
    scores = gate.get("scores")
    words = f"the gate's decision: {decision}" + (f", {reason}" if reason else "")
    if isinstance(scores, dict) and scores:
        words += " (" + ", ".join(f"{k} {number(float(v))}" for k, v in scores.items() if _is_number(v)) + ")"
    return words


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
