"""The README and the pages in docs/ stay true to the code (in the spirit of sqlite-utils' test_docs.py):
the configuration table is what docs/config_reference.py generates from the `Config` dataclass and shows
every real default, every `engram-ff` command line parses, every measured figure sits in a section that
names its results file, which exists, and every relative link and #anchor resolves, on a forge as in the
MkDocs site (mkdocs.yml; .ci/run builds it with --strict)."""

from __future__ import annotations

import dataclasses
import importlib.util
import posixpath
import re
import shlex
import tomllib
import unicodedata
from pathlib import Path

import pytest

from engram_ff.daemon.cli import bench_module, build_parser
from engram_ff.daemon.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
FREE_TEXT_DEFAULTS = {"data_dir", "watch_dir", "facts_file"}  # computed at run time: the table says how
SITE_COPIES = ("bench/results/",)  # what docs/hooks.py copies into the site for links that leave docs/


def name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def text(page: Path) -> str:
    return page.read_text()


def config_reference():
    spec = importlib.util.spec_from_file_location("config_reference", DOCS / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the quick start --------------------------------------------------------------------------------------


def readme_commands() -> list[str]:
    first_block = re.search(r"```sh\n(.*?)```", text(README), flags=re.S).group(1)
    return first_block.splitlines()


def test_the_readme_is_a_quick_start():
    assert len(text(README).splitlines()) <= 200


def test_the_readmes_first_two_commands_install_and_run_the_demo_then_the_tests():
    install, tests = readme_commands()[:2]
    assert install.endswith("&& .venv/bin/engram-ff run --demo") and "pip install" in install
    assert tests.endswith("&& .venv/bin/python -m pytest -q")


def test_ci_runs_the_readmes_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    assert readme_commands()[1] in ci.splitlines()


# --- configuration ----------------------------------------------------------------------------------------


def config_rows() -> dict[str, str]:
    page = text(DOCS / "configuration.md")
    return dict(re.findall(r"^\| `(\w+)` \| (.+?) \|", page, flags=re.M))


def test_the_configuration_table_is_generated_from_the_dataclass_and_up_to_date():
    reference = config_reference()
    page = text(DOCS / "configuration.md")
    assert reference.rewritten(page) == page, "run: python docs/config_reference.py"


def test_the_configuration_table_lists_every_key_once():
    assert sorted(config_rows()) == sorted(f.name for f in dataclasses.fields(Config))


@pytest.mark.parametrize("key", sorted(f.name for f in dataclasses.fields(Config)))
def test_the_configuration_table_shows_each_default(key):
    shown = config_rows()[key]
    if key in FREE_TEXT_DEFAULTS:
        return
    literal = shown.strip().strip("`")
    assert tomllib.loads(f"x = {literal}")["x"] == getattr(Config(), key), f"{key}: the table shows {shown}"


def test_the_generator_refuses_a_key_it_cannot_describe(monkeypatch):
    reference = config_reference()
    monkeypatch.delitem(reference.WHAT, "schedule")
    with pytest.raises(SystemExit, match="schedule"):
        reference.table()


def toml_blocks() -> list[tuple[str, str]]:
    return [(name(p), block) for p in PAGES for block in re.findall(r"```toml\n(.*?)```", text(p), flags=re.S)]


@pytest.mark.parametrize("page,block", toml_blocks())
def test_every_toml_example_is_a_valid_configuration_file(tmp_path, page, block):
    (tmp_path / "engram-ff.toml").write_text(block)
    load_config(tmp_path / "engram-ff.toml", environ={})


# --- commands ---------------------------------------------------------------------------------------------


def command_lines() -> list[tuple[str, str]]:
    """Every `engram-ff ...` invocation in a code block or inline code, continuation lines joined."""
    lines = []
    for page in PAGES:
        body = text(page)
        for block in re.findall(r"```(?:sh|console|bash)?\n(.*?)```", body, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                if re.search(r"(^|[\s/])engram-ff\s", line):
                    lines.append((name(page), line))
        lines += [(name(page), c) for c in re.findall(r"`([^`]*\bengram-ff [^`]*)`", body) if "\n" not in c]
    return lines


def argv_of(line: str) -> list[str]:
    line = re.sub(r"\s#\s.*$", "", line)  # a trailing comment
    line = line.replace("[", " ").replace("]", " ").replace("…", "X")  # a synopsis: every option once
    words = shlex.split(line.split("&&")[-1].lstrip("$ "))
    start = next(i for i, w in enumerate(words) if w.endswith("engram-ff"))
    return words[start + 1 :]


def test_the_docs_show_commands():
    pages = {page for page, _ in command_lines()}
    assert len(command_lines()) >= 20 and "README.md" in pages and "docs/running.md" in pages


@pytest.mark.parametrize("page,line", command_lines())
def test_every_command_line_parses(page, line):
    argv = argv_of(line)
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "command", None) == "bench" and args.bench_args:
            bench_module(args.name).build_parser().parse_args(args.bench_args)
    except SystemExit as exc:
        pytest.fail(f"{page}: command does not parse ({exc.code}): {line}")


# --- measured figures and their results files -------------------------------------------------------------

FIGURE = re.compile(r"\d+\.\d+\s?(%|nats|bits|MiB|MB|GiB|ms|µs|s\b|min\b|x\b)")  # decimals and a unit
FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)


