"""What each key of a command means, read from where its setting is declared (one place).

A settings dataclass documents its fields in one of two ways, and :func:`key_docs` reads both
(a subclass's entries win over its bases', a docstring entry over a comment):

* its docstring's ``Attributes:`` (or ``Args:``) section, Google style: ``name: meaning`` on a
  line indented once, continued on more-indented lines; ``a, b: meaning`` documents both;
* a comment on the field's line, ``steps: Optional[int] = None  # None: the task's default``
  (a leading ``noqa: ...`` and the parentheses around the rest are dropped), or comment lines
  directly above the field.

A module-level dict of defaults (``lopt report``'s ``REPORT_DEFAULTS``) is read the same way
(:func:`dict_key_docs`). ``lopt COMMAND --help`` prints the result (:func:`help_lines`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from collections.abc import Iterable
from typing import Any

_FIELD = re.compile(r"^(\s+)\"?(\w+)\"?\s*[:=]")
_NOQA = re.compile(r"^noqa:\s*[\w,\s]+?(\s{2,}|$)")


def key_docs(cls: type) -> dict[str, str]:
    """``{field name: meaning}`` for the fields of the dataclass ``cls`` that are documented."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        names = {f.name for f in dataclasses.fields(klass)}
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            source = ""
        found = _field_comment_docs(source, names)
        found.update(_docstring_docs(klass.__doc__ or "", names))
        docs.update(found)
    return docs


def dict_key_docs(module: Any, name: str) -> dict[str, str]:
    """``{key: meaning}`` from the comments of the dict literal ``name`` in ``module``."""
    lines = inspect.getsource(module).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}"))
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("}"))
    keys = set(getattr(module, name))
    return _comment_docs(lines[start + 1 : end], keys)


def help_lines(docs: dict[str, str], keys: Iterable[str]) -> list[str]:
    """``  key: meaning`` for each of ``keys`` (``(no description)`` when undocumented)."""
    keys = [k for k in keys if k != "defaults"]
    width = max([0, *(len(k) for k in keys)])
    return [f"  {k:<{width}}  {docs.get(k, '(no description)')}" for k in keys]


def _field_comment_docs(source: str, names: set[str]) -> dict[str, str]:
    """The comments of the class body's annotated fields (the class's own source)."""
    if not source:
        return {}
    lines = source.splitlines()
    body = ast.parse(textwrap.dedent(source)).body[0]
    fields = [
        node
        for node in getattr(body, "body", [])
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
    ]
    docs: dict[str, str] = {}
    for node in fields:
        name = node.target.id  # type: ignore[union-attr]
        if name not in names:
            continue
        above = []
        index = node.lineno - 2
        while index >= 0 and lines[index].strip().startswith("#"):
            above.insert(0, lines[index].strip().lstrip("#").strip())
            index -= 1
        text = " ".join([*above, _clean(_trailing_comment(lines[node.lineno - 1]))]).strip()
        if text:
            docs[name] = text
    return docs


def _comment_docs(lines: list[str], names: set[str]) -> dict[str, str]:
    docs: dict[str, str] = {}
    above: list[str] = []
    indent: str | None = None
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        match = _FIELD.match(line)
        if match and match.group(2) in names and (indent is None or match.group(1) == indent):
            indent = match.group(1)
            text = _clean(_trailing_comment(line))
            text = " ".join([*above, text]).strip() if above else text
            if text:
                docs[match.group(2)] = text
        above = []
    return docs


def _trailing_comment(line: str) -> str:
    """The comment after the code on ``line`` (outside string literals), or ``""``."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[index + 1 :].strip()
    return ""


def _clean(text: str) -> str:
    text = _NOQA.sub("", text).strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1].strip()
    return text


def _docstring_docs(doc: str, names: set[str]) -> dict[str, str]:
    docs: dict[str, str] = {}
    lines = inspect.cleandoc(doc).splitlines()
    in_section, current = False, []  # current: the names the text being read documents
    for line in lines:
        if line.strip() in ("Attributes:", "Args:"):
            in_section, current = True, []
            continue
        if not in_section:
            continue
        entry = re.match(r"^    ([\w, ]+):\s*(.*)$", line)
        if entry and line[4] != " ":
            current = [n.strip() for n in entry.group(1).split(",")]
            for name in current:
                if name in names:
                    docs[name] = entry.group(2).strip()
        elif line.startswith("        ") and current:
            for name in current:
                if name in docs:
                    docs[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" "):
            in_section = False  # the next section
    return docs
