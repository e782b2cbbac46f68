"""`engram-ff ask`: a question to the current model, asked in the form the model learned from.

The training text writes a conversation as `sender: text` lines (state/text.py), so the question is a
line in which the user's usual sender name says it, and the assistant's name has just begun the
next. The answer is what the model writes up to the end of that line's turn: where a line of a known
sender, or a blank line, begins. Greedy by default, so the same model answers the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engram_ff.model.generate import generate
from engram_ff.state import queries
from engram_ff.state.text import end_of_turn, question_prompt

USER, ASSISTANT = "user", "assistant"  # the roles ingest/parse.py gives each side, and their fallback names


@dataclass
class Voices:
    asker: str  # the sender name of the user's messages in the training text
    answerer: str  # the assistant's
    senders: list[str]  # every name a message line may start with: one of them ends the answer's turn


def voices(db) -> Voices:
    """Recorder lines carry a sender name (a chat handle, a bot's name), transcripts the role: the most
    frequent sender of each role among recent messages is the name that side goes by now."""
    rows = queries.recent_senders(db)
    asker = next((r["sender"] for r in rows if r["role"] == USER), USER)
    answerer = next((r["sender"] for r in rows if r["role"] == ASSISTANT), ASSISTANT)
    return Voices(asker, answerer, sorted({r["sender"] for r in rows} | {asker, answerer}))


def prompt(question: str, who: Voices) -> bytes:
    return question_prompt(question, who.asker, who.answerer)


def answer(
    model,
    text: bytes,
    who: Voices,
    *,
    max_bytes: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> bytes:
    """The model's continuation of `text` up to the end of its turn, at most max_bytes."""
    out = bytearray()
    for byte in generate(model, text, max_bytes, temperature, generator):
        out += byte
        if b"\n" in out and (end := end_of_turn(bytes(out), who.senders)) is not None:
            return bytes(out[:end]).rstrip()
    end = end_of_turn(bytes(out), who.senders, complete=True)
    return bytes(out[:end] if end is not None else out).rstrip()
