"""The fact probes file: read and checked whole, so a bad file is refused with a line that names the
fact and the key, at start, on reload and before each probe pass, never met as a traceback half way
through the scores. Torch-free, so the idle daemon can check it without loading PyTorch.

Shape: any number of [[fact]] tables, each with `name`, `prompt` and `answer` (non-empty strings) and
optional `distractors` (a list of non-empty strings); names are unique, since each is a probe's name
in probe_scores. Nothing else is accepted, so a typo (`[[facts]]`, `distractor = ...`) is an error,
not a silently missing probe.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

BUNDLED_FACTS = Path(__file__).with_name("facts.toml")
FACT_KEYS = ("name", "prompt", "answer", "distractors")


class FactsError(ValueError):
    pass


def load_facts(path: Path | None) -> list[dict]:
    """The facts of `path`; none without one. The bundled ones (Victor, his boat, the cabin's wifi) are
    the demo's: a real data directory must never report them as what its owner's model knows."""
    if not path:
        return []
    path = Path(path)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FactsError(f"fact probes file {path}: {exc}") from None
    except RecursionError:  # tomllib recurses once per nesting level
        raise FactsError(f"fact probes file {path}: not valid TOML: nested too deeply") from None
    try:
        return check_facts(table)
    except FactsError as exc:
        raise FactsError(f"fact probes file {path}: {exc}") from None


def check_facts(table: dict) -> list[dict]:
    unknown = sorted(set(table) - {"fact"})
    if unknown:
        raise FactsError(f"unknown key {unknown[0]!r}: a facts file holds only [[fact]] tables")
    facts = table.get("fact", [])
    if not isinstance(facts, list):
        raise FactsError(f"'fact' must be [[fact]] tables, got {_kind(facts)}")
    names = set()
    for i, fact in enumerate(facts, start=1):
        if not isinstance(fact, dict):
            raise FactsError(f"fact {i} must be a [[fact]] table, got {_kind(fact)}")
        where = f"fact {i}"
        extra = sorted(set(fact) - set(FACT_KEYS))
        if extra:
            raise FactsError(f"{where}: unknown key {extra[0]!r}; a fact has {', '.join(FACT_KEYS)}")
        for key in ("name", "prompt", "answer"):
            if not isinstance(fact.get(key), str) or not fact[key]:
                raise FactsError(f"{where} needs a non-empty string {key!r}, got {_kind(fact.get(key))}")
        where = f"fact {i} ({fact['name']!r})"
        if fact["name"] in names:
            raise FactsError(f"{where}: the name is used twice; each fact's scores are recorded by name")
        names.add(fact["name"])
        distractors = fact.get("distractors", [])
        if not isinstance(distractors, list):
            raise FactsError(f"{where}: distractors must be a list of strings, got {_kind(distractors)}")
        for j, distractor in enumerate(distractors, start=1):
            if not isinstance(distractor, str) or not distractor:
                raise FactsError(f"{where}: distractor {j} must be a non-empty string, got {_kind(distractor)}")
    return facts


def _kind(value: object) -> str:
    """What a bad value is, in a few words (never a 5,000-level nested repr)."""
    if value is None:
        return "nothing"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    return {list: "a list", dict: "a table", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__
    )
