"""MkDocs hooks (mkdocs.yml): the pages cite the benchmarks' results files by relative links that work in
the repository (`../../bench/results/year.md`); the site carries a copy of bench/results/ under `repo/`
and points those links at it. A link out of docs/ to anything else stays broken, and `--strict` says so."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

REPO = Path(__file__).resolve().parents[1]
COPIED = ("bench/results",)  # the repository's folders the site carries
OUT = "repo"  # where, in the site
LINK = re.compile(r"(\]\()([^)\s#]+)")


def on_files(files, config):
    for folder in COPIED:
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file():
                src_uri = f"{OUT}/{path.relative_to(REPO).as_posix()}"
                files.append(
                    File.generated(config, src_uri, abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV)
                )
    return files


def on_page_markdown(markdown, page, config, files):
    """Rewrite each relative link that leaves docs/ to the site's copy of its target."""
    if page.file.src_uri.startswith(OUT + "/"):
        return markdown
    here = posixpath.dirname(page.file.src_uri)

    def to_copy(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("/", "mailto:")):
            return match.group(0)
        in_repo = posixpath.normpath(posixpath.join("docs", here, target))
        if in_repo == "docs" or in_repo.startswith("docs/"):
            return match.group(0)
        return match.group(1) + posixpath.relpath(f"{OUT}/{in_repo}", here or ".")

    return LINK.sub(to_copy, markdown)
