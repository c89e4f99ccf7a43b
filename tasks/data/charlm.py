"""The frozen character-level corpus of ``charlm_transformer``: about 1 MB of Python source.

51 top-level modules of the Python 3.11.7 standard library (PSF licence,
``charlm/LICENSE-PSF.txt``), extracted once by ``tasks/data/make_charlm_corpus.py`` and
committed as ``charlm/corpus.txt.gz`` with its manifest ``charlm/corpus.json`` (every file
with its split, characters and SHA-256; ``charlm/README.md`` says how). Offline everywhere:
the files ship inside the package. Splits are by file (train 805,716 characters, valid
107,523, test 115,552); the decompressed text is checked against :data:`CORPUS_SHA256` on
every load.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
from pathlib import Path

from harness.errors import DatasetUnavailableError

FOLDER = Path(__file__).parent / "charlm"
#: SHA-256 of the decompressed corpus text (UTF-8; it is pure ASCII).
CORPUS_SHA256 = "5c0971c2828c40fcfb4c9465b352077d3b7d3438baa34cd7dbb7ac22aece0646"
SPLITS = ("train", "valid", "test")


@functools.lru_cache(maxsize=1)
def load_charlm_corpus(folder: Path = FOLDER) -> tuple[dict[str, str], str]:
    """``({split: text}, vocabulary)``: each split's files concatenated in the manifest's order,
    and the sorted characters of the whole corpus (96 of them).

    Raises ``DatasetUnavailableError`` when the files are missing or the text's SHA-256 (or a
    file's) differs from the committed one."""
    try:
        text = gzip.decompress((folder / "corpus.txt.gz").read_bytes()).decode("ascii")
        manifest = json.loads((folder / "corpus.json").read_text())
    except (OSError, EOFError, UnicodeDecodeError, ValueError, gzip.BadGzipFile) as exc:
        raise DatasetUnavailableError(
            f"the charlm corpus in {folder} is unreadable ({exc}): reinstall the harness"
        ) from exc
    digest = hashlib.sha256(text.encode()).hexdigest()
    if digest != CORPUS_SHA256 or manifest.get("sha256") != CORPUS_SHA256:
        raise DatasetUnavailableError(
            f"the charlm corpus in {folder} has unexpected content (sha256 {digest[:12]}..., "
            f"expected {CORPUS_SHA256[:12]}...): reinstall the harness"
        )
    splits: dict[str, list[str]] = {split: [] for split in SPLITS}
    offset = 0
    for entry in manifest["files"]:
        part = text[offset : offset + entry["chars"]]
        if hashlib.sha256(part.encode()).hexdigest() != entry["sha256"]:
            raise DatasetUnavailableError(
                f"the charlm corpus in {folder}: {entry['name']} does not match its manifest"
            )
        splits[entry["split"]].append(part)
        offset += entry["chars"]
    return {split: "".join(parts) for split, parts in splits.items()}, manifest["vocabulary"]
