"""What commands print: aligned tables and sentences for people, JSON for scripts. Both daemon/commands.py
and the service (the demo's probe table) print through here.

People get rounded numbers with units and local times; scripts get `--json`, with every value as the
database holds it. Every text that came from outside (a file name, an error, a fact's name) passes
through `printable`, so a name holding a newline cannot forge a line and one holding ESC cannot move
the cursor or recolour the terminal.
"""

from __future__ import annotations

import shlex
from datetime import datetime

import orjson


def printable(text: str) -> str:
    """Control and other unprintable characters as Python escapes (`\\n`, `\\x1b`, `\\u2028`)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape", "backslashreplace").decode() for c in text)


def number(value: float) -> str:
    """Three decimals below 10, fewer above, two digits below 0.01: 2.347 bits per byte, 30.1 s, 0.0014."""
    if value.is_integer() and abs(value) < 1e15:
        return f"{int(value):,}" if abs(value) >= 10_000 else str(int(value))
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) < 0.01:
        return f"{value:.2g}"  # 0.0014 bits per byte, not 0.001
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.3f}"


def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number(value)
    return printable(str(value))


def plural(n: int, word: str) -> str:
    """1 file, 2 files; with thousands separators."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def size(n_bytes: float | None) -> str:
    """Decimal units, as file managers show sizes: 812 B, 1.6 kB, 23 MB."""
    if n_bytes is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n_bytes) >= scale:
            value = n_bytes / scale
            return f"{value:.1f} {unit}" if value < 10 else f"{value:,.0f} {unit}"
    return f"{int(n_bytes)} B"


def duration(seconds: float | None) -> str:
    """42 s, 3 min 5 s, 2 h 10 min: the two largest units a person needs."""
    if seconds is None:
        return "-"
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs and minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def moment(stamp: str | None) -> str:
    """A stored UTC timestamp as local time to the minute: what a person compares with a clock."""
    if not stamp:
        return "-"
    try:
        return datetime.fromisoformat(stamp).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return printable(stamp)


def run_name(row: dict) -> str:
    """How people see a run: 'update 3 (run 5)'. The number counts this data directory's runs of one
    kind (runs.number), so a person follows night 3 through `status`, `learned` and `history`; the id,
    which probe passes share, is what sqlite3 queries and the log name."""
    kind, number = row.get("kind") or "update", row.get("number")
    return f"{kind} {number} (run {row['id']})" if number is not None else f"{kind} run {row['id']}"


def suggest(words: str, data: str | None = None) -> str:
    """A command for the user to type next, with their --data kept, so it acts on the same directory."""
    return f"`engram-ff {words}" + (f" --data {shlex.quote(str(data))}`" if data else "`")


def table(rows: list[dict], columns: list[str]) -> str:
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def probe_table(rows: list[dict]) -> str:
    return table(rows, ["probe", "kind", "day", "metric", "value"])


def as_json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()
