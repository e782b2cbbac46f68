"""Messages -> training text: the one byte format every update, replay, probe and prompt shares.

A message is the line `sender: text`; a session's messages stand together, a blank line between
sessions, days in order. `engram-ff ask` formats a question the same way, so the model is asked in
the form it learned from, and reads the answer's end the same way: where the next message begins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def message_line(sender: str, text: str) -> bytes:
    return f"{sender}: {text}\n".encode("utf-8", "surrogatepass")


def conversation(rows: Iterable[Mapping]) -> bytes:
    """rows (with day, session, sender, text), already in order -> one byte stream."""
    parts, previous = [], None
    for row in rows:
        key = (row.get("day"), row["session"])
        if previous is not None and key != previous:
            parts.append(b"\n")
        parts.append(message_line(row["sender"], row["text"]))
        previous = key
    return b"".join(parts)


def question_prompt(question: str, asker: str, answerer: str) -> bytes:
    """`asker` says `question` and `answerer`'s line has just begun, as the fact probes ask.

    No blank line before it, although one starts every session in the training text: on the demo's
    model (`run --demo`, then `ask`) a leading blank line drew "Victor is your brother…" for three of
    its four questions, while without it three of four got their own answer
    (bench/results/fresh-clone.md)."""
    return message_line(asker, question) + f"{answerer}: ".encode("utf-8", "surrogatepass")


def end_of_turn(answer: bytes, senders: Iterable[str], *, complete: bool = False) -> int | None:
    """Where a generated answer's turn ends, or None while it has not (yet) ended.

    A message ends at a newline followed by a blank line (the session ended) or by `name: ` of a known
    sender (the next message began). Any other newline is inside a multi-line message. A newline whose
    continuation is still too short to tell returns None, so the caller generates more before deciding;
    once `complete` (no more bytes will come) such a newline ends the turn, as no answer line is kept
    that might be the start of the next message.
    """
    heads = [f"{s}: ".encode("utf-8", "surrogatepass") for s in senders]
    start = 0
    while (newline := answer.find(b"\n", start)) != -1:
        rest = answer[newline + 1 :]
        if rest[:1] == b"\n" or any(rest.startswith(head) for head in heads):
            return newline
        if not rest or any(head.startswith(rest) for head in heads):
            return newline if complete else None  # it may still become the next message's first bytes
        start = newline + 1
    return None
