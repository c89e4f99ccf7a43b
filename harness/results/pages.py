"""The published tables of the reference pages under ``docs/``, generated from committed results.

``python -m harness.results.pages`` rewrites every generated section of the pages in ``PAGES``;
``python -m harness.results.pages --check`` writes nothing and exits 1 naming each page whose
sections differ from what the committed results give (``tests/test_readme.py`` runs the check).

A page is hand-written prose around generated sections. A section is marked by two lines::

    <!-- generated from results/paper/summary.md: python -m harness.results.pages -->
    ...
    <!-- end of generated section -->

and holds a line naming its source, then the report that ``lopt report`` (or ``lopt suite``)
wrote to that ``summary.md``:
everything after its title line (provenance, targets, tuning, the per-task tables), headings one
level down so that they nest under the page's ``##`` section, figure lines left out (the page
shows the figures it wants), relative links rewritten to be relative to the page. Text outside
the markers is never touched; a page is written atomically, and only when it changes.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from harness.errors import UsageError
from harness.util import write_text_atomically

#: The pages with generated sections, relative to the repository root.
PAGES = ("docs/results.md",)

BEGIN = "<!-- generated from {source}: python -m harness.results.pages -->"
END = "<!-- end of generated section -->"
_SECTION = re.compile(
    r"^<!-- generated from (?P<source>\S+): python -m harness\.results\.pages -->\n"
    r".*?^<!-- end of generated section -->$",
    re.S | re.M,
)
_RELATIVE_LINK = re.compile(r"\]\((?![a-z]+:|/|#)([^)]+)\)")


def report_section(summary: str, source_dir: str, page_dir: str) -> str:
    """The body of a generated section: the report ``summary`` (the text of a ``summary.md``
    in ``source_dir``) without its title line and figure lines, headings one level down,
    blank runs collapsed to one blank line, relative links made relative to ``page_dir``
    (both folders relative to the repository root)."""
    lines = summary.splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    kept = ["#" + line if line.startswith("#") else line for line in lines]
    kept = [line for line in kept if not line.startswith("![")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    prefix = os.path.relpath(source_dir or ".", page_dir or ".")
    return _RELATIVE_LINK.sub(lambda match: f"]({Path(prefix, match.group(1)).as_posix()})", text)


def render_page(page_text: str, page: str, root: Path) -> str:
    """``page_text`` (the page at ``page``, relative to ``root``) with every generated section
    replaced by the section its source gives now. ``UsageError`` names a missing source."""
    page_dir = str(Path(page).parent)

    def replace(match: re.Match[str]) -> str:
        source = match.group("source")
        path = root / source
        if not path.is_file():
            raise UsageError(f"{page}: its generated section's source {source} does not exist")
        body = report_section(path.read_text(encoding="utf-8"), str(Path(source).parent), page_dir)
        link = Path(os.path.relpath(source, page_dir)).as_posix()
        note = f"*Generated from [{source}]({link}) by `python -m harness.results.pages`.*"
        return f"{BEGIN.format(source=source)}\n{note}\n\n{body}\n{END}"

    return _SECTION.sub(replace, page_text)


def sources(page_text: str) -> list[str]:
    """The results files a page's generated sections come from, in order."""
    return [match.group("source") for match in _SECTION.finditer(page_text)]


def stale_pages(root: Path, pages: Sequence[str] = PAGES) -> list[str]:
    """The pages (of ``pages``, relative to ``root``) whose generated sections differ from
    what their sources give now."""
    stale = []
    for page in pages:
        text = (root / page).read_text(encoding="utf-8")
        if render_page(text, page, root) != text:
            stale.append(page)
    return stale


def write_pages(root: Path, pages: Sequence[str] = PAGES) -> list[str]:
    """Regenerate the sections of ``pages`` under ``root``; returns the pages that changed.
    Every page is rendered before any is written, so a missing source writes nothing."""
    rendered = {}
    for page in pages:
        text = (root / page).read_text(encoding="utf-8")
        new = render_page(text, page, root)
        if new != text:
            rendered[page] = new
    for page, text in rendered.items():
        write_text_atomically(root / page, text, encoding="utf-8")
    return list(rendered)


def default_root() -> Path:
    """The repository root of this checkout: the folder holding the ``harness`` package."""
    return Path(__file__).resolve().parents[2]


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code (0 done or up to date, 1 stale with
    ``--check``, 2 bad input)."""
    parser = argparse.ArgumentParser(
        prog="python -m harness.results.pages",
        description="Regenerate the published tables of the reference pages from results/.",
    )
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if stale")
    parser.add_argument("--root", default=None, help="the repository root (default: this one)")
    args = parser.parse_args(argv)
    root = Path(args.root) if args.root else default_root()
    try:
        missing = [page for page in PAGES if not (root / page).is_file()]
        if missing:
            raise UsageError(
                f"{root} has no {', '.join(missing)}: give --root the repository's root folder"
            )
        if args.check:
            stale = stale_pages(root)
            for page in stale:
                print(f"{page} is out of date: run `python -m harness.results.pages`")
            return 1 if stale else 0
        for page in write_pages(root):
            print(f"wrote {page}")
    except UsageError as exc:
        print(f"pages: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
