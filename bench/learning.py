"""`engram-ff bench learning`: does the daemon learn what it is told? Facts said k = 1, 2, 4 and 8 times are
asked with `ask` the next morning, a week and a month later, and each new day is predicted before it is
trained on, against bz2, xz and zstd given the same history (issue 22, point 1).

Days: chat between two fixed senders, `user` and `assistant`, made of the plays in bench/data/plays and
then TinyShakespeare: their speeches are cut into episodes, mostly short exchanges and some long dialogue,
shuffled once and dealt out in order, about --day-kb of new text a day, so each day is new text until both
run out (the report says from which night text recurs). On the fact nights (--fact-nights, default 2) the facts of
bench/learning_facts.toml are planted: each mention its own session in which the user asks and the
assistant answers, spread evenly through the day.

Each method (--methods ff,bp; a method is a trainer plus configuration overrides) runs in a process and a
data directory of its own, night by night in lockstep with the others (common.lockstep: they share the
machine's load alike, and each peak RSS is its own). A night is the daemon's: the day's file lands in the
watched folder, ingest reads it (the library call `engram-ff ingest` makes), then daemon.update.run_update
trains, probes and lets the gate decide, with workers = 1 unless --set says otherwise. Around it:

  prequential  the day's whole text (every message, as the daemon writes text) scored by the model of the
               night before, before the update trains on it, in bits per byte;
  morning      the same whole day scored by the model `ask` answers with that morning: the night before's
               checkpoint plus what its memory learned by day since the night (its held-out slice);
  by day       the same day as the daemon learns it between nights (daemon/today.py, learn_by_day): its
               context memory scores each part before it learns it, as a compressor reads; after the
               night it learns again over the new checkpoint (the night's held-out slice), and the
               morning's `ask` answers with that, as `engram-ff ask` does; each time its check (the
               canary and the facts against the checkpoint's scores) may refuse it, and the report says;
  compressors  bz2 -9, xz -9e, zstd --long -19: C(days 1..n) - C(days 1..n-1), bits per byte of day n;
  facts        each morning, whether `ask`'s greedy answer (daemon/ask.py) holds all of a fact's key words;
               the answer's bits per byte and rank among its distractors as the fact probes score them
               (model/scoring.py rank_among), after the prompt `ask` gives;
  retention    from the current model's newest probe pass: held-out bits per byte per day, their mean over
               the days before the newest, the probes' forgetting (now minus best) and the canary;
  cost         wall time of ingest + learning by day + update (training, probes, gate), the night's peak
               RSS (VmHWM), steps, and the gate's decision.

    flock /tmp/engram-bench.lock nice -n 5 engram-ff bench learning [--nights 32] [--methods ff,bp] [--set KEY=VALUE]
"""

from __future__ import annotations

import argparse
import bz2
import json
import lzma
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from engram_ff.bench.common import (
    DATA,
    RESULTS,
    lockstep,
    markdown_table,
    parse_args,
    peak_rss_since_reset_mib,
    reset_peak_rss,
    save_figure,
    write_result,
)
from engram_ff.bench.make_stream import FIRST_DAY, PLAYS, play_speeches, tiny_speeches, write_day
from engram_ff.bench.year_days import chat_record
from engram_ff.daemon.ask import ASSISTANT, USER
from engram_ff.daemon.config import Config, load_config
from engram_ff.model.config import PRESETS
from engram_ff.state.text import conversation, message_line

LN2 = math.log(2)
FACTS = Path(__file__).with_name("learning_facts.toml")
KS = (1, 2, 4, 8)  # mentions of a fact on the fact nights
MIN_FACTS_PER_K = 4
SHORT = (2, 6)  # speeches in a short exchange
LONG = (20, 50)  # and in a long dialogue
LONG_SHARE = 0.12  # of the episodes: about half the bytes are long dialogue
DAY_START_S, DAY_END_S = 7 * 3600, 23 * 3600  # the day's messages are spread over 07:00-23:00
# Where the recall is read, in nights after the last fact night: the next morning, a week and a month on.
CHECKPOINTS = (0, 7, 30)
# Issue 22's targets for FF at the daemon's defaults: share of facts `ask` answers the next morning, by k;
# the share of those still answered 30 nights later; forgetting of older days, in nats per byte.
RECALL_TARGETS = {1: 0.50, 2: 0.75, 4: 0.90, 8: 0.90}
KEPT_TARGET = 0.80
FORGETTING_TARGET_NATS = 0.02
# The benchmark's own defaults over the daemon's: one process, so a night's RSS and time are one process's.
BENCH_SET = {"workers": "1"}
QUICK = dict(
    nights=3,
    day_kb=3.0,
    preset="tiny",
    threads=1,
    budget=0.5,
    set=["batch_size=4", "seq_len=64", "update_min_steps=20", "update_max_steps=40", "probe_max_days=8"],
    ask_bytes=120,  # twice the longest answer: a tiny model's babble need not run to ask's 400
)


# ---------------------------------------------------------------------------------------------- facts


def load_facts(path: Path = FACTS) -> list[dict]:
    """The facts file, checked: each fact's key words are in its answer (else recall could never count),
    and every k has at least MIN_FACTS_PER_K facts (a share of fewer says little)."""
    facts = tomllib.loads(Path(path).read_text(encoding="utf-8"))["fact"]
    for fact in facts:
        missing = {"name", "k", "question", "answer", "keys", "distractors"} - set(fact)
        if missing:
            raise ValueError(f"{path}: fact {fact.get('name')!r} lacks {sorted(missing)}")
        if not fact["keys"] or any(key.casefold() not in fact["answer"].casefold() for key in fact["keys"]):
            raise ValueError(f"{path}: fact {fact['name']!r}: every key word must be in its answer")
    counts = {k: sum(f["k"] == k for f in facts) for k in {f["k"] for f in facts}}
    if sorted(counts) != list(KS) or min(counts.values()) < MIN_FACTS_PER_K:
        raise ValueError(f"{path}: needs at least {MIN_FACTS_PER_K} facts for each k in {KS}, has {counts}")
    return facts