def sections(page: Path) -> list[tuple[str, str]]:
    """(heading, body) for each heading of levels 1 to 3, outside fenced code."""
    out, heading, body, fenced = [], f"({name(page)}, before any heading)", [], False
    for line in text(page).splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if not fenced and re.match(r"#{1,3} ", line):
            out.append((heading, "\n".join(body)))
            heading, body = line, []
        else:
            body.append(line)
    out.append((heading, "\n".join(body)))
    return out


def test_every_results_file_the_docs_name_exists():
    named = {p for page in PAGES for p in re.findall(r"bench/results/[\w.\-/]+\w", text(page))}
    assert named and sorted(p for p in named if not (ROOT / p).exists()) == []


def test_every_section_with_measured_figures_names_its_results_file():
    unsourced = [
        f"{name(page)}: {heading}"
        for page in PAGES
        for heading, body in sections(page)
        if len(FIGURE.findall(body)) >= 3 and "bench/results/" not in heading + body
    ]
    assert unsourced == []


def test_every_benchmark_page_links_its_results():
    for page in sorted((DOCS / "benchmarks").glob("*.md")):
        if page.name != "index.md":
            assert re.search(r"\]\(\.\./\.\./bench/results/[\w.\-]+\.md\)", text(page)), name(page)


# --- links and anchors ------------------------------------------------------------------------------------


def plain(heading: str) -> str:
    """A heading's text as a reader sees it: no code marks, links reduced to their text."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    return heading.replace("`", "").replace("*", "").strip()


def forge_slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", plain(heading).lower()).replace(" ", "-")


def mkdocs_slug(heading: str) -> str:
    """Python-Markdown's toc slugify, which MkDocs uses."""
    value = unicodedata.normalize("NFKD", plain(heading)).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def anchors(page: Path) -> set[str]:
    """The anchors a link may use: those GitHub and MkDocs both give a heading."""
    headings = [h.lstrip("#").strip() for h, _ in sections(page)[1:]]
    return {forge_slug(h) for h in headings if forge_slug(h) == mkdocs_slug(h)}


def links(page: Path) -> list[str]:
    body = FENCE.sub("", text(page))
    body = re.sub(r"`[^`\n]*`", "", body)
    return re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", body)


def all_links() -> list[tuple[str, str]]:
    return [(name(page), link) for page in PAGES for link in links(page)]


def test_the_pages_link_to_each_other():
    assert len(all_links()) >= 30


@pytest.mark.parametrize("page,link", all_links())
def test_every_relative_link_and_anchor_resolves(page, link):
    if re.match(r"[a-z]+:", link):
        return  # a URL: not checked offline
    path, _, anchor = link.partition("#")
    here = posixpath.dirname(page)
    target = posixpath.normpath(posixpath.join(here, path)) if path else page
    assert not target.startswith(".."), f"{page}: {link} leaves the repository"
    assert (ROOT / target).exists(), f"{page}: {link}: no such file"
    if page.startswith("docs/") and not target.startswith("docs/"):
        assert target.startswith(SITE_COPIES), f"{page}: {link}: the site carries no copy of {target}"
    if anchor:
        assert target.endswith(".md"), f"{page}: {link}: an anchor into a file that is not a page"
        assert anchor in anchors(ROOT / target), f"{page}: {link}: no heading {anchor!r} in {target}"


def test_every_page_is_in_the_site():
    nav = (ROOT / "mkdocs.yml").read_text()
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert sorted(p for p in pages if p not in nav) == []
