"""Make the frozen character-level corpus of ``charlm_transformer`` (run once; its output is
committed, so the corpus is the same on every machine whatever Python it runs).

What it does, deterministically for a given Python version (3.11.7 made the committed corpus):

1. Takes the top-level modules of the running Python's standard library (``Lib/*.py``, no
   packages), keeping those that are pure printable ASCII (plus newline and tab, no carriage
   returns) and between 2,000 and 60,000 characters long (no generated tables, no giants that
   would dominate a split).
2. Orders them by the SHA-256 of their file name (a fixed shuffle) and keeps files until the
   total reaches ``--chars`` (default 1,000,000) characters.
3. Splits *by file*, in the same order: test until it holds at least 10% of the characters,
   then valid until it holds 10%, the rest train.
4. Writes ``tasks/data/charlm/corpus.txt.gz`` (the files concatenated in split order, train
   then valid then test, each in the order above; gzip with mtime 0, so the archive is
   byte-identical too), ``corpus.json`` (the Python version, every file with its split,
   characters and SHA-256, the vocabulary, and the SHA-256 of the whole decompressed text,
   which :mod:`tasks.data.charlm` checks on every load) and ``LICENSE-PSF.txt`` (the Python
   licence the text is under, copied from the standard library).

Usage: ``python tasks/data/make_charlm_corpus.py [--out tasks/data/charlm] [--chars 1000000]``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import platform
import shutil
import string
import sysconfig
from pathlib import Path

MIN_CHARS, MAX_CHARS = 2_000, 60_000
ALLOWED = set(string.printable) - {"\r", "\x0b", "\x0c"}
SPLIT_ORDER = ("test", "valid", "train")  # filled in this order; test and valid to 10% each
SHARE = 0.10


def candidate_files(stdlib: Path) -> list[tuple[str, str]]:
    """``(name, text)`` of the usable top-level modules, in the fixed shuffle order."""
    files = []
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_bytes().decode("utf-8", errors="replace")
        if MIN_CHARS <= len(text) <= MAX_CHARS and set(text) <= ALLOWED:
            files.append((path.name, text))
    return sorted(files, key=lambda item: hashlib.sha256(item[0].encode()).hexdigest())


def make_corpus(stdlib: Path, chars: int) -> tuple[str, dict]:
    """The corpus text and its manifest (see the module docstring)."""
    chosen, total = [], 0
    for name, text in candidate_files(stdlib):
        if total >= chars:
            break
        chosen.append((name, text))
        total += len(text)
    splits: dict[str, list[tuple[str, str]]] = {name: [] for name in SPLIT_ORDER}
    current = 0
    for name, text in chosen:
        split = SPLIT_ORDER[current]
        splits[split].append((name, text))
        if split != "train" and sum(len(t) for _, t in splits[split]) >= SHARE * total:
            current += 1
    files, parts = [], []
    for split in ("train", "valid", "test"):
        for name, text in splits[split]:
            files.append(
                {
                    "name": name,
                    "split": split,
                    "chars": len(text),
                    "sha256": hashlib.sha256(text.encode()).hexdigest(),
                }
            )
            parts.append(text)
    corpus = "".join(parts)
    manifest = {
        "source": f"Python {platform.python_version()} standard library, Lib/*.py",
        "python_version": platform.python_version(),
        "licence": "Python Software Foundation License Version 2 (LICENSE-PSF.txt)",
        "made_by": "python tasks/data/make_charlm_corpus.py",
        "chars": len(corpus),
        "sha256": hashlib.sha256(corpus.encode()).hexdigest(),
        "vocabulary": "".join(sorted(set(corpus))),
        "split_chars": {s: sum(f["chars"] for f in files if f["split"] == s) for s in splits},
        "files": files,
    }
    return corpus, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "charlm")
    parser.add_argument("--chars", type=int, default=1_000_000)
    args = parser.parse_args()
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    corpus, manifest = make_corpus(stdlib, args.chars)
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        open(args.out / "corpus.txt.gz", "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz,
    ):
        gz.write(corpus.encode())
    (args.out / "corpus.json").write_text(json.dumps(manifest, indent=1) + "\n")
    shutil.copyfile(stdlib / "LICENSE.txt", args.out / "LICENSE-PSF.txt")
    print(
        f"{len(manifest['files'])} files, {manifest['chars']:,} characters "
        f"({manifest['split_chars']}), sha256 {manifest['sha256'][:16]}... -> {args.out}"
    )


if __name__ == "__main__":
    main()
