"""Retention, forgetting, canary and fact probes, each score one row of `probe_scores`.

Scores are bits per byte, lower is better. For day d at checkpoint k:
  retention   probe_bpb (d's probe split) and trained_bpb (a fixed sample of d's train text); at most
              `probe_max_days` days a pass (probed_days), so a pass costs the same in any month;
  canary      canary_bpb: the first CANARY_BYTES of probe-split text ever stored, the same text every night;
  forgetting  score now minus the best score any earlier checkpoint had on d (Chaudhry et al. 2018,
              in loss form: positive means forgotten), averaged over the days before the newest;
  backward transfer (GEM, Lopez-Paz and Ranzato 2017): mean over days before the newest of
              (score when d was first probed - score now); positive means later learning helped d.

The probe split is a rolling hold-out (daemon/update.py): a day's probe-split messages are held out of the
night that first sees them and trained by the next promoted night. So probe_bpb of the newest day is
held-out text (what that night generalised to), while for older days, and the canary, it measures retained
knowledge of text trained one night after it arrived, as trained_bpb does for text trained the night it
arrived; forgetting and backward transfer are about what was learned and kept. A day's first probe_bpb is
taken before its probe messages were trained, so its backward transfer counts the night that trained them.
The text neither model trained on is the gate's `fresh` check (daemon/gate.py), scored by the update.
"""

from __future__ import annotations

import hashlib
import logging
import math

from engram_ff.daemon.config import Config
from engram_ff.daemon.facts import FactsError, load_facts
from engram_ff.model.scoring import rank_among
from engram_ff.model.train import evaluate_nats
from engram_ff.state import queries, runs

log = logging.getLogger(__name__)

LN2 = math.log(2)
CANARY_BYTES = 16384  # as much held-out text as four probed days (probe_max_bytes each): an eighth of a full pass


class ProbesStopped(Exception):
    """should_stop() said so between two days: the pass records nothing."""


def text_hash(*parts: bytes) -> int:
    """64 bits of blake2b of what a score was taken on: two passes compare only on the same text."""
    digest = hashlib.blake2b(digest_size=8)
    for part in parts:
        digest.update(len(part).to_bytes(8, "big") + part)
    return int.from_bytes(digest.digest(), "big", signed=True)


def probed_days(days: list[str], max_days: int) -> list[str]:
    """Which of `days` (oldest first) a pass scores: all of them up to max_days; beyond, the newest half
    of max_days and the older days whose index is a multiple of a power-of-two stride, the smallest that
    keeps them within the other half. The set is stable from night to night (a day stays in until the
    stride doubles, and then the new set is a subset of the old one), so the gate finds last night's
    scores for most older days, and the oldest day is always scored."""
    if len(days) <= max_days:
        return list(days)
    room = max_days // 2  # for older days
    older = len(days) - (max_days - room)
    if room == 0:
        return days[older:]
    stride = 1
    while -(-older // stride) > room:  # ceil(older / stride) days at multiples of the stride
        stride *= 2
    return days[:older:stride] + days[older:]


def probe(
    db, config: Config, model, *, run_id: int, checkpoint_id: int | None, should_stop=lambda: False
) -> list[dict]:
    """Score the probed days, the canary and every fact with `model`, record the rows in one transaction,
    return them."""
    model.eval()
    rows: list[dict] = []

    def add(probe_name: str, kind: str, metric: str, value: float, day: str | None = None, text=None) -> None:
        rows.append(_row(probe_name, kind, metric, value, day, text))

    days = probed_days(queries.days(db), config.probe_max_days)
    for day in days:
        if should_stop():
            raise ProbesStopped
        for split, metric in (("probe", "probe_bpb"), ("train", "trained_bpb")):
            text = queries.day_text(db, day, split, max_bytes=config.probe_max_bytes)
            if len(text) >= 2:
                add(
                    "retention",
                    "probe" if split == "probe" else "trained",
                    metric,
                    evaluate_nats(model, text) / LN2,
                    day,
                    text_hash(text),
                )
    rows += canary_and_facts(db, config, model)

    if checkpoint_id is not None:
        for metric in ("probe_bpb", "trained_bpb"):
            now = {r["day"]: r["value"] for r in rows if r["metric"] == metric}
            best = runs.best_earlier(db, metric, checkpoint_id)
            first = runs.first_scores(db, metric)
            older = [day for day in sorted(now)[:-1] if day in best]
            for day in older:
                add("forgetting", "forgetting", f"forgetting_{metric}", now[day] - best[day], day)
            if older:
                add(
                    "forgetting",
                    "summary",
                    f"avg_forgetting_{metric}",
                    sum(now[d] - best[d] for d in older) / len(older),
                )
                add(
                    "forgetting",
                    "summary",
                    f"bwt_{metric}",
                    sum(first[d] - now[d] for d in older if d in first) / len(older),
                )
            if now:
                add("retention", "summary", f"avg_{metric}", sum(now.values()) / len(now))

    for row in rows:
        row.update(run_id=run_id, checkpoint_id=checkpoint_id)
    runs.record_scores(db, rows)
    facts = sum(row["metric"] == "answer_bpb" for row in rows)
    log.info("probed %d days and %d facts: %d scores", len(days), facts, len(rows))
    return rows


def canary_and_facts(db, config: Config, model) -> list[dict]:
    """The pass's canary and fact rows (without run or checkpoint): what the gate holds a model to that costs
    little to score, so that learning by day can be held to it too (daemon/today.py)."""
    rows = []
    canary = queries.text_since(db, 0, split="probe", max_bytes=CANARY_BYTES)[0]
    if len(canary) >= 2:
        rows.append(_row("canary", "canary", "canary_bpb", evaluate_nats(model, canary) / LN2, text=text_hash(canary)))
    for fact in _facts(config):
        prompt, answer = fact["prompt"].encode(), fact["answer"].encode()
        distractors = [d.encode() for d in fact.get("distractors", [])]
        try:  # one fact that cannot be scored costs its own two rows, never the pass's other scores
            bpb, rank = rank_among(model, prompt, answer, distractors)
        except Exception as exc:
            log.error("fact probe %r not scored: %s: %s", fact["name"], type(exc).__name__, exc)
            continue
        asked = text_hash(prompt, answer, *distractors)
        rows.append(_row(fact["name"], "fact", "answer_bpb", bpb, text=asked))
        rows.append(_row(fact["name"], "fact", "answer_rank", rank, text=asked))
    return rows


def _row(probe_name: str, kind: str, metric: str, value: float, day: str | None = None, text=None) -> dict:
    value = float(value)
    if math.isnan(value):  # a diverged model: infinitely bad, which the gate rejects (SQLite stores NaN as NULL)
        value = math.inf
    return dict(probe=probe_name, kind=kind, day=day, metric=metric, value=value, text_hash=text)


def _facts(config: Config) -> list[dict]:
    """The facts file as it is now (the daemon checked it at start and reload, but it may have been edited
    since): if it went bad, the pass goes on without facts and says why."""
    try:
        return load_facts(config.facts_file)
    except FactsError as exc:
        log.error("fact probes skipped this pass: %s", exc)
        return []
