"""The promotion gate: a night's candidate becomes the current model only if it is not worse than the
current one beyond the configured tolerances, on four checks, three of them from the night's probe pass:

  held_out  probe_bpb, the probe-split text of the days both models were scored on;
  facts     answer_bpb, the mean over the facts the current model knows of their answers' bits per
            byte: rank alone hid a collapse from 0.0008 to 4.10 (issue 12). A fact it does not know cannot
            be forgotten: in the tests, on text that never mentions them, the answers of facts ranked first
            by chance swung by 2.8 bits per byte between two normal nights. So a fact counts as known when
            the current model ranks its answer first AND predicts it better than the held-out text of its
            days (mean probe_bpb of its pass; since the hold-out rolls, mostly text trained one night
            later, so the bar is a little stricter than unseen text): it learned the answer, not just the language;
  canary    canary_bpb, the oldest probe-split text, the same every night, whose score must not jump;
  fresh     fresh_bpb, the night's own held-out messages (its new probe-split ones), scored on both models by
            the update (daemon/update.py _judge) rather than by the probe pass: the one text neither model
            trained on, so the one check of generalisation rather than of retention.

The hold-out rolls (daemon/update.py): a probe-split message is held out of the night that first sees it and
trained by the next promoted night. So the held-out text of older days, and the canary, were trained one
night after they arrived: on them the candidate and the current model both trained (except for the day or
two whose held-out messages tonight's candidate trained and the current model did not, which favour the
candidate), and these checks ask whether the candidate kept what the current model knew. Tonight's held-out
messages are the `fresh` check, held to gate_tolerance_bpb like the other held-out text.

Each check compares the candidate's scores with the current model's newest pass on exactly the same
texts (same day or fact and the same text_hash), as a mean over what both scored, so a day whose text
grew since, a day not probed, or a fact that changed is left out, never compared with another text.
A check with nothing in common passes and says so. A first model has nothing to be compared with and
is promoted. The decision, its reason and every check's numbers are stored as runs.gate (JSON).
"""

from __future__ import annotations

import math

import orjson

from engram_ff.daemon.config import Config
from engram_ff.state import runs

# (check, metric, how a score row is keyed, the configuration key of its tolerance)
CHECKS = (
    ("held_out", "probe_bpb", ("day", "text_hash"), "gate_tolerance_bpb"),
    ("facts", "answer_bpb", ("probe", "text_hash"), "gate_facts_tolerance_bpb"),
    ("canary", "canary_bpb", ("text_hash",), "gate_canary_tolerance_bpb"),
    ("fresh", "fresh_bpb", ("text_hash",), "gate_tolerance_bpb"),
)
ALARM_AFTER = 3  # rejected updates in a row that `status`, STATUS=, the log and `history` call out loudly
LABELS = {
    "held_out": "held-out bits per byte",
    "facts": "facts' answer bits per byte",
    "canary": "canary",
    "fresh": "tonight's held-out bits per byte",
}


def comparable(reference: list[dict]) -> bool:
    """Can a probe pass serve as the reference? Passes recorded before the gate have no text hashes."""
    return any(row.get("text_hash") is not None for row in reference)


def _scores(rows: list[dict], metric: str, key: tuple[str, ...]) -> dict[tuple, float]:
    return {
        tuple(row[k] for k in key): row["value"]
        for row in rows
        if row["metric"] == metric and row.get("text_hash") is not None
    }


def _known_facts(reference: list[dict], key: tuple[str, ...]) -> set[tuple]:
    held_out = [row["value"] for row in reference if row["metric"] == "probe_bpb"]
    bar = sum(held_out) / len(held_out) if held_out else float("inf")
    ranks, answers = _scores(reference, "answer_rank", key), _scores(reference, "answer_bpb", key)
    return {k for k, rank in ranks.items() if rank == 1 and answers.get(k, bar) < bar}


def _check(candidate: list[dict], reference: list[dict], metric: str, key: tuple[str, ...], tolerance: float) -> dict:
    ours, theirs = _scores(candidate, metric, key), _scores(reference, metric, key)
    if metric == "answer_bpb":
        theirs = {k: v for k, v in theirs.items() if k in _known_facts(reference, key)}
    common = sorted(set(ours) & set(theirs), key=str)
    if not common:
        return {"compared": 0, "tolerance": tolerance, "passed": True}
    mean_candidate = sum(ours[k] for k in common) / len(common)
    mean_current = sum(theirs[k] for k in common) / len(common)
    delta = mean_candidate - mean_current
    return {
        "compared": len(common),
        "candidate": _number(mean_candidate),
        "current": _number(mean_current),
        "delta": _number(delta),
        "tolerance": tolerance,
        "passed": delta <= tolerance,  # False for a diverged candidate: its scores are inf (probes.py)
    }


def _number(value: float) -> float | None:
    """Rounded for the JSON; None where JSON has no number (inf: a candidate that diverged)."""
    return round(value, 4) if math.isfinite(value) else None


def decide(candidate: list[dict], reference: list[dict] | None, config: Config) -> dict:
    """The gate's decision on a candidate's probe rows against the current model's (None: no current model)."""
    if reference is None:
        return {"decision": "promoted", "reason": "the first model: there is none to compare it with", "checks": {}}
    checks = {
        name: _check(candidate, reference, metric, key, getattr(config, tolerance))
        for name, metric, key, tolerance in CHECKS
    }
    failed = [name for name, check in checks.items() if not check["passed"]]
    parts = [_describe(name, checks[name]) for name in (failed or checks)]
    reason = ("worse than the current model: " if failed else "") + "; ".join(parts)
    return {"decision": "rejected" if failed else "promoted", "reason": reason, "checks": checks}


def _describe(name: str, check: dict) -> str:
    if not check["compared"]:
        return f"{LABELS[name]}: nothing to compare"
    limit = f" > {check['tolerance']:g}" if not check["passed"] else ""
    delta = "+inf (diverged)" if check["delta"] is None else f"{check['delta']:+.3f}"
    return f"{LABELS[name]} {delta}{limit} ({check['compared']} compared)"


def alarm(db) -> str | None:
    """The loud line for `ALARM_AFTER` or more rejected updates in a row, else None."""
    rejected = runs.rejected_in_a_row(db)
    if rejected < ALARM_AFTER:
        return None
    return (
        f"{rejected} updates in a row rejected by the promotion gate: the model has not learned "
        "since the last promoted one (see docs/update.md, 'When the gate rejects')"
    )


def gate_line(run: dict) -> str:
    """An update row's gate decision as one line: 'promoted: ...' or 'rejected: ...'."""
    decision = run["gate"] if isinstance(run["gate"], dict) else orjson.loads(run["gate"])
    return f"{decision['decision']}: {decision['reason']}"
