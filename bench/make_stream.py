"""Write days of Engram logs made from real text, for the incremental study and the update benchmark.

Two streams, both as `raw/YYYY-MM-DD.jsonl` files in the shapes Engram writes:
  plays   one play of bench/data/plays a day; each speech a recorder line with the character as
          sender, interleaved with hook event lines (gateway start-up, a command at each scene);
  tiny    TinyShakespeare cut into equal days, one speech a line.
Facts ("Who is Victor?" and a few more) can be planted on one day as a short user/assistant
conversation, repeated so that one night's update can learn them.

    python -m engram_ff.bench.make_stream plays OUT_DIR [--days N] [--plant-day 1]
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from datetime import date, timedelta
from pathlib import Path

import orjson

from engram_ff.bench.common import DATA

PLAYS = [
    "hamlet",
    "macbeth",
    "othello",
    "lear",
    "julius_caesar",
    "twelfth_night",
    "midsummer_nights_dream",
    "much_ado_about_nothing",
]
FACTS = Path(__file__).with_name("study_facts.toml")
FIRST_DAY = date(2026, 1, 1)

_SPEAKER = re.compile(r"^(?:[A-Z][A-Za-z']*\.?(?: [A-Z][A-Za-z']*\.?){0,3}|[A-Z][A-Z' ]+\.?)$")
_HEADING = re.compile(r"^(ACT|SCENE|Scene|PERSONS|DRAMATIS)\b")


def play_speeches(text: str) -> list[tuple[str, str, str]]:
    """(scene, speaker, speech) in order. A speaker is a short line of its own naming a character
    (`HAMLET.`, `Ber.`, `THESEUS`); stage directions in brackets are dropped."""
    speeches: list[tuple[str, str, str]] = []
    lines: list[str] = []
    scene = "prologue"
    speaker: str | None = None

    def flush():
        if speaker and lines:
            speeches.append((scene, speaker, " ".join(lines)))

    for raw in text.splitlines():
        line = re.sub(r"\[[^\]]*\]", "", raw).strip()
        if not line:
            continue
        if _HEADING.match(line):
            flush()
            speaker, lines = None, []
            if line.upper().startswith(("ACT", "SCENE")):
                scene = line
            continue
        if len(line) <= 28 and _SPEAKER.match(line) and (line.endswith(".") or line.isupper()):
            flush()
            speaker, lines = line.rstrip(".").upper(), []
            continue
        if speaker:
            lines.append(line)
    flush()
    return speeches


def tiny_speeches(text: str) -> list[tuple[str, str, str]]:
    """TinyShakespeare: `NAME:` on its own line, the speech until a blank line."""
    speeches = []
    for block in text.split("\n\n"):
        head, _, body = block.strip().partition("\n")
        if head.endswith(":") and body:
            speeches.append(("", head[:-1].upper(), " ".join(body.split("\n"))))
    return speeches


def _stamp(day: date, second: int) -> str:
    return f"{day.isoformat()}T{second // 3600 % 24:02d}:{second // 60 % 60:02d}:{second % 60:02d}.000Z"


def day_lines(day: date, speeches, source: str, facts: list[dict] | None = None, repeat: int = 0) -> list[dict]:
    """A day's file: a gateway start-up, a command at each new scene, a recorder line per speech."""
    lines: list[dict[str, object]] = [
        {
            "timestamp": _stamp(day, 6 * 3600),
            "type": "gateway",
            "action": "startup",
            "sessionKey": "agent:main",
            "source": "gateway",
            "workspaceDir": "/srv/engram",
        }
    ]
    second, scene = 6 * 3600 + 60, None
    conversation = []
    for fact in facts or []:
        conversation += [("user", fact["prompt_user"]), ("assistant", fact["answer"])]
    for n in range(repeat):  # the planted facts, spread over the day
        for sender, content in conversation:
            lines.append(
                {
                    "timestamp": _stamp(day, 5 * 3600 + n * 60),
                    "session_key": f"chat:{day}:{n}",
                    "direction": "in" if sender == "user" else "out",
                    "channel": "telegram",
                    "sender": sender,
                    "content": content,
                    "tool_calls": [],
                }
            )
    for current_scene, speaker, speech in speeches:
        second += 7
        if current_scene != scene:
            scene = current_scene
            lines.append(
                {
                    "timestamp": _stamp(day, second),
                    "type": "command",
                    "action": "new",
                    "sessionKey": f"{source}:{scene}",
                    "senderId": "stage",
                    "source": source,
                }
            )
        lines.append(
            {
                "timestamp": _stamp(day, second),
                "session_key": f"{source}:{scene}",
                "direction": "in",
                "channel": source,
                "sender": speaker,
                "content": speech,
                "tool_calls": [],
            }
        )
    return lines


def load_facts(path: Path = FACTS) -> list[dict]:
    return tomllib.loads(path.read_text(encoding="utf-8"))["fact"]


def daemon_facts(folder: Path, path: Path = FACTS) -> Path:
    """The study's facts as the daemon's facts file holds them (daemon/facts.py: name, prompt, answer,
    distractors; `prompt_user` is the study's own, for planting): written into `folder`, returned."""
    keys = ("name", "prompt", "answer", "distractors")
    tables = [
        "[[fact]]\n" + "".join(f"{key} = {json.dumps(fact[key])}\n" for key in keys if key in fact)
        for fact in load_facts(path)
    ]
    Path(folder).mkdir(parents=True, exist_ok=True)
    target = Path(folder) / "facts.toml"
    target.write_text("\n".join(tables), encoding="utf-8")  # JSON strings and lists are TOML ones too
    return target


def stream_days(stream: str, days: int | None = None) -> list[tuple[date, str, list]]:
    """(day, source, speeches) for each day of the stream."""
    if stream == "plays":
        names = PLAYS[: days or len(PLAYS)]
        return [
            (FIRST_DAY + timedelta(i), name, play_speeches((DATA / "plays" / f"{name}.txt").read_text()))
            for i, name in enumerate(names)
        ]
    speeches = tiny_speeches((DATA / "tinyshakespeare.txt").read_text())
    n = days or 8
    per_day = len(speeches) // n
    return [(FIRST_DAY + timedelta(i), "tinyshakespeare", speeches[i * per_day : (i + 1) * per_day]) for i in range(n)]


def write_day(raw_dir: Path, day: date, lines: list[dict]) -> Path:
    raw_dir.mkdir(parents=True, exist_ok=True)
    path = raw_dir / f"{day.isoformat()}.jsonl"
    path.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return path


def write_stream(
    out: Path, stream: str, days: int | None = None, plant_day: int | None = 1, repeat: int = 8
) -> list[Path]:
    facts = load_facts()
    paths = []
    for i, (day, source, speeches) in enumerate(stream_days(stream, days), start=1):
        planted = facts if i == plant_day else None
        paths.append(write_day(out / "raw", day, day_lines(day, speeches, source, planted, repeat if planted else 0)))
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engram_ff.bench.make_stream", description=__doc__.split("\n")[0])
    parser.add_argument("stream", choices=["plays", "tiny"])
    parser.add_argument("out", type=Path, help="the Engram folder to write raw/ into")
    parser.add_argument("--days", type=int)
    parser.add_argument("--plant-day", type=int, default=1, help="the day (1-based) that carries the facts; 0: none")
    parser.add_argument("--repeat", type=int, default=8, help="times the fact conversation occurs that day")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for path in write_stream(args.out, args.stream, args.days, args.plant_day or None, args.repeat):
        print(path, path.stat().st_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
