"""The Fashion-MNIST loader: IDX parsing, where it looks, its error message, and downloading
into the user cache (with a local ``file://`` mirror, never the network)."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from harness.errors import DatasetUnavailableError
from harness.registry import create_task
from tasks.data import fashion_mnist

REAL_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_REAL_DATA = all((REAL_DIR / f"{name}.gz").is_file() for name in fashion_mnist.FILES)
needs_real_data = pytest.mark.skipif(
    not HAVE_REAL_DATA, reason=f"Fashion-MNIST not installed in {REAL_DIR}"
)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every place the loader looks points into tmp_path; no mirror is reachable; the in-process
    cache is empty before and after each test."""
    monkeypatch.delenv("LOPT_DATA_DIR", raising=False)
    monkeypatch.delenv("LOPT_FASHION_MNIST_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-debian")
    monkeypatch.setattr(fashion_mnist, "MIRRORS", ())
    fashion_mnist._load.cache_clear()
    yield
    fashion_mnist._load.cache_clear()


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_wrong_files(folder: Path) -> None:
    """The four files, valid gzip of valid IDX, with the wrong content."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in fashion_mnist.FILES:
        (folder / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(np.zeros((2, 2), np.uint8))))


def one_line_message(exc: pytest.ExceptionInfo[DatasetUnavailableError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert "apt install dataset-fashion-mnist" in message
    return message


# -- parse_idx --------------------------------------------------------------------------------
def test_parse_idx_round_trip() -> None:
    """parse_idx reads the IDX header's shape and returns the bytes as uint8 of that shape."""
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    parsed = fashion_mnist.parse_idx(idx_bytes(images))
    assert parsed.dtype == np.uint8 and parsed.shape == (2, 3, 4)
    assert np.array_equal(parsed, images)
    labels = np.array([9, 0, 3], dtype=np.uint8)
    assert np.array_equal(fashion_mnist.parse_idx(idx_bytes(labels)), labels)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + bytes(12), "not an IDX file"),  # float32
        (b"\x1f\x8b\x08\x00", "not an IDX file"),  # gzip magic: a compressed file
        (b"\x00\x00", "not an IDX file"),
        (b"\x00\x00\x08\x01" + (5).to_bytes(4, "big") + bytes(4), r"says \(5,\).*holds 4 bytes"),
    ],
)
def test_parse_idx_rejects_bad_data(data: bytes, match: str) -> None:
    """Data of another type, a truncated header, or a size that disagrees raise ValueError."""
    with pytest.raises(ValueError, match=match):
        fashion_mnist.parse_idx(data)


# -- offline failures -------------------------------------------------------------------------
def test_search_dirs_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LOPT_DATA_DIR/fashion-mnist, LOPT_DATA_DIR, the XDG cache, then Debian's folder."""
    monkeypatch.setenv("LOPT_DATA_DIR", str(tmp_path / "data"))
    assert fashion_mnist.search_dirs() == [
        tmp_path / "data" / "fashion-mnist",
        tmp_path / "data",
        tmp_path / "xdg-cache" / "lopt-harness" / "fashion-mnist",
        tmp_path / "no-debian",
    ]


def test_wrong_content_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files with the wrong content in LOPT_DATA_DIR are rejected; with download disabled the
    one-line error names every folder searched, the checksum problem and the apt package."""
    data_dir = tmp_path / "data"
    write_wrong_files(data_dir / "fashion-mnist")
    monkeypatch.setenv("LOPT_DATA_DIR", str(data_dir))
    with pytest.raises(DatasetUnavailableError) as info:
        fashion_mnist.load_fashion_mnist(download=False)
    message = one_line_message(info)
    for folder in fashion_mnist.search_dirs():
        assert str(folder) in message
    bad_file = data_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    assert f"{bad_file} has the wrong content (sha256 mismatch)" in message
    assert "download=false" in message


def test_unreadable_gzip_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A .gz file that is not gzip is reported as unreadable, not as a crash."""
    folder = tmp_path / "data"
    folder.mkdir()
    for name in fashion_mnist.FILES:
        (folder / f"{name}.gz").write_bytes(b"not gzip at all")
    monkeypatch.setenv("LOPT_DATA_DIR", str(folder))
    with pytest.raises(DatasetUnavailableError) as info:
        fashion_mnist.load_fashion_mnist(download=False)
    assert f"{folder / 'train-images-idx3-ubyte.gz'} is unreadable" in one_line_message(info)


