"""Optuna storages, opened from a URL, and the lock that claims trials exactly.

URLs:

* ``sqlite:///PATH`` (the default, ``sqlite:///results/tuning/optuna.db``; the folder is
  created). Several local processes can share it.
* ``postgresql://...``, ``mysql://...`` or any other SQLAlchemy URL (its driver must be installed).
* ``journal:PATH``: Optuna's journal file, the recommended storage for many processes on one
  machine or a shared file system.

Claiming a trial (count what is done or in flight, then ``ask``) happens under an exclusive file
lock next to a local storage file, so two processes never both take the last trial. Remote
databases have no such lock: there, a race can start one trial too many, which the study
ignores (only the first ``trials`` counted trials form the result).
"""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna

from harness.errors import UsageError

JOURNAL_PREFIX = "journal:"


@dataclass
class OpenedStorage:
    """An Optuna storage and, for local files, the path of its claim lock."""

    url: str
    storage: optuna.storages.BaseStorage
    lock_path: Path | None

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """Exclusive across processes on this machine (a no-op without a local file)."""
        if self.lock_path is None:
            yield
            return
        with open(self.lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


def open_storage(url: str) -> OpenedStorage:
    """Open ``url`` (see the module docstring) or raise a one-line ``UsageError``."""
    if not isinstance(url, str) or not url:
        raise UsageError("storage must be a URL: sqlite:///PATH, journal:PATH or a database URL")
    try:
        if url.startswith(JOURNAL_PREFIX):
            path = Path(url[len(JOURNAL_PREFIX) :]).expanduser()
            _make_parent(path, url)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return OpenedStorage(url, optuna.storages.JournalStorage(backend), _lock_for(path))
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :]).expanduser()
            _make_parent(path, url)
            opened = OpenedStorage(url, None, _lock_for(path))  # type: ignore[arg-type]
            with opened.claim():  # two processes creating the schema at once would collide
                opened.storage = optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 120}}
                )
            return opened
        if "://" not in url:
            raise UsageError(
                f"storage {url!r} is not a URL: use sqlite:///PATH, journal:PATH or a database "
                "URL such as postgresql://user@host/db"
            )
        return OpenedStorage(url, optuna.storages.RDBStorage(url), None)
    except UsageError:
        raise
    except ImportError as exc:
        raise UsageError(f"cannot open storage {url!r}: its driver is missing ({exc})") from exc
    except Exception as exc:  # SQLAlchemy and Optuna raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot open storage {url!r}: {first}") from exc


def _make_parent(path: Path, url: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot open storage {url!r}: cannot create {path.parent} ({exc})"
        ) from exc


def _lock_for(path: Path) -> Path:
    return path.with_name(path.name + ".claim")  # not ".lock": Optuna's journal uses that name