def recalled(answer: str, keys: list[str]) -> bool:
    return all(key.casefold() in answer.casefold() for key in keys)


# ----------------------------------------------------------------------------------------------- days


@dataclass
class Day:
    night: int  # 1-based
    date: str  # ISO
    lines: list[dict]  # the day's Engram file
    text: bytes  # every message of the day as the daemon writes training text (state/text.py)
    planted: dict[str, int] = field(default_factory=dict)  # fact name -> mentions today
    recurs: bool = False  # some of today's chat was dealt on an earlier day (the plays ran out)


def episodes(seed: int) -> list[list[str]]:
    """The plays' speeches cut into runs of consecutive speeches, mostly short exchanges and some long
    dialogue, shuffled so that a day mixes plays."""
    rng = random.Random(seed)
    plays = [[speech for _, _, speech in play_speeches((DATA / "plays" / f"{name}.txt").read_text())] for name in PLAYS]
    return _cut(plays, rng)


def more_episodes(seed: int) -> list[list[str]]:
    """TinyShakespeare's speeches, cut and shuffled the same way: dealt once the plays have all been dealt,
    so that a month (about 26 nights of the plays at the default --day-kb) reaches 50 before text recurs."""
    text = (DATA / "tinyshakespeare.txt").read_text()
    return _cut([[speech for _, _, speech in tiny_speeches(text)]], random.Random(f"{seed}:more"))


def _cut(sources: list[list[str]], rng: random.Random) -> list[list[str]]:
    out = []
    for speeches in sources:
        i = 0
        while i < len(speeches):
            n = rng.randint(*LONG) if rng.random() < LONG_SHARE else rng.randint(*SHORT)
            out.append(speeches[i : i + n])
            i += n
    rng.shuffle(out)
    return out


def _session_bytes(session: list[tuple[str, str]]) -> int:
    return sum(len(message_line(sender, text)) for sender, text in session) + 1  # + the blank line after it


def chat_sessions(n_days: int, day_bytes: int, seed: int) -> list[tuple[list[list[tuple[str, str]]], bool]]:
    """Per day, (sessions of (sender, text), whether any was dealt before): episodes dealt in order until the
    day holds day_bytes of text: the plays', then TinyShakespeare's; when both have run out, all of them
    dealt again in a new order."""
    deck, dealt_round, position = episodes(seed), 0, 0
    days = []
    for _ in range(n_days):
        sessions, size, recurs = [], 0, dealt_round > 1
        while size < day_bytes:
            if position == len(deck):
                dealt_round, position = dealt_round + 1, 0
                if dealt_round == 1:
                    deck = more_episodes(seed)
                else:  # both used up: all of it again, reshuffled each round
                    if dealt_round == 2:
                        deck = episodes(seed) + more_episodes(seed)
                    random.Random(f"{seed}:{dealt_round}").shuffle(deck)
                    recurs = True
            speeches = deck[position]
            position += 1
            session = [(USER if i % 2 == 0 else ASSISTANT, speech) for i, speech in enumerate(speeches)]
            sessions.append(session)
            size += _session_bytes(session)
        days.append((sessions, recurs))
    return days


def fact_mentions(facts: list[dict], fact_nights: list[int], seed: int) -> dict[int, list[tuple[float, dict]]]:
    """Per fact night, (where in the day, fact) for each mention: mention j of a fact said k times goes to
    fact night j mod len(fact_nights), at (j + u) / n of the day, u uniform in [0.1, 0.9] and n its mentions
    that night, so a fact said 8 times is spread through the day and one said once lies near its middle."""
    rng = random.Random(f"{seed}:facts")
    plan: dict[int, list[tuple[float, dict]]] = {night: [] for night in fact_nights}
    for fact in facts:
        nights = [fact_nights[j % len(fact_nights)] for j in range(fact["k"])]
        for night in sorted(set(nights)):
            n = nights.count(night)
            for j in range(n):
                plan[night].append(((j + rng.uniform(0.1, 0.9)) / n, fact))
    return {night: sorted(mentions, key=lambda m: m[0]) for night, mentions in plan.items()}


def make_days(nights: int, day_bytes: int, facts: list[dict], fact_nights: list[int], seed: int) -> list[Day]:
    """The run's days, made once, so every method reads the same files."""
    chats = chat_sessions(nights, day_bytes, seed)
    planted = fact_mentions(facts, fact_nights, seed)
    days = []
    for night, (sessions, recurs) in enumerate(chats, start=1):
        day = FIRST_DAY + timedelta(night - 1)
        sessions = list(sessions)
        mentions = planted.get(night, [])
        for offset, (where, fact) in enumerate(mentions):  # in order of `where`, so earlier inserts shift later ones
            at = min(len(sessions), round(where * (len(sessions) - offset)) + offset)
            sessions.insert(at, [(USER, fact["question"]), (ASSISTANT, fact["answer"])])
        days.append(_day(night, day, sessions, recurs, {f["name"]: sum(m[1] is f for m in mentions) for f in facts}))
    return days


