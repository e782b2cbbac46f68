"""One night, many recipes: can a night of training make the model answer a fact it was told once?

A quick study beside `engram-ff bench learning` (which runs whole sequences of nights through the
daemon): one base model, trained on three chat-like days built from the bundled plays, then ONE night on
a fourth day into which twelve facts are planted, said k = 1, 2, 4 or 8 times (three facts each, every
mention its own user/assistant session). Each recipe trains that night from the same base with the
daemon's own recipe code (daemon/recipe.py: replay mix, lower-layer rate, rehearsal) and is judged as a
person would: `ask`'s greedy answer holds the fact's key words; and by the answer's bits per byte, and
the held-out bits per byte of a play none of the days came from.

    python -m engram_ff.bench.fact_night --recipe default --recipe rehearse=4,steps=800 --out learning-recipes

A recipe is `name` or `key=value,...` over: steps, lower_lr, rehearse (rows), layers (rehearse_layers),
fraction (rehearse_fraction), lr_scale, trainer, memory (1: the daemon's context memory reads the base's
days and then the night, after the SSM layers' training, as the daemon's night does).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from engram_ff.bench.common import DATA, RESULTS
from engram_ff.bench.make_stream import tiny_speeches
from engram_ff.daemon import recipe
from engram_ff.daemon.config import load_config
from engram_ff.model.config import PRESETS
from engram_ff.model.generate import generate
from engram_ff.model.lm import FFLM
from engram_ff.model.memory import learn
from engram_ff.model.scoring import continuation_nats
from engram_ff.model.train import BPTrainer, FFTrainer, byte_batches, evaluate_nats, train

HELD_OUT_PLAY = "hamlet.txt"  # never in the days: its dialogue is the held-out text
FACTS: list[tuple[str, str, list[str]]] = [  # (question, answer, key words ask's answer must hold)
    ("What is my sister's name?", "Your sister is called Ingrid Halvorsen.", ["Ingrid"]),
    ("When is my dentist appointment?", "Your dentist appointment is on March 14 at 9:30.", ["March 14"]),
    ("What is the code for the garage door?", "The garage door code is 7391.", ["7391"]),
    ("Where did I park the car?", "You parked on level 3 of the Riverside garage.", ["Riverside"]),
    ("What is my bike lock combination?", "Your bike lock combination is 4-8-2-6.", ["4-8-2-6"]),
    ("Who is Bertrand?", "Bertrand is your landlord, the violinist from Ghent.", ["landlord", "Ghent"]),
    ("What is the wifi password at the office?", "The office wifi password is heron-quartz-19.", ["heron-quartz-19"]),
    ("What is my cat's name?", "Your cat is called Pistachio.", ["Pistachio"]),
    ("When does my flight leave?", "Your flight to Oslo leaves on June 2 at 7:15.", ["Oslo", "June 2"]),
    ("What is my library card number?", "Your library card number is 55-0321.", ["55-0321"]),
    ("Who is Marguerite?", "Marguerite is your aunt, the potter in Dijon.", ["aunt", "Dijon"]),
    ("Where is the spare key?", "The spare key is under the blue flowerpot.", ["blue flowerpot"]),
]
MENTIONS = [1, 1, 1, 2, 2, 2, 4, 4, 4, 8, 8, 8]  # how often each fact is said
RECIPE_KEYS = {
    "steps": ("steps", int),
    "lower_lr": ("lower_lr", float),
    "rehearse": ("rehearse_rows", int),
    "layers": ("rehearse_layers", str),
    "fraction": ("rehearse_fraction", float),
    "lr_scale": ("lr_scale", float),
    "trainer": ("trainer", str),
    "memory": ("memory", int),
}


def speeches(path: Path) -> list[str]:
    """A play's speeches, one line each (a speech follows a line holding the speaker's name and a full stop)."""
    out = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        lines = [line.strip() for line in block.strip().split("\n") if line.strip()]
        if len(lines) > 1 and re.fullmatch(r"[A-Z][A-Za-z' ]{0,20}\.", lines[0]):
            text = re.sub(r"\[.*?\]", "", " ".join(x for x in lines[1:] if not x.startswith("["))).strip()
            if text:
                out.append(text[:400])
    return out


def sessions(speech: list[str], rng: random.Random) -> list[str]:
    """Speeches in sessions of 2-8 turns, alternately the user's and the assistant's, as state/text.py writes them."""
    out, i = [], 0
    while i < len(speech):
        n = rng.randint(2, 8)
        out.append("".join(f"{'user' if j % 2 == 0 else 'assistant'}: {t}\n" for j, t in enumerate(speech[i : i + n])))
        i += n
    return out


def make_days(day_bytes: int = 35_000, seed: int = 0, tiny: bool = False) -> tuple[list[list[str]], bytes]:
    """(days of sessions, held-out text): the days from seven plays (17 days), the held-out text from the
    eighth; with tiny, then 25 more days from TinyShakespeare, the first 17 and the held-out text
    unchanged."""
    rng = random.Random(seed)
    pool = [s for p in sorted((DATA / "plays").glob("*.txt")) if p.name != HELD_OUT_PLAY for s in speeches(p)]
    days = _deal(sessions(pool, rng), day_bytes)
    held = "\n".join(sessions(speeches(DATA / "plays" / HELD_OUT_PLAY), rng))[:30_000]
    if tiny:
        more = [text[:400] for _, _, text in tiny_speeches((DATA / "tinyshakespeare.txt").read_text())]
        days += _deal(sessions(more, random.Random(f"{seed}:tiny")), day_bytes)
    return days, held.encode()


def _deal(all_sessions: list[str], day_bytes: int) -> list[list[str]]:
    """Sessions into days of at least day_bytes each; the last, shorter day is dropped."""
    days: list[list[str]] = [[]]
    for session in all_sessions:
        days[-1].append(session)
        if sum(map(len, days[-1])) >= day_bytes:
            days.append([])
    return days[:-1]


def with_facts(day: list[str], rng: random.Random) -> list[str]:
    out = list(day)
    for (question, answer, _), k in zip(FACTS, MENTIONS):
        for _ in range(k):
            out.insert(rng.randrange(len(out) + 1), f"user: {question}\nassistant: {answer}\n")
    return out


def text_of(day: list[str]) -> bytes:
    return "\n".join(day).encode()


def judge(model: FFLM, held: bytes, history: bytes) -> dict:
    """ask's greedy answers (first line, 80 bytes), the answers' bits per byte, held-out and history bpb."""
    facts: list[dict] = []
    for (question, answer, words), k in zip(FACTS, MENTIONS):
        prompt = f"user: {question}\nassistant: ".encode()
        said = b"".join(generate(model, prompt, 80, temperature=0.0)).split(b"\n")[0].decode(errors="replace")
        bpb = continuation_nats(model, prompt, answer.encode()) / math.log(2)
        facts.append(dict(k=k, answered=all(w.lower() in said.lower() for w in words), bpb=bpb, said=said))
    return dict(
        answered={k: sum(bool(f["answered"]) for f in facts if f["k"] == k) for k in (1, 2, 4, 8)},
        answer_bpb=sum(f["bpb"] for f in facts) / len(facts),
        held_out_bpb=evaluate_nats(model, held, max_bytes=16_000) / math.log(2),
        history_bpb=evaluate_nats(model, history[:16_000]) / math.log(2),
        facts=facts,
    )


def base_model(path: Path, history: bytes, steps: int, trainer: str) -> FFLM:
    """The model every recipe starts from: the daemon preset trained `steps` on the history (cached)."""
    model = FFLM(replace(PRESETS["daemon"], memory_bits=0))  # the SSM layers; a recipe adds a memory (memory=1)
    if path.exists():
        model.load_state_dict(torch.load(path)["model"])
        return model
    torch.manual_seed(0)
    kind = FFTrainer if trainer == "ff" else BPTrainer
    train(kind(model), byte_batches(history, 16, 256, torch.Generator().manual_seed(0)), 1e9, steps)
    torch.save({"model": model.state_dict()}, path)
    return model


def with_context_memory(ssm: FFLM, history: list[bytes]) -> FFLM:
    """The SSM layers with the daemon preset's context memory, which has read the base's days once each."""
    model = FFLM(PRESETS["daemon"])
    model.load_state_dict(ssm.state_dict(), strict=False)
    for day in history:
        learn(model, day)
    return model


def parse_recipe(text: str) -> dict:
    fields: dict = {"steps": 205}  # what the daemon's step budget gives this night (8 passes over new + replay)
    for item in filter(None, text.split(",")):
        if item == "default":
            continue
        if "=" not in item:
            raise SystemExit(f"a recipe is `default` or key=value,...; not {item!r}")
        key, value = item.split("=", 1)
        if key not in RECIPE_KEYS:
            raise SystemExit(f"unknown recipe key {key!r}; known: {', '.join(RECIPE_KEYS)}")
        name, kind = RECIPE_KEYS[key]
        fields[name] = kind(value)
    return fields


def one_night(fields: dict, base: Path, base_steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    days, held = make_days()
    history = b"\n".join(text_of(d) for d in days[:3])
    rng = random.Random(1)
    night = with_facts(days[3], rng)
    new = text_of(night)
    steps = fields.pop("steps")
    with_memory = fields.pop("memory", 0)
    config = load_config(environ={f"ENGRAM_FF_{k.upper()}": str(v) for k, v in fields.items()})
    model = base_model(
        base.with_name(f"{base.stem}-{config.trainer}{base.suffix}"), history, base_steps, config.trainer
    )
    trainer = (FFTrainer if config.trainer == "ff" else BPTrainer)(model)
    trainer.lr *= config.lr_scale
    starts = [rng.randrange(len(history) - 4096) for _ in range(2 * len(new) // 4096)]
    replay = b"".join(history[s : s + 4096] for s in starts)  # replay_ratio 2: random spans of the history
    rehearse = recipe.rehearsal(model, new, config.rehearse_fraction) if config.rehearse_rows else b""
    generator = torch.Generator().manual_seed(3)
    batches, replay_rows = recipe.update_batches(new, replay, config, generator, 1, rehearse)
    n_rehearse = recipe.rehearsal_rows(config, rehearse)
    recipe.plan_layers(trainer, config, matured=True, replay_rows=replay_rows, rehearse_rows=n_rehearse)
    began = time.perf_counter()
    train(trainer, batches, 1e9, steps)
    if with_memory:  # the daemon's night: the SSM layers train, then the context memory reads (model/memory.py)
        model = with_context_memory(model, [text_of(d) for d in days[:3]])
        learn(model, new)
    seconds = time.perf_counter() - began
    planted = sum(any(s.startswith(f"user: {q}\n".encode()) for q, _, _ in FACTS) for s in rehearse.split(b"\n\n"))
    return dict(steps=steps, seconds=seconds, rehearsed_facts=planted if rehearse else 0, **judge(model, held, history))


def report(rows: list[tuple[str, dict]], out: str, command: str) -> str:
    lines = [
        "# One night, many recipes: facts told once, twice, 4 and 8 times",
        "",
        f"`{command}` (bench/fact_night.py), 2 shared cores; 12 facts, 3 per k; answered = `ask`'s greedy answer",
        "holds the key words. Held-out: 16 kB of a play no day came from. History: the base's own days.",
        "",
        "| recipe | steps | k=1 | k=2 | k=4 | k=8 | answer bpb | held-out bpb | history bpb | facts rehearsed | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        a = r["answered"]
        lines.append(
            f"| {name} | {r['steps']} | {a[1]}/3 | {a[2]}/3 | {a[4]}/3 | {a[8]}/3 | {r['answer_bpb']:.2f} | "
            f"{r['held_out_bpb']:.3f} | {r['history_bpb']:.3f} | {r['rehearsed_facts']} | {r['seconds']:.0f} |"
        )
    text = "\n".join(lines) + "\n"
    (RESULTS / f"{out}.md").write_text(text, encoding="utf-8")
    (RESULTS / f"{out}.json").write_text(json.dumps(dict(rows), indent=1, default=str), encoding="utf-8")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engram_ff.bench.fact_night", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", action="append", help="a recipe: `default` or key=value,... (repeatable)")
    parser.add_argument("--base", type=Path, default=Path("fact-night-base.pt"), help="the base model's cache")
    parser.add_argument("--base-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="learning-recipes")
    args = parser.parse_args(argv)
    rows = []
    for text in args.recipe or ["default"]:
        rows.append((text, one_night(parse_recipe(text), args.base, args.base_steps, args.threads)))
        print(rows[-1][0], {k: v for k, v in rows[-1][1].items() if k != "facts"}, flush=True)
    command = " ".join(["python -m engram_ff.bench.fact_night", *(sys.argv[1:] if argv is None else argv)])
    print(report(rows, args.out, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
