"""The days of a simulated year of Engram logs, for `engram-ff bench year` (bench/year.py).

A calendar of N nights (365 for the full year) with the kinds of days a real user has, placed at the same
fractions of the year whatever N is, so a short run meets each of them:

  ordinary   150-400 messages of chat in sessions of 10-40 (user and assistant taking turns);
  reference  exactly the same 300 messages on night min(30, N // 3) and on night N, so their wall times
             compare for the same new text;
  quiet      every seventh day: 0-3 messages;
  facts      the ordinary days of month 1 from night 3 (night 3 alone in a run too short to have a month):
             an ordinary day and the study's facts ("Who is Victor?", ...) asked and answered FACT_REPEATS
             times; after month 1, one reminder every 60 days (a single conversation, on an ordinary day);
  burst      night 150: about 50,000 messages;
  off        nights 200-206: the files arrive (Engram writes them elsewhere, or they sync), but the machine
             is off and no update runs; night 207 (wake) catches the eight days up in one update;
  junk       night 250: one line repeated 4,000 times (a pasted log dump) beside 40 ordinary messages.

Text: the public-domain plays and TinyShakespeare of bench/data, cut into sentences; a message is one to
three consecutive sentences from a random place. 365 days of a few hundred messages need about 12 MB of
text and the corpus holds 2.1 MB, so sentences recur about five times over the year: later held-out
scores partly measure sentences already seen, for the newest month and month 1 alike.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import date, timedelta

import orjson

from engram_ff.bench.common import DATA
from engram_ff.bench.make_stream import PLAYS, play_speeches, tiny_speeches
from engram_ff.ingest.reader import split_of
from engram_ff.state.text import conversation

FIRST_DAY = date(2026, 1, 1)
# The plays study learned facts said 64 times in one night of 300 steps (about 8 passes): 0.2 bits per byte;
# said 8 times, half (1.3-2.7). At one pass a night, 48 times on night 3 left them at 2 bits per byte
# (bench/results/year.md's first run), so month 1 repeats them, as a user talks of what is new to them.
FACT_REPEATS = 16
JUNK = "npm WARN deprecated request@2.88.2: request has been deprecated, see https://github.com/request/request"
JUNK_REPEATS = 4000  # in the train split, as the facts' answers are: an update trains on all of them
YEAR = 365


@dataclass
class Day:
    night: int  # 1-based
    date: date
    kind: str  # ordinary, reference, quiet, facts, burst, off, wake, junk
    messages: int  # conversation messages, junk and facts not counted
    reminder: bool = False  # the facts, asked once more
    junk: int = 0  # copies of the junk line

    @property
    def machine_on(self) -> bool:
        return self.kind != "off"


def _at(fraction_of_year: float, nights: int) -> int:
    return max(1, round(fraction_of_year / YEAR * nights))


def calendar(nights: int, seed: int = 0, scale: float = 1.0) -> list[Day]:
    """The year's days; `scale` multiplies every message count (a quick run's days are smaller)."""
    rng = random.Random(seed)
    special = {_at(150, nights): "burst", _at(250, nights): "junk"}
    off_start, off_nights = _at(200, nights), max(1, _at(7, nights))
    for night in range(off_start, off_start + off_nights):
        special[night] = "off"
    special[off_start + off_nights] = "wake"
    special.update({3: "facts", min(30, nights // 3) or 1: "reference", nights: "reference"})
    reminders = {_at(60 * k, nights) for k in range(1, 7)}
    days = []
    for night in range(1, nights + 1):
        kind = special.get(night) or ("quiet" if night % 7 == 0 else "ordinary")
        if kind == "ordinary" and 3 < night <= _at(30, nights):
            kind = "facts"
        count = {"reference": 300, "burst": 50_000, "junk": 40}.get(kind, rng.randint(150, 400))
        day = Day(night, FIRST_DAY + timedelta(night - 1), kind, round(count * scale))
        day.reminder = night in reminders and kind in ("ordinary", "quiet")  # reference days stay the same
        if kind == "quiet":
            day.messages = rng.randint(0, 3)
        if kind == "junk":
            day.junk = round(JUNK_REPEATS * scale)
        days.append(day)
    return days


def sentences() -> list[str]:
    """The corpus as sentences, in reading order."""
    speeches = tiny_speeches((DATA / "tinyshakespeare.txt").read_text())
    speeches += [s for name in PLAYS for s in play_speeches((DATA / "plays" / f"{name}.txt").read_text())]
    return [part for _, _, speech in speeches for part in re.split(r"(?<=[.!?])\s+", speech) if part.strip()]


def chat_record(day: date, millisecond: int, session: str, sender: str, content: str) -> dict:
    """One recorder line of a Telegram chat, as Engram writes it: `user` speaks in, anyone else out."""
    second, ms = divmod(millisecond, 1000)
    stamp = f"{day.isoformat()}T{second // 3600 % 24:02d}:{second // 60 % 60:02d}:{second % 60:02d}.{ms:03d}Z"
    return {
        "timestamp": stamp,
        "session_key": session,
        "direction": "in" if sender == "user" else "out",
        "channel": "telegram",
        "sender": sender,
        "content": content,
        "tool_calls": [],
    }


def day_lines(day: Day, pool: list[str], facts: list[dict], seed: int = 0) -> list[dict]:
    """A day's Engram file: a gateway start-up event, then the day's conversations. Reference days draw
    their messages from one fixed seed, so both hold the same text."""
    rng = random.Random(f"{seed}:{'reference' if day.kind == 'reference' else day.night}")
    chats: list[tuple[str, str]] = []
    for _ in range(day.messages):
        start = rng.randrange(len(pool) - 3)
        chats.append(("", " ".join(pool[start : start + rng.randint(1, 3)])))
    asked = [(f["prompt_user"], f["answer"]) for f in facts]
    conversations: list[list[tuple[str, str]]] = []
    while chats:
        size = rng.randint(10, 40)
        conversations.append(
            [("user" if i % 2 == 0 else "assistant", text) for i, (_, text) in enumerate(chats[:size])]
        )
        chats = chats[size:]
    repeats = FACT_REPEATS if day.kind == "facts" else int(day.reminder)
    for _ in range(repeats):
        conversations.insert(
            rng.randint(0, len(conversations)), [x for q, a in asked for x in (("user", q), ("assistant", a))]
        )
    if day.junk:
        conversations.insert(len(conversations) // 2, [("user", JUNK)] * day.junk)
    lines = [{"timestamp": f"{day.date.isoformat()}T06:00:00.000Z", "type": "gateway", "action": "startup"}]
    total = sum(len(c) for c in conversations) or 1
    step = max(1, 16 * 3600 * 1000 // total)  # spread over 07:00-23:00, a millisecond apart at least
    millisecond = 7 * 3600 * 1000
    for k, chat in enumerate(conversations):
        for sender, text in chat:
            millisecond += step
            lines.append(chat_record(day.date, millisecond, f"chat:{day.date}:{k}", sender, text))
    return lines


def held_out(lines: list[dict], probe_fraction: float, max_bytes: int) -> bytes:
    """A day's held-out text as the daemon writes it (`sender: text` lines, sessions apart), at most max_bytes:
    the messages whose lines, as make_stream.write_day writes them, land in the probe split. Since the
    rolling hold-out (issue 22, daemon/update.py) the night after a day trains them, so for an older day this
    is retained, not unseen, text; the results committed before it were measured when no update trained
    the probe split."""
    rows = [
        {
            "day": line["timestamp"][:10],
            "session": line["session_key"],
            "sender": line["sender"],
            "text": line["content"],
        }
        for line in lines
        if "content" in line and split_of(orjson.dumps(line), probe_fraction) == "probe"
    ]
    return conversation(rows)[:max_bytes]
