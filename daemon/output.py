"""What commands print: aligned tables for people, JSON for scripts. Both daemon/commands.py and the
service (the demo's probe table) print through here."""

from __future__ import annotations

import orjson


def table(rows: list[dict], columns: list[str]) -> str:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(r.get(c, "")).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


def probe_table(rows: list[dict]) -> str:
    return table([{**r, "value": f"{r['value']:.4f}"} for r in rows], ["probe", "kind", "day", "metric", "value"])


def as_json(value: object) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str).decode()
