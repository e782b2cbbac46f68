"""Messages -> training text: the one byte format every update, replay, probe and prompt shares.

A message is the line `sender: text`; a session's messages stand together, a blank line between
sessions, days in order. `engram-ff ask` formats a question the same way, so the model is asked in
the form it learned from.
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
