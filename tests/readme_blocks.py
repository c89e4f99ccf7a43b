"""README blocks generated from files in the repository, and their examples.

``python tests/readme_blocks.py`` rewrites the README's quoted results from the committed
``results/`` files; ``tests/test_readme.py`` fails when they differ.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
QUOTED = (
    "results/paper/summary.md",
    "results/small/summary.md",
    "results/learned_schedule/summary.md",
)


def quoted_section(summary: str, folder: str = "") -> str:
    """The per-task tables of a report's summary.md, as the README shows them: from the first
    task heading on, headings one level down, figure lines left out (the README shows its own),
    relative links made relative to the repository root (``folder`` is the file's folder)."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## "))
    kept = [
        "#" + line if line.startswith("## ") else line
        for line in lines[start:]
        if not line.startswith("![")
    ]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()
    if folder:
        text = re.sub(r"\]\((?![a-z]+:|/|#)([^)]+)\)", rf"]({folder}/\1)", text)
    return text


def with_quotes(readme: str) -> str:
    """``readme`` with each quoted block replaced by its file's current section."""
    for name in QUOTED:
        begin, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        section = quoted_section((ROOT / name).read_text(), str(Path(name).parent))
        readme = pattern.sub(lambda _m: f"{begin}\n{section}\n{end}", readme)  # noqa: B023
    return readme


def examples(readme: str) -> dict[str, str]:
    """The code blocks marked ``<!-- example: NAME -->``, by NAME."""
    found = re.findall(r"<!-- example: (\S+) -->\s*```\w*\n(.*?)```", readme, re.S)
    return dict(found)


if __name__ == "__main__":
    README.write_text(with_quotes(README.read_text()))
    sys.exit(0)
