"""One JSONL line -> a Message, an Event, a Skip, or a BadLine error naming what is wrong.

Four shapes share the folder (the keys are whatever a hook posted, so every field is optional and
checked for type):
- recorder lines   {"timestamp", "session_key", "direction": "in"|"out", "channel", "sender",
                    "content", "tool_calls"}
- hook event lines {"timestamp", "type", "action", "sessionKey", "senderId", ...}: counted, no text
- OpenClaw transcripts {"type": "message", "timestamp", "message": {"role", "content": str or parts}};
  other entry types (session, compaction, model_change...) are skipped
- generic chat lines {"role", "content"}
A message's day is its timestamp's UTC date, else a YYYY-MM-DD in the file name, else today (UTC).
"""

from __future__ import annotations

import contextlib
import os
import re
from datetime import UTC, date, datetime
from pathlib import Path
from typing import NamedTuple

import orjson

ROLES = {"in": "user", "out": "assistant"}  # recorder directions, as transcript roles
SKIPPED_ROLES = {"toolResult"}  # tool output is not conversation, and can be megabytes of file dumps
_DAY = re.compile(rb"(\d{4})-(\d{2})-(\d{2})")
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


class Message(NamedTuple):  # NamedTuples: one is built for every line, and cheaper than a frozen dataclass
    day: str
    ts: str | None
    session: str
    role: str
    sender: str
    text: str
    shape: str  # 'recorder' | 'transcript' | 'chat'


class Event(NamedTuple):
    day: str
    ts: str | None
    type: str
    action: str
    session: str | None


class Skip(NamedTuple):
    reason: str


class BadLine(ValueError):
    """A line that cannot be used; str() is the reason stored in the quarantine table."""


class LineContext(NamedTuple):
    """What a line falls back to when it does not say: the file's day and session."""

    day: str
    session: str


def context_for(path: str | Path) -> LineContext:
    path = Path(path)
    match = _DAY.search(os.fsencode(path.name))
    day = None
    if match:
        with contextlib.suppress(ValueError):  # 2026-13-45.jsonl: not a date after all
            day = date(*map(int, match.groups())).isoformat()
    return LineContext(day or datetime.now(UTC).date().isoformat(), path.stem)


def parse_line(raw: bytes, ctx: LineContext) -> Message | Event | Skip:
    """Raises BadLine for anything that is not one of the four shapes."""
    if not raw or raw.isspace():
        return Skip("empty line")
    raw = _unwrapped(raw)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadLine(_why_undecodable(raw, exc)) from None
    if type(obj) is not dict:
        raise BadLine(f"not a JSON object: {type(obj).__name__}")
    kind = obj.get("type")
    message = obj.get("message")
    if kind == "message" or (isinstance(message, dict) and kind is None):
        return _transcript(obj, message, ctx)
    if "content" in obj:
        return _chat(obj, ctx)
    if "action" in obj or "sessionKey" in obj:
        return _event(obj, ctx)
    if isinstance(kind, str):
        return Skip(f"transcript entry {kind!r}")
    raise BadLine("unknown shape: no 'content', 'message', 'action' or 'type' key")


def _unwrapped(raw: bytes) -> bytes:
    """An object behind a UTF-8 byte order mark (Windows tools write one; `cat` of two such files puts
    one mid-file), or behind the NUL bytes a power loss can leave where a file's unflushed tail was,
    before the writer's next line: the object is the line (RFC 8259 lets a parser ignore the mark)."""
    if raw[0] in (0xEF, 0):
        body = raw.removeprefix(b"\xef\xbb\xbf").lstrip(b"\x00")
        if body[:1] == b"{":
            return body
    return raw


def _transcript(obj: dict, message: object, ctx: LineContext) -> Message | Skip:
    if not isinstance(message, dict):
        raise BadLine(f"message: expected an object, got {type(message).__name__}")
    role = message.get("role")
    if not isinstance(role, str):
        raise BadLine(f"message.role: expected a string, got {type(role).__name__}")
    if role in SKIPPED_ROLES:
        return Skip(f"role {role}")
    text = _text(message.get("content"), "message.content")
    if not text or text.isspace():
        return Skip("no text")
    day, ts = _when(obj.get("timestamp", message.get("timestamp")), ctx)
    return Message(day, ts, ctx.session, role, role, text, "transcript")


def _chat(obj: dict, ctx: LineContext) -> Message | Skip:
    """Recorder lines (direction, session_key, sender) and generic {role, content} lines."""
    text = _text(obj["content"], "content")
    if not text or text.isspace():
        return Skip("no text")  # e.g. a recorder line carrying only tool_calls
    direction = obj.get("direction")
    if isinstance(direction, str) or "session_key" in obj:
        role = ROLES.get(direction, direction) if isinstance(direction, str) else "unknown"  # a list: unhashable
        shape = "recorder"
    else:
        role = obj["role"] if isinstance(obj.get("role"), str) else "unknown"
        shape = "chat"
    sender = _str(obj.get("sender")) or _str(obj.get("name")) or role
    session = _str(obj.get("session_key")) or _str(obj.get("session")) or ctx.session
    day, ts = _when(obj.get("timestamp"), ctx)
    return Message(day, ts, session, role, sender, text, shape)


def _event(obj: dict, ctx: LineContext) -> Event:
    day, ts = _when(obj.get("timestamp"), ctx)
    return Event(
        day,
        ts,
        _str(obj.get("type")) or "unknown",
        _str(obj.get("action")) or "",
        _str(obj.get("sessionKey")) or _str(obj.get("sessionId")),
    )


def _text(content: object, key: str) -> str:
    """A string, or the text parts of a list of parts (thinking, toolCall and image parts dropped)."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    raise BadLine(f"{key}: expected a string or a list of parts, got {type(content).__name__}")


def _when(value: object, ctx: LineContext) -> tuple[str, str | None]:
    """(day, timestamp as written) from an ISO 8601 string or epoch seconds/milliseconds."""
    try:
        if isinstance(value, str) and _ISO_DAY.match(value):
            tail = value[10:]
            if "+" not in tail and "-" not in tail:  # 'Z' or naive: the date is as written
                date.fromisoformat(value[:10])
                return value[:10], value
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return moment.astimezone(UTC).date().isoformat(), value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = value / 1000 if value > 1e11 else value  # JavaScript's Date.now() is in ms
            moment = datetime.fromtimestamp(seconds, UTC)
            return moment.date().isoformat(), moment.isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        pass  # an impossible date: fall back like a missing one
    return ctx.day, value if isinstance(value, str) else None


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _why_undecodable(raw: bytes, exc: Exception) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"invalid UTF-8 at byte {bad.start}"
    if b"\x00" in raw:
        return "binary data (NUL bytes)"
    return f"malformed JSON: {exc}"