def test_no_files_anywhere_without_download(tmp_path: Path) -> None:
    """With no files anywhere and download=False the error says so and how to install them."""
    with pytest.raises(DatasetUnavailableError) as info:
        fashion_mnist.load_fashion_mnist(download=False)
    message = one_line_message(info)
    assert message.startswith("Fashion-MNIST not found (looked in ")
    assert str(tmp_path / "xdg-cache" / "lopt-harness" / "fashion-mnist") in message
    assert str(tmp_path / "no-debian") in message
    assert "no files" in message and "download=false" in message


# -- downloading ------------------------------------------------------------------------------
def test_wrong_mirror_content_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror serving files with the wrong content is rejected, the error says why, and nothing
    (not even a temporary file) is written to the cache."""
    mirror = tmp_path / "mirror"
    write_wrong_files(mirror)
    monkeypatch.setenv("LOPT_FASHION_MNIST_URL", mirror.as_uri())
    with pytest.raises(DatasetUnavailableError) as info:
        fashion_mnist.load_fashion_mnist(download=True)
    message = one_line_message(info)
    url = f"{mirror.as_uri()}/train-images-idx3-ubyte.gz"
    assert f"download of {url} has the wrong content (sha256 mismatch)" in message
    assert "download=false" not in message
    cache = fashion_mnist.cache_dir()
    assert not cache.exists() or not any(cache.iterdir())


def test_unreachable_mirror_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A mirror that lacks the files is reported as a failed download."""
    monkeypatch.setenv("LOPT_FASHION_MNIST_URL", (tmp_path / "empty").as_uri())
    with pytest.raises(DatasetUnavailableError) as info:
        fashion_mnist.load_fashion_mnist()
    assert "download of file://" in one_line_message(info)
    assert "failed" in str(info.value)


@pytest.mark.slow
@needs_real_data
def test_download_into_cache_then_task_loads_from_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the Debian files served by a file:// mirror (and Debian's folder hidden), the first
    load downloads the four files into the user cache, verified and byte-identical; a second
    load with no mirror finds them in the cache before trying to download, and fmnist_cnn16
    built from them has splits of 55,000 / 5,000 / 10,000."""
    monkeypatch.setenv("LOPT_FASHION_MNIST_URL", REAL_DIR.as_uri() + "/")
    data = fashion_mnist.load_fashion_mnist(download=True)  # load 1: download
    assert data["train"][0].shape == (60_000, 28, 28) and data["train"][0].dtype == np.uint8
    assert data["test"][0].shape == (10_000, 28, 28)
    assert data["train"][1].dtype == np.int64 and set(np.unique(data["test"][1])) == set(range(10))

    cache = fashion_mnist.cache_dir()
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in fashion_mnist.FILES)
    for name in fashion_mnist.FILES:
        assert (cache / f"{name}.gz").read_bytes() == (REAL_DIR / f"{name}.gz").read_bytes()

    # No mirror any more, and a download attempt fails the test: the cache must serve the task.
    monkeypatch.delenv("LOPT_FASHION_MNIST_URL")
    fashion_mnist._load.cache_clear()

    def no_download(*args: object) -> None:
        raise AssertionError("the second load downloaded")

    monkeypatch.setattr(fashion_mnist, "_download", no_download)
    task = create_task("fmnist_cnn16")  # load 2 (download allowed): must come from the cache
    assert (task.split_size("train"), task.split_size("valid"), task.split_size("test")) == (
        55_000,
        5_000,
        10_000,
    )
    assert np.array_equal(task._data["test"][1].numpy(), data["test"][1])
