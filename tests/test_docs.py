"""The README stays true to the code (in the spirit of sqlite-utils' test_docs.py): its configuration
table lists every real key with its real default, every `engram-ff` command line in it parses, and
every measured figure sits in a section that names its results file, which exists."""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from engram_ff.daemon.cli import bench_module, build_parser
from engram_ff.daemon.config import Config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
FREE_TEXT_DEFAULTS = {"data_dir", "watch_dir", "facts_file"}  # computed at run time: the table says how


def config_rows() -> dict[str, str]:
    section = README.split("### Configuration", 1)[1].split("\n#", 1)[0]
    return dict(re.findall(r"^\| `(\w+)` \| (.+?) \|", section, flags=re.M))


def test_the_configuration_table_lists_every_key_once():
    assert sorted(config_rows()) == sorted(f.name for f in dataclasses.fields(Config))


@pytest.mark.parametrize("key", sorted(f.name for f in dataclasses.fields(Config)))
def test_the_configuration_table_shows_each_default(key):
    shown = config_rows()[key]
    if key in FREE_TEXT_DEFAULTS:
        return
    literal = shown.strip().strip("`")
    assert tomllib.loads(f"x = {literal}")["x"] == getattr(Config(), key), f"{key}: README shows {shown}"


def command_lines() -> list[str]:
    """Every `engram-ff ...` invocation in a code block or inline code, continuation lines joined."""
    blocks = re.findall(r"```(?:sh|console|bash)?\n(.*?)```", README, flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if re.search(r"(^|[\s/])engram-ff\s", line):
                lines.append(line)
    lines += [code for code in re.findall(r"`([^`]*\bengram-ff [^`]*)`", README) if "\n" not in code]
    return lines


def argv_of(line: str) -> list[str]:
    line = re.sub(r"\s#\s.*$", "", line)  # a trailing comment
    line = line.replace("[", " ").replace("]", " ").replace("…", "X")  # a synopsis: every option once
    words = shlex.split(line.split("&&")[-1].lstrip("$ "))
    start = next(i for i, w in enumerate(words) if w.endswith("engram-ff"))
    return words[start + 1 :]


def test_the_readme_shows_commands():
    assert len(command_lines()) >= 20


@pytest.mark.parametrize("line", command_lines())
def test_every_command_line_in_the_readme_parses(line):
    argv = argv_of(line)
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "command", None) == "bench" and args.bench_args:
            bench_module(args.name).build_parser().parse_args(args.bench_args)
    except SystemExit as exc:
        pytest.fail(f"README command does not parse ({exc.code}): {line}")


# a measured figure: decimals and a unit
FIGURE = re.compile(
    r"\d+\.\d+\s?(%|nats|bits|MiB|MB|GiB|ms|µs|s\b|min\b|x\b)"
)  # a measured figure: decimals and a unit


def sections() -> list[tuple[str, str]]:
    parts = re.split(r"^(#{2,3} .*)$", README, flags=re.M)
    return list(zip(parts[1::2], parts[2::2]))


def test_every_results_file_the_readme_names_exists():
    named = set(re.findall(r"bench/results/[\w.\-]+\w", README))
    assert named and sorted(p for p in named if not (ROOT / p).exists()) == []


def test_every_section_with_measured_figures_names_its_results_file():
    unsourced = [
        heading
        for heading, body in sections()
        if len(FIGURE.findall(body)) >= 3 and "bench/results/" not in heading + body
    ]
    assert unsourced == []
