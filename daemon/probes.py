"""Retention, forgetting and fact probes, each score one row of `probe_scores`.

Scores are bits per byte, lower is better. For day d at checkpoint k:
  retention   probe_bpb (d's held-out probe split) and trained_bpb (a fixed sample of d's train text);
  forgetting  score now minus the best score any earlier checkpoint had on d (Chaudhry et al. 2018,
              in loss form: positive means forgotten), averaged over the days before the newest;
  backward transfer (GEM, Lopez-Paz and Ranzato 2017): mean over days before the newest of
              (score when d was first probed - score now); positive means later learning helped d.
"""

from __future__ import annotations

import logging
import math

from engram_ff.daemon.config import Config
from engram_ff.daemon.facts import FactsError, load_facts
from engram_ff.model.scoring import rank_among
from engram_ff.model.train import evaluate_nats
from engram_ff.state import queries, runs

log = logging.getLogger(__name__)

LN2 = math.log(2)


class ProbesStopped(Exception):
    """should_stop() said so between two days: the pass records nothing."""


def probe(
    db, config: Config, model, *, run_id: int, checkpoint_id: int | None, should_stop=lambda: False
) -> list[dict]:
    """Score every day and every fact with `model`, record the rows in one transaction, return them."""
    model.eval()
    rows: list[dict] = []

    def add(probe_name: str, kind: str, metric: str, value: float, day: str | None = None) -> None:
        rows.append(
            dict(
                run_id=run_id,
                checkpoint_id=checkpoint_id,
                probe=probe_name,
                kind=kind,
                day=day,
                metric=metric,
                value=float(value),
            )
        )

    days = queries.days(db)
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
                )

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

    facts = _facts(config)
    for fact in facts:
        try:  # one fact that cannot be scored costs its own two rows, never the pass's other scores
            bpb, rank = rank_among(
                model,
                fact["prompt"].encode(),
                fact["answer"].encode(),
                [d.encode() for d in fact.get("distractors", [])],
            )
        except Exception as exc:
            log.error("fact probe %r not scored: %s: %s", fact["name"], type(exc).__name__, exc)
            continue
        add(fact["name"], "fact", "answer_bpb", bpb)
        add(fact["name"], "fact", "answer_rank", rank)
    runs.record_scores(db, rows)
    log.info("probed %d days and %d facts: %d scores", len(days), len(facts), len(rows))
    return rows


def _facts(config: Config) -> list[dict]:
    """The facts file as it is now (the daemon checked it at start and reload, but it may have been edited
    since): if it went bad, the pass goes on without facts and says why."""
    try:
        return load_facts(config.facts_file)
    except FactsError as exc:
        log.error("fact probes skipped this pass: %s", exc)
        return []
