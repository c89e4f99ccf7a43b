"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60,000 training and 10,000 test 28x28 images.

Where the loader looks, in order (the first folder holding all four files with the right content
wins):

1. ``$LOPT_DATA_DIR/fashion-mnist`` and ``$LOPT_DATA_DIR`` itself;
2. the user cache, ``${XDG_CACHE_HOME:-~/.cache}/lopt-harness/fashion-mnist``;
3. ``/usr/share/datasets/fashion-mnist`` (Debian's package ``dataset-fashion-mnist``).

Files are the four IDX files, gzipped or not (``train-images-idx3-ubyte.gz`` ...). Their
*decompressed* content is checked against sha256 sums (Debian repacks the archives, so the
archives' own checksums differ). If no folder has them and ``download`` is true, the files are
downloaded into the user cache, checked, and written atomically. Offline with no files, the error
names every place it looked and how to install the data.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from harness.errors import DatasetUnavailableError
from harness.util import write_bytes_atomically

#: sha256 of each file's decompressed bytes, and its size in bytes.
FILES: dict[str, tuple[str, int]] = {
    "train-images-idx3-ubyte": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        47_040_016,
    ),
    "train-labels-idx1-ubyte": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        60_008,
    ),
    "t10k-images-idx3-ubyte": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        7_840_016,
    ),
    "t10k-labels-idx1-ubyte": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        10_008,
    ),
}

#: Download mirrors, tried in order; ``LOPT_FASHION_MNIST_URL`` (a base URL) is tried first.
MIRRORS = (
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
INSTALL_HINT = (
    "install Debian's package (apt install dataset-fashion-mnist), or put the four IDX files "
    "(train-images-idx3-ubyte.gz ...) in $LOPT_DATA_DIR/fashion-mnist"
)


def cache_dir() -> Path:
    """The user cache folder for Fashion-MNIST."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lopt-harness" / "fashion-mnist"


def search_dirs() -> list[Path]:
    """The folders searched, in order."""
    dirs = []
    data_dir = os.environ.get("LOPT_DATA_DIR")
    if data_dir:
        dirs += [Path(data_dir) / "fashion-mnist", Path(data_dir)]
    dirs += [cache_dir(), DEBIAN_DIR]
    return dirs


def load_fashion_mnist(download: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": (images, labels)}``: uint8 images (N, 28, 28) and
    int64 labels, from the first folder that has all four files with the right content."""
    return _load(
        download, tuple(str(d) for d in search_dirs()), os.environ.get("LOPT_FASHION_MNIST_URL")
    )


@functools.lru_cache(maxsize=2)
def _load(
    download: bool, dirs: tuple[str, ...], extra_mirror: str | None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    problems: list[str] = []
    for folder in map(Path, dirs):
        contents = _read_folder(folder, problems)
        if contents is not None:
            return _parse(contents)
    if download:
        mirrors = ((extra_mirror,) if extra_mirror else ()) + MIRRORS
        contents = _download(cache_dir(), mirrors, problems)
        if contents is not None:
            return _parse(contents)
    looked = ", ".join(dirs)
    why = "; ".join(problems) if problems else "no files"
    raise DatasetUnavailableError(
        f"Fashion-MNIST not found (looked in {looked}; {why}"
        f"{'' if download else '; download=false'}): {INSTALL_HINT}"
    )


def _read_folder(folder: Path, problems: list[str]) -> dict[str, bytes] | None:
    """The four files' verified decompressed bytes, or None (with the reason in ``problems``)."""
    if not folder.is_dir():
        return None
    found = {
        name: next((p for p in (folder / f"{name}.gz", folder / name) if p.is_file()), None)
        for name in FILES
    }
    missing = [name for name, path in found.items() if path is None]
    if missing:
        if len(missing) < len(FILES):
            problems.append(f"{folder} lacks {', '.join(missing)}")
        return None
    contents: dict[str, bytes] = {}
    for name, (sha256, _size) in FILES.items():
        path = found[name]
        assert path is not None
        try:
            data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            problems.append(f"{path} is unreadable ({exc})")
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            problems.append(f"{path} has the wrong content (sha256 mismatch)")
            return None
        contents[name] = data
    return contents


def _download(
    target: Path, mirrors: tuple[str, ...], problems: list[str]
) -> dict[str, bytes] | None:
    contents: dict[str, bytes] = {}
    for name, (sha256, _size) in FILES.items():
        for mirror in mirrors:
            url = mirror.rstrip("/") + f"/{name}.gz"
            try:
                with urllib.request.urlopen(url, timeout=30) as response:
                    archive = response.read()
                data = gzip.decompress(archive)
            except (urllib.error.URLError, OSError, EOFError, ValueError) as exc:
                problems.append(f"download of {url} failed ({exc})")
                continue
            if hashlib.sha256(data).hexdigest() != sha256:
                problems.append(f"download of {url} has the wrong content (sha256 mismatch)")
                continue
            contents[name] = data
            write_bytes_atomically(target / f"{name}.gz", archive)
            break
        else:
            return None
    return contents


def _parse(contents: dict[str, bytes]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        "train": (
            parse_idx(contents["train-images-idx3-ubyte"]),
            parse_idx(contents["train-labels-idx1-ubyte"]).astype(np.int64),
        ),
        "test": (
            parse_idx(contents["t10k-images-idx3-ubyte"]),
            parse_idx(contents["t10k-labels-idx1-ubyte"]).astype(np.int64),
        ),
    }


def parse_idx(data: bytes) -> np.ndarray:
    """An IDX file of unsigned bytes (the MNIST format) as a uint8 array of its shape."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError("not an IDX file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"IDX header says {shape} but the file holds {len(data) - offset} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)