def _day(night: int, day: date, sessions, recurs: bool, planted: dict[str, int]) -> Day:
    lines = [{"timestamp": f"{day.isoformat()}T06:00:00.000Z", "type": "gateway", "action": "startup"}]
    total = sum(len(s) for s in sessions) or 1
    step_ms = max(1, (DAY_END_S - DAY_START_S) * 1000 // total)
    millisecond = DAY_START_S * 1000
    rows = []
    for k, session in enumerate(sessions):
        for sender, content in session:
            millisecond += step_ms
            lines.append(chat_record(day, millisecond, f"chat:{day}:{k}", sender, content))
            rows.append({"day": day.isoformat(), "session": k, "sender": sender, "text": content})
    planted = {name: n for name, n in planted.items() if n}
    return Day(night, day.isoformat(), lines, conversation(rows), planted, recurs)


# -------------------------------------------------------------------------------------------- compressors


def _zstd(data: bytes) -> int:
    return len(
        subprocess.run(["zstd", "--long", "-19", "-q", "-c"], input=data, capture_output=True, check=True).stdout
    )


def compressors() -> tuple[dict[str, Callable[[bytes], int]], list[str]]:
    """name -> compressed size in bytes of some data; and notes on what was skipped."""
    codes: dict[str, Callable[[bytes], int]] = {
        "bz2 -9": lambda data: len(bz2.compress(data, 9)),
        "xz -9e": lambda data: len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
    }
    notes = []
    if shutil.which("zstd"):
        codes["zstd --long -19"] = _zstd
    else:
        notes.append("zstd --long -19 skipped: no `zstd` binary on this machine")
    return codes, notes


def compressor_bpb(texts: list[bytes]) -> tuple[list[dict[str, float]], list[str]]:
    """Per day n, each compressor's C(days 1..n) - C(days 1..n-1) in bits per byte of day n: what it costs
    to code the new day given everything before it as history."""
    codes, notes = compressors()
    out: list[dict[str, float]] = [{} for _ in texts]
    for name, size in codes.items():
        history, before = b"", size(b"")
        for i, text in enumerate(texts):
            history += text
            after = size(history)
            out[i][name] = (after - before) * 8 / len(text)
            before = after
    return out, notes


# ------------------------------------------------------------------------------------------------ methods


@dataclass
class Method:
    name: str  # as written on the command line, e.g. "ff" or "ff+lr_scale=2"
    trainer: str
    overrides: dict[str, str]


def parse_method(spec: str) -> Method:
    """TRAINER[+KEY=VALUE...]: a trainer and configuration overrides of its own."""
    trainer, *pairs = spec.split("+")
    return Method(spec, trainer, dict(_pair(p) for p in pairs))


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def method_config(folder: Path, method: Method, settings: dict) -> Config:
    """The daemon's defaults, then the benchmark's (one worker), --preset and --budget, --set, the method's."""
    values = dict(BENCH_SET, model_preset=settings["preset"])
    if settings["budget"] is not None:
        values["update_budget_minutes"] = str(settings["budget"])
    values.update(settings["set"])
    values.update(method.overrides, trainer=method.trainer)
    return load_config(environ={}, data_dir=str(folder / "data"), watch_dir=str(folder / "engram"), **values)


def settings_toml(config: Config) -> str:
    """The effective configuration, less the run's own paths."""
    skip = ("data_dir", "watch_dir", "# watch folder", "# database")
    return "".join(line + "\n" for line in config.as_toml().splitlines() if not line.startswith(skip))


def ask_default_bytes() -> int:
    """`engram-ff ask`'s --bytes default: the longest answer it lets the model write."""
    from engram_ff.daemon import commands  # noqa: F401  (registers the commands)
    from engram_ff.daemon.options import COMMANDS

    return next(kw["default"] for flags, kw in COMMANDS["ask"].options if "--bytes" in flags)


def method_nights(plan: dict) -> Iterator[dict]:
    """One method's nights, one record each: runs in a process of its own (common.lockstep)."""
    import torch

    torch.set_num_threads(plan["threads"])
    config = method_config(Path(plan["folder"]), plan["method"], plan["settings"])
    for day in plan["days"]:
        yield run_night(config, day, plan["facts"], plan["ask_bytes"], plan.get("parts", 1))


def run_night(config: Config, day: Day, facts: list[dict], ask_bytes: int, parts: int = 1) -> dict:
    """The day's file lands, the model of the night before scores it, the daemon ingests it and learns it by day
    (in `parts` pieces, each ingested and learned before the next lands), then updates as it would at night;
    then the morning's measurements."""
    from engram_ff.daemon.checkpoints import current_model
    from engram_ff.daemon.today import learn_now, overlay_onto
    from engram_ff.daemon.update import run_update
    from engram_ff.ingest.reader import Limits, catch_up
    from engram_ff.model.match import left_out
    from engram_ff.model.train import evaluate_nats
    from engram_ff.state.db import open_db

    db = open_db(config.db_path)
    try:
        before = current_model(db)
    finally:
        db.close()
    prequential = evaluate_nats(before[0], day.text) / LN2 if before else None
    unmatched = None  # the same, without the match model (model/match.py): what it copied
    if before and getattr(before[0], "match", None) is not None:
        with left_out(before[0]):
            unmatched = evaluate_nats(before[0], day.text) / LN2
    # the model `ask` answers with this morning: the same checkpoint plus what its memory learned by day since
    # the night (the night's held-out slice), before anything of today; None where there is no such overlay
    morning_bpb = None
    if before and getattr(before[0], "memory", None) is not None and config.learn_by_day:
        morning_bpb = evaluate_nats(before[0], day.text) / LN2 if overlay_onto(before[0], config, before[1]) else None
    reset_peak_rss()
    ingest_s = by_day_s = by_day_bits = 0.0
    by_day_bytes = by_day_predicted = 0
    refused = []  # why learning by day was not kept, each time its gate said so (daemon/today.py _refusal)
    for part in range(parts):  # the lines so far, then the next part's: a file Engram appends to
        write_day(config.watch / "raw", date.fromisoformat(day.date), day.lines[: len(day.lines) * (part + 1) // parts])
        started = time.perf_counter()
        db = open_db(config.db_path)
        try:
            catch_up(db, config.watch, limits=Limits.of(config))
        finally:
            db.close()
        ingested = time.perf_counter()
        piece = learn_now(config)  # the daemon's learning by day: the memory reads what was just stored
        if piece is not None and piece.refused:
            refused.append(piece.refused)
        if piece is not None and piece.new_bytes > 1:  # its bpb is over the bytes after the first
            by_day_bits += piece.bpb * (piece.new_bytes - 1)
            by_day_bytes, by_day_predicted = by_day_bytes + piece.new_bytes, by_day_predicted + piece.new_bytes - 1
        ingest_s, by_day_s = ingest_s + ingested - started, by_day_s + time.perf_counter() - ingested
    learned = time.perf_counter()
    overlay = config.today_path.stat().st_size if config.today_path.exists() else 0  # what the day wrote to disk
    said_today = evening(config, [f for f in facts if f["name"] in day.planted], ask_bytes)
    row = run_update(config)
    ended = time.perf_counter()
    rebuilt = learn_now(config)  # ... and after the night, over its new checkpoint: the held-out slice
    by_day_s += time.perf_counter() - ended
    if rebuilt is not None and rebuilt.refused:
        refused.append(rebuilt.refused)
    record = dict(
        night=day.night,
        date=day.date,
        day_bytes=len(day.text),
        planted=day.planted,
        recurs=day.recurs,
        prequential_bpb=prequential,
        unmatched_bpb=unmatched,
        morning_bpb=morning_bpb,
        reading_bpb=by_day_bits / by_day_predicted if by_day_predicted else None,
        by_day_bytes=by_day_bytes,
        after_night_bytes=rebuilt.new_bytes if rebuilt else 0,
        by_day_refused=refused,
        status=row["status"],
        gate=json.loads(row["gate"]) if row["gate"] else None,
        steps=row["steps"] or 0,
        new_bytes=row["new_bytes"] or 0,
        replay_bytes=row["replay_bytes"] or 0,
        ingest_s=ingest_s,
        by_day_s=by_day_s,
        update_s=ended - learned,
        rss_mib=peak_rss_since_reset_mib(),
        evening=said_today,
        today_mib=overlay / (1 << 20),
    )
    record.update(morning(config, facts, row, ask_bytes))
    return record


def evening(config: Config, facts: list[dict], ask_bytes: int) -> dict[str, bool]:
    """The facts said today, asked with `ask` the same evening, before the night: what was learned by day.
    Outside the measured wall time and RSS (it runs after them)."""
    from engram_ff.daemon import ask as asking
    from engram_ff.daemon.today import model_for_answers
    from engram_ff.state.db import open_db

    if not facts:
        return {}
    db = open_db(config.db_path)
    try:
        found = model_for_answers(db, config)
        who = asking.voices(db)
    finally:
        db.close()
    if found is None:
        return {f["name"]: False for f in facts}
    answers = {
        f["name"]: asking.answer(found[0], asking.prompt(f["question"], who), who, max_bytes=ask_bytes) for f in facts
    }
    return {f["name"]: recalled(answers[f["name"]].decode("utf-8", "replace"), f["keys"]) for f in facts}


def morning(config: Config, facts: list[dict], update_row: dict, ask_bytes: int) -> dict:
    """The current model the morning after: each fact asked with `ask` and scored as the fact probes score
    it, how often each answer was in the text the night trained on, and its newest probe pass's retention."""
    from engram_ff.daemon import ask as asking
    from engram_ff.daemon.today import model_for_answers
    from engram_ff.model.scoring import rank_among
    from engram_ff.state import queries, runs
    from engram_ff.state.db import open_db

    db = open_db(config.db_path)
    try:
        found = model_for_answers(db, config)  # as `ask` has it: the checkpoint and what was learned by day
        who = asking.voices(db)
        trained = b""
        if update_row["status"] in ("ok", "rejected") and update_row["last_message_id"] is not None:
            trained = queries.text_between(db, update_row["first_message_id"], update_row["last_message_id"])
        scores = runs.newest_pass(db, found[1]["id"]) if found else []
    finally:
        db.close()
    out: dict = dict(
        checkpoint=found[1]["id"] if found else None,
        trained_mentions={f["name"]: trained.count(message_line(ASSISTANT, f["answer"])) for f in facts},
        trained_questions={f["name"]: trained.count(message_line(USER, f["question"])) for f in facts},
        facts={},
    )
    if found:
        model = found[0]
        for fact in facts:
            prompt = asking.prompt(fact["question"], who)
            said = asking.answer(model, prompt, who, max_bytes=ask_bytes).decode("utf-8", "replace")
            bpb, rank = rank_among(model, prompt, fact["answer"].encode(), [d.encode() for d in fact["distractors"]])
            out["facts"][fact["name"]] = dict(answer=said, recalled=recalled(said, fact["keys"]), bpb=bpb, rank=rank)
            if "reworded" in fact:  # the question in words the chat never used
                other = asking.answer(model, asking.prompt(fact["reworded"], who), who, max_bytes=ask_bytes)
                other_said = other.decode("utf-8", "replace")
                out["facts"][fact["name"]].update(
                    reworded_answer=other_said, reworded=recalled(other_said, fact["keys"])
                )
    held_out = {r["day"]: r["value"] for r in scores if r["metric"] == "probe_bpb"}
    summary = {r["metric"]: r["value"] for r in scores if r["day"] is None}
    older = sorted(held_out)[:-1]
    out.update(
        held_out=held_out,
        held_out_older_bpb=sum(held_out[d] for d in older) / len(older) if older else None,
        forgetting_bpb=summary.get("avg_forgetting_probe_bpb"),
        canary_bpb=summary.get("canary_bpb"),
    )
    return out


# ------------------------------------------------------------------------------------------------ the run


def run(args) -> dict:
    facts = load_facts(args.facts)
    fact_nights = sorted(set(args.fact_nights))
    days = make_days(args.nights, round(args.day_kb * 1000), facts, fact_nights, args.seed)
    compressed, notes = compressor_bpb([day.text for day in days])
    methods = [parse_method(spec) for spec in args.methods]
    settings = dict(preset=args.preset, budget=args.budget, set=dict(_pair(p) for p in args.set or []))
    load_start = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="engram-learning-") as tmp:
        root = Path(args.data) if args.data else Path(tmp)
        folders = [root / f"{i}-{m.trainer}" for i, m in enumerate(methods)]
        configs = [method_config(folder, m, settings) for folder, m in zip(folders, methods)]  # refused here, early
        ask_bytes = args.ask_bytes or ask_default_bytes()
        base = dict(
            days=days,
            facts=facts,
            threads=args.threads,
            ask_bytes=ask_bytes,
            settings=settings,
            parts=args.by_day_parts,
        )
        jobs = [(method_nights, (dict(base, folder=str(f), method=m),)) for f, m in zip(folders, methods)]
        records: dict[str, list[dict]] = {m.name: [] for m in methods}
        for answers in lockstep(*jobs):
            for method, (record, _) in zip(methods, answers):
                records[method.name].append(record)
                print(_progress(method.name, record, time.monotonic() - started), flush=True)
    meta = dict(
        command=" ".join(args.argv),
        nights=args.nights,
        fact_nights=fact_nights,
        checkpoints=list(args.checkpoints),
        day_kb=args.day_kb,
        by_day_parts=args.by_day_parts,
        preset=args.preset,
        budget_minutes=configs[0].update_budget_minutes,
        threads=args.threads,
        ask_bytes=ask_bytes,
        seed=args.seed,
        facts_file=str(args.facts),
        methods={m.name: settings_toml(c) for m, c in zip(methods, configs)},
        cores=os.cpu_count(),
        load_average_start=load_start,
        load_average_end=os.getloadavg(),
        minutes=(time.monotonic() - started) / 60,
        notes=notes + list(args.note or []),
        recurs_from=next((d.night for d in days if d.recurs), None),
    )
    return dict(
        meta=meta,
        facts=facts,
        days=[
            dict(night=d.night, date=d.date, bytes=len(d.text), planted=d.planted, compressors=c)
            for d, c in zip(days, compressed)
        ],
        methods=records,
    )


def _progress(name: str, r: dict, elapsed: float) -> str:
    pre = "-" if r["prequential_bpb"] is None else f"{r['prequential_bpb']:.3f}"
    known = sum(f["recalled"] for f in r["facts"].values())
    return (
        f"{name:>8} night {r['night']:2d}: {r['status']:8s} {r['steps']:4d} steps, "
        f"{r['new_bytes'] / 1000:6.1f} kB new, "
        f"{r['ingest_s'] + r['update_s']:6.1f} s, RSS {r['rss_mib']:.0f} MiB, prequential {pre} bpb, "
        f"ask {known}/{len(r['facts'])} ({elapsed / 60:.1f} min)"
    )


# -------------------------------------------------------------------------------------------- the report


def checkpoint_nights(meta: dict, last_night: int) -> list[tuple[str, int]]:
    """(label, night) of each recall checkpoint; one past the last night run reads the last night, labelled."""
    anchor = max(meta["fact_nights"])
    out = []
    for offset in meta["checkpoints"]:
        label = "next morning" if offset == 0 else f"+{offset} nights"
        night = anchor + offset
        if night > last_night:
            night, label = last_night, f"{label}: not reached, last night (+{last_night - anchor})"
        out.append((f"{label} (night {night})", night))
    return out


def _by_k(facts: list[dict]) -> dict[int, list[str]]:
    return {k: [f["name"] for f in facts if f["k"] == k] for k in KS}


def _share(record: dict, names: list[str], test: Callable[[dict], bool]) -> tuple[int, int]:
    scored = [record["facts"][n] for n in names if n in record["facts"]]
    return sum(test(s) for s in scored), len(names)


def recall_rows(result: dict) -> list[list]:
    """Per method and k: `ask` recall, rank 1 and answer bits per byte at each checkpoint; the mentions the
    daemon trained on, summed over promoted nights, against those planted."""
    rows = []
    evening, reworded = evening_column(result), reworded_column(result)
    for name, records in result["methods"].items():
        by_night = {r["night"]: r for r in records}
        points = checkpoint_nights(result["meta"], records[-1]["night"])
        for k, names in _by_k(result["facts"]).items():
            cells = [name, k]
            if evening:
                said = [r["evening"][f] for r in records for f in names if f in r.get("evening", {})]
                cells.append(f"{sum(said)}/{len(said)}" if said else "-")
            for _, night in points:
                hit, n = _share(by_night[night], names, lambda s: s["recalled"])
                cells.append(f"{hit}/{n}")
            cells.append(
                " / ".join("{}/{}".format(*_share(by_night[n], names, lambda s: s["rank"] == 1)) for _, n in points)
            )
            cells.append(
                " / ".join(
                    f"{sum(by_night[n]['facts'][f]['bpb'] for f in names) / len(names):.2f}"
                    if by_night[n]["facts"]
                    else "-"
                    for _, n in points
                )
            )
            if reworded:  # of the facts asked in other words: a facts file may give `reworded` for some only
                asked = [
                    [s["reworded"] for f in names if "reworded" in (s := by_night[n]["facts"].get(f, {}))]
                    for _, n in points
                ]
                cells.append(" / ".join(f"{sum(a)}/{len(a)}" if a else "-" for a in asked))
            planted = sum(d["planted"].get(f, 0) for d in result["days"] for f in names)
            promoted = [r for r in records if r["status"] == "ok"]
            answers = sum(r["trained_mentions"][f] for r in promoted for f in names)
            questions = sum(r["trained_questions"][f] for r in promoted for f in names)
            cells.append(f"{answers} / {questions} of {planted}")
            rows.append(cells)
    return rows


def reworded_column(result: dict) -> bool:
    """Whether the run also asked each fact in other words (results from before it, and facts files without
    `reworded`, did not)."""
    return any("reworded" in f for records in result["methods"].values() for r in records for f in r["facts"].values())


def evening_column(result: dict) -> bool:
    """Whether the run asked the facts the evening they were said (results from before learning by day did not)."""
    return any(r.get("evening") for records in result["methods"].values() for r in records)


def reading_methods(result: dict) -> list[str]:
    """The methods whose models have a context memory: their day is also scored as it is read."""
    return [n for n, records in result["methods"].items() if any(r.get("reading_bpb") is not None for r in records)]


def unmatched_methods(result: dict) -> list[str]:
    """The methods whose models have a match model: their day is also scored without it."""
    return [n for n, records in result["methods"].items() if any(r.get("unmatched_bpb") is not None for r in records)]


def morning_methods(result: dict) -> list[str]:
    """The methods whose mornings had an overlay: their day is also scored by the model `ask` answers with."""
    return [n for n, records in result["methods"].items() if any(r.get("morning_bpb") is not None for r in records)]


def prequential_rows(result: dict) -> list[list]:
    names, reading = list(result["methods"]), reading_methods(result)
    codes = list(result["days"][0]["compressors"])
    columns = [(n, "prequential_bpb") for n in names] + [(n, "unmatched_bpb") for n in unmatched_methods(result)]
    columns += [(n, "morning_bpb") for n in morning_methods(result)]
    columns += [(n, "reading_bpb") for n in reading]
    rows = []
    for i, day in enumerate(result["days"]):
        cells = [day["night"], f"{day['bytes'] / 1000:.1f}"]
        cells += [_number(result["methods"][n][i].get(key)) for n, key in columns]
        cells += [f"{day['compressors'][c]:.3f}" for c in codes]
        rows.append(cells)
    scored = [
        i
        for i, _ in enumerate(result["days"])
        if all(result["methods"][n][i].get(key) is not None for n, key in columns)
    ]
    if scored:
        mean = [
            "**mean, nights {}-{}**".format(result["days"][scored[0]]["night"], result["days"][scored[-1]]["night"]),
            "",
        ]
        mean += [f"**{sum(result['methods'][n][i][key] for i in scored) / len(scored):.3f}**" for n, key in columns]
        mean += [f"**{sum(result['days'][i]['compressors'][c] for i in scored) / len(scored):.3f}**" for c in codes]
        rows.append(mean)
    return rows


def _number(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def night_rows(records: list[dict]) -> list[list]:
    return [
        [
            r["night"],
            "facts" if r["planted"] else "chat",
            {"ok": "promoted"}.get(r["status"], r["status"]),
            r["steps"],
            f"{r['new_bytes'] / 1000:.1f}",
            f"{r['replay_bytes'] / 1000:.1f}",
            f"{r['ingest_s'] + r.get('by_day_s', 0.0) + r['update_s']:.1f}",
            _number(r.get("by_day_s"), 1),
            _number(r.get("today_mib"), 1),
            f"{r['rss_mib']:.0f}",
            _number(r["prequential_bpb"]),
            _number(r["held_out_older_bpb"]),
            _number(r["forgetting_bpb"]),
            _number(r["canary_bpb"]),
            f"{sum(f['recalled'] for f in r['facts'].values())}/{len(r['facts'])}" if r["facts"] else "-",
            f"{sum(f['rank'] == 1 for f in r['facts'].values())}/{len(r['facts'])}" if r["facts"] else "-",
        ]
        for r in records
    ]


def target_rows(result: dict) -> list[list]:
    """Issue 22's targets, each method measured against them, with the margin where one is missed."""
    rows = []
    for name, records in result["methods"].items():
        by_night = {r["night"]: r for r in records}
        points = checkpoint_nights(result["meta"], records[-1]["night"])
        first, last = by_night[points[0][1]], by_night[points[-1][1]]
        for k, names in _by_k(result["facts"]).items():
            hit, n = _share(first, names, lambda s: s["recalled"])
            share, target = hit / n, RECALL_TARGETS[k]
            rows.append(
                [
                    name,
                    f"said {k}x: `ask` answers >= {target:.0%} the next morning",
                    f"{hit}/{n} = {share:.0%}",
                    _verdict(share >= target, f"{target - share:.0%} short"),
                ]
            )
        known = [f for f, s in first["facts"].items() if s["recalled"]]
        kept = sum(last["facts"][f]["recalled"] for f in known)
        kept_share = kept / len(known) if known else None
        rows.append(
            [
                name,
                f"{points[-1][0]}: >= {KEPT_TARGET:.0%} of those still answered",
                f"{kept}/{len(known)}" if known else "none to keep",
                "-"
                if kept_share is None
                else _verdict(kept_share >= KEPT_TARGET, f"{KEPT_TARGET - kept_share:.0%} short"),
            ]
        )
        protocols = (
            ("prequential_bpb", "the night before"),
            ("morning_bpb", "the morning's model"),
            ("reading_bpb", "by day"),
        )
        for key, protocol in protocols:
            if all(r.get(key) is None for r in records):
                continue
            for code in result["days"][0]["compressors"]:
                pairs = [
                    (r[key], d["compressors"][code]) for r, d in zip(records, result["days"]) if r.get(key) is not None
                ]
                worse = [p - c for p, c in pairs if p > c]
                rows.append(
                    [
                        name,
                        f"new day's bpb, {protocol}, <= {code}'s",
                        f"{len(pairs) - len(worse)}/{len(pairs)} days at or below",
                        _verdict(not worse and bool(pairs), f"up to {max(worse, default=0):.3f} bpb above"),
                    ]
                )
        forgetting = [r["forgetting_bpb"] for r in records if r["forgetting_bpb"] is not None]
        worst = max(forgetting, default=None)
        rows.append(
            [
                name,
                f"forgetting of older days <= {FORGETTING_TARGET_NATS} nats/byte on every night",
                "-" if worst is None else f"worst {worst * LN2:.4f} nats/byte ({worst:.4f} bpb)",
                "-"
                if worst is None
                else _verdict(
                    worst * LN2 <= FORGETTING_TARGET_NATS, f"{worst * LN2 - FORGETTING_TARGET_NATS:.4f} over"
                ),
            ]
        )
    return rows


def _verdict(ok: bool, miss: str) -> str:
    return "met" if ok else f"**missed** ({miss})"


def _parts_sentence(parts: int | None) -> str:
    if parts is None:  # a result from before learning by day
        return ""
    if parts == 1:
        return "Each day's file lands whole and is learned by day in one pass before the night."
    return f"Each day's file lands in {parts} parts, each ingested and learned by day before the next lands."


def tables(result: dict) -> dict[str, str]:
    """The targets, facts and prequential tables, for the report and the terminal alike."""
    points = checkpoint_nights(result["meta"], result["days"][-1]["night"])
    said = ["ask, the same evening"] if evening_column(result) else []
    reworded = ["ask in other words"] if reworded_column(result) else []
    asked = [f"ask, {label}" for label, _ in points]
    facts = ["method", "k", *said, *asked, "ranked 1st", "answer bpb", *reworded, "trained"]
    codes = list(result["days"][0]["compressors"])
    return dict(
        targets=markdown_table(["method", "target", "measured", "met"], target_rows(result)),
        facts=markdown_table(facts, recall_rows(result)),
        prequential=markdown_table(
            [
                "night",
                "day kB",
                *result["methods"],
                *[f"{n}, no match model" for n in unmatched_methods(result)],
                *[f"{n}, morning" for n in morning_methods(result)],
                *[f"{n}, reading" for n in reading_methods(result)],
                *codes,
            ],
            prequential_rows(result),
        ),
    )


def report(result: dict, figure: Path, json_name: str) -> str:
    meta = result["meta"]
    names = list(result["methods"])
    shown = tables(result)
    load = lambda xs: ", ".join(f"{x:.1f}" for x in xs)  # noqa: E731
    lines = [
        "# Does the daemon learn what it is told?\n",
        f"`{meta['command']}`: {meta['nights']} nights, {meta['minutes']:.1f} minutes in all.\n",
        f"Machine: {meta['cores']} cores, shared with other jobs: load average {load(meta['load_average_start'])} "
        f"at the start and {load(meta['load_average_end'])} at the end (1, 5, 15 minutes). The methods ran in "
        "lockstep, one night each in turn, so they shared whatever load there was alike.\n",
        f"Days: chat between `{USER}` and `{ASSISTANT}` from the plays, then TinyShakespeare, about "
        f"{meta['day_kb']:g} kB of new text a day (bench/learning.py), seed {meta['seed']}"
        + (f"; both ran out and text recurs from night {meta['recurs_from']}" if meta["recurs_from"] else "")
        + f". Facts ({meta['facts_file'].rsplit('/', 1)[-1]}, {len(result['facts'])} of them) planted on night(s) "
        f"{', '.join(map(str, meta['fact_nights']))}: k = {', '.join(map(str, KS))} mentions, each its own session. "
        f"Model preset `{meta['preset']}`, update_budget_minutes = {meta['budget_minutes']:g}, {meta['threads']} "
        f"torch thread(s) a method; answers of at most {meta['ask_bytes']} bytes. "
        + _parts_sentence(meta.get("by_day_parts"))
        + "\n",
        *[f"- {note}\n" for note in meta["notes"]],
        "## Targets (issue 22)\n",
        shown["targets"],
        "## Facts\n",
        "`ask` recall: the greedy answer holds all the fact's key words. Ranked first / answer bpb: as the fact "
        "probes score the answer against its 3 distractors, at each checkpoint in turn. Trained: answers / "
        "questions in the new text of the nights the gate promoted, of the mentions planted (a mention in the "
        "probe split is held out of its night and trained by the next as held-out text, not counted here). "
        "In other words: `ask` given the fact's `reworded` question, which the chat never said, at each "
        "checkpoint in turn.\n",
        shown["facts"],
        f"![facts and prequential bits per byte]({figure.name})\n",
        "## Prequential bits per byte\n",
        "Each day's whole text scored by the model of the night before, before the night trains on it; each "
        "compressor's cost of the day given all earlier days (C(history + day) - C(history)). The model reads "
        "the day as one stream, as a compressor does, and its match model (model/match.py) copies what the day "
        "repeats; 'no match model': the same model without it. 'Morning': the "
        "whole day scored, before any of it is learned, by the model `ask` answers with that morning, the night "
        "before's checkpoint plus what its memory learned by day since the night (the night's held-out slice). "
        "'Reading' (by day): "
        "the day as the daemon learns it by day (daemon/today.py, learn_by_day), each part scored before its "
        "context memory learns it, from the model of the night before plus what the memory learned since that "
        "night (its held-out slice); a compressor likewise adapts within the day. Results from before "
        "learn_by_day existed computed the same pass on a copy of the night before's model, which the daemon did "
        "not keep.\n",
        shown["prequential"],
        "## Every night\n",
        "Wall: ingest + learning by day (after the ingest and again after the night) + update (training, the "
        "candidate's probe pass, the gate). Held-out older: the current "
        "model's newest probe pass, mean held-out bpb of the days before the newest; forgetting: the probes' "
        "mean of now minus best over those days (bits per byte).\n",
    ]
    for name in names:
        lines += [
            f"### {name}\n",
            markdown_table(
                [
                    "night",
                    "day",
                    "gate",
                    "steps",
                    "new kB",
                    "replay kB",
                    "wall s",
                    "by day s",
                    "today.pt MiB",
                    "peak RSS MiB",
                    "prequential bpb",
                    "held-out older bpb",
                    "forgetting bpb",
                    "canary bpb",
                    "ask",
                    "ranked 1st",
                ],
                night_rows(result["methods"][name]),
            ),
        ]
        refusals = [(r["night"], why) for r in result["methods"][name] for why in r.get("by_day_refused", [])]
        lines.append(
            "Learning by day not kept by its gate (the canary and the facts against the checkpoint's own scores): "
            + ("; ".join(f"night {night}: {why}" for night, why in refusals) if refusals else "never")
            + ".\n"
        )
    lines += ["## Settings\n", "The effective configuration of each method (`engram-ff config` format):\n"]
    for name, toml in meta["methods"].items():
        lines += [f"{name}:\n", "```toml\n" + toml + "```\n"]
    lines.append(f"Raw numbers, one record a night and method, with every answer `ask` gave: `{json_name}`.\n")
    return "\n".join(lines)


def plot(path: Path, result: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    styles = ["-", "--", ":", "-."]
    colours = {k: c for k, c in zip(KS, ["tab:red", "tab:orange", "tab:green", "tab:blue"])}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (recall, pre), (answer, held) = axes
    groups = _by_k(result["facts"])
    for (name, records), style in zip(result["methods"].items(), styles):
        x = [r["night"] for r in records]
        for k, names in groups.items():
            recall.plot(
                x,
                [_share(r, names, lambda s: s["recalled"])[0] / len(names) if r["facts"] else None for r in records],
                style,
                color=colours[k],
                marker="o",
                ms=3,
                label=f"{name}, k = {k}",
            )
            answer.plot(
                x,
                [sum(r["facts"][f]["bpb"] for f in names) / len(names) if r["facts"] else None for r in records],
                style,
                color=colours[k],
                marker="o",
                ms=3,
                label=f"{name}, k = {k}",
            )
        pre.plot(x, [r["prequential_bpb"] for r in records], style, color="k", marker="o", ms=3, label=name)
        held.plot(
            x,
            [r["held_out_older_bpb"] for r in records],
            style,
            color="tab:purple",
            marker="o",
            ms=3,
            label=f"{name}: held-out, older days",
        )
        held.plot(
            x,
            [r["forgetting_bpb"] for r in records],
            style,
            color="tab:brown",
            marker="o",
            ms=3,
            label=f"{name}: forgetting",
        )
    nights = [d["night"] for d in result["days"]]
    for code, colour in zip(result["days"][0]["compressors"], ["tab:gray", "tab:olive", "tab:cyan"]):
        pre.plot(nights, [d["compressors"][code] for d in result["days"]], color=colour, lw=1, label=code)
    for night in result["meta"]["fact_nights"]:
        for ax in axes.flat:
            ax.axvline(night, color="k", alpha=0.15, lw=4)
    recall.set(
        ylabel="share `ask` answers",
        title="facts recalled by `ask`, by mentions k (grey: fact night)",
        ylim=(-0.05, 1.05),
    )
    answer.set(ylabel="answer bits per byte", title="mean answer bits per byte, by k", yscale="log")
    pre.set(ylabel="bits per byte", title="each new day before training on it, and the compressors")
    held.set(ylabel="bits per byte", title="held-out text of older days (current model)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("night")
        ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engram-ff bench learning", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--nights", type=int, default=max(CHECKPOINTS) + 2, help="nights to run (default: a month after night 2)"
    )
    parser.add_argument(
        "--fact-nights",
        type=_ints,
        default=[2],
        metavar="N[,N...]",
        help="the nights whose days carry the facts' mentions, spread over them (default 2)",
    )
    parser.add_argument(
        "--checkpoints",
        type=_ints,
        default=list(CHECKPOINTS),
        metavar="N[,N...]",
        help="where recall is read, in nights after the last fact night (default 0,7,30)",
    )
    parser.add_argument("--day-kb", type=float, default=35.0, help="kB of chat text a day (default 35)")
    parser.add_argument(
        "--by-day-parts",
        type=int,
        default=1,
        metavar="N",
        help="each day's file lands in N parts, each ingested and learned by day before the next, as a daemon "
        "learns a day's messages a minute after each arrives (default 1: the whole day, then one pass)",
    )
    parser.add_argument(
        "--methods",
        type=lambda s: s.split(","),
        default=["ff", "bp"],
        metavar="M[,M...]",
        help="TRAINER[+KEY=VALUE...] each, run side by side (default ff,bp)",
    )
    parser.add_argument("--trainer", dest="methods", type=lambda s: [s], metavar="ff|bp", help="one method only")
    parser.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="a configuration key for every method (repeat)"
    )
    parser.add_argument("--budget", type=float, metavar="MIN", help="update_budget_minutes (default: the daemon's)")
    parser.add_argument("--preset", default="daemon", choices=list(PRESETS), help="model preset (default daemon)")
    parser.add_argument(
        "--threads", type=int, default=2, help="torch threads a method (default 2: the machine's cores)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ask-bytes", type=int, metavar="N", help="the longest answer `ask` may write (default: ask's)"
    )
    parser.add_argument("--facts", type=Path, default=FACTS, help="the facts file (default bench/learning_facts.toml)")
    parser.add_argument(
        "--data",
        type=Path,
        metavar="DIR",
        help="keep each method's data directory under DIR (default: a temporary one)",
    )
    parser.add_argument("--note", action="append", help="a line for the report, e.g. what else ran on the machine")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke test: 3 nights of 3 kB, the tiny model, batch 4 x 64, 1 thread"
    )
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--stem", help="name of the result files (default: learning, or learning-quick)")
    return parser


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parse_args(parser, argv, QUICK)
    if not args.fact_nights or min(args.fact_nights) < 1 or max(args.fact_nights) > args.nights:
        parser.error(f"--fact-nights must lie within 1..{args.nights}")
    if args.by_day_parts < 1:
        parser.error(f"--by-day-parts must be at least 1, not {args.by_day_parts}")
    args.argv = ["engram-ff bench learning", *argv]
    stem = args.stem or ("learning-quick" if args.quick else "learning")
    result = run(args)
    write_result(f"{stem}.json", json.dumps(result, indent=1), args.results)
    figure = plot(args.results / f"{stem}.png", result)
    path = write_result(f"{stem}.md", report(result, figure, f"{stem}.json"), args.results)
    for table in tables(result).values():
        print(table)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
