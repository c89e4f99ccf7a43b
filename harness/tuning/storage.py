"""Optuna storages, opened from a URL; the claim lock; heartbeats of running trials.

URLs:

* ``sqlite:///PATH`` (the default, ``sqlite:///results/tuning/optuna.db``; the folder is
  created). Several local processes can share it.
* ``postgresql://USER:PASSWORD@HOST:PORT/DB``: a PostgreSQL server, shared by workers on any
  number of machines (driver: ``pip install "lopt-harness[postgres]"``, psycopg 3; a plain
  ``postgresql://`` URL uses it when psycopg2 is not installed, ``postgresql+psycopg://`` names
  it). ``mysql://...`` or any other SQLAlchemy URL works with its own driver, without a claim
  lock (below).
* ``journal:PATH``: Optuna's journal file, for many processes on one machine or a shared file
  system. Its appends are serialised by an ``fcntl`` lock on ``PATH.write``
  (:class:`JournalWriteLock`), which the kernel releases when its holder dies; Optuna's default
  lock (a symbolic link) outlives a killed holder for 30 seconds, in which no other worker can
  record a heartbeat, so live trials of other workers were then judged stale.

**Claims.** Claiming a trial (count what is done or in flight, then ``ask``) and recovering an
interrupted one happen under an exclusive lock, so two workers never both take the last trial
and a trial is re-queued once: an ``fcntl`` lock on a file beside a SQLite or journal file, and
a PostgreSQL advisory lock (``pg_advisory_lock``, held by the server for one connection and
released by it when the worker's connection dies) for a PostgreSQL server, wherever the workers
run. Other databases have no lock: the tuner's final check then drops a surplus trial instead.

**Heartbeats.** With ``heartbeat=S`` (seconds, an integer), a worker records a heartbeat of its
running trial every ``S`` seconds (Optuna's own heartbeat for the relational storages; a trial
system attribute for journal files, which Optuna gives none), and a running trial without one
for ``grace_s = 3 S`` seconds is *stale*: its worker was killed or lost its machine.
:func:`optuna.storages.fail_stale_trials` fails it and calls the storage's stale-trial callback
(the tuner's requeue). A relational storage compares times on the database server; a journal
file compares the workers' clocks, which must agree within the grace period (NTP).

**Look-ups** (``create=False``) never write: a storage file that does not exist is a
``UsageError``, no folder, table or lock file is created.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal._file import BaseJournalFileLock
from optuna.trial import FrozenTrial, TrialState

from harness.errors import UsageError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

JOURNAL_PREFIX = "journal:"
SQLITE_PREFIX = "sqlite:///"
#: the extra that brings a PostgreSQL driver (psycopg 3)
POSTGRES_EXTRA = 'pip install "lopt-harness[postgres]"'
#: a trial without a heartbeat for this many heartbeat intervals is stale
GRACE_BEATS = 3
#: the trial system attribute holding a journal trial's last heartbeat (seconds since the epoch)
JOURNAL_HEARTBEAT_ATTR = "lopt:heartbeat"
#: the PostgreSQL advisory-lock key of trial claims (one per database)
_CLAIM_KEY = zlib.crc32(b"lopt-harness trial claim")

StaleCallback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass
class OpenedStorage:
    """An Optuna storage, how claims are locked, and its heartbeat.

    ``lock_path``: the claim lock file beside a local storage file; ``advisory``: the engine
    whose connection takes the PostgreSQL advisory lock of claims; neither: claims are not
    exclusive (:attr:`exclusive` is False).
    ``heartbeat``: seconds between heartbeats of a running trial (None: no heartbeats).
    """

    url: str
    storage: optuna.storages.BaseStorage
    lock_path: Path | None = None
    advisory: Engine | None = None
    heartbeat: int | None = None

    @property
    def exclusive(self) -> bool:
        """Whether :meth:`claim` excludes every other worker of this storage."""
        return self.lock_path is not None or self.advisory is not None

    @property
    def grace_s(self) -> float | None:
        """Seconds without a heartbeat after which a running trial is stale."""
        return None if self.heartbeat is None else float(GRACE_BEATS * self.heartbeat)

    @contextlib.contextmanager
    def claim(self) -> Iterator[None]:
        """Exclusive across every worker of the storage (see the module docstring)."""
        if self.advisory is not None:
            from sqlalchemy import text

            with self.advisory.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _CLAIM_KEY})
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _CLAIM_KEY})
                    connection.commit()
            return
        if self.lock_path is None:
            yield
            return
        with open(self.lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record_heartbeat(self, trial_id: int) -> None:
        """Record that the trial ``trial_id`` is alive (a no-op without heartbeats)."""
        if self.heartbeat is not None:
            self.storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]


class JournalWriteLock(BaseJournalFileLock):
    """The journal file's append lock: an exclusive ``fcntl`` lock on ``path`` (created on the
    first write, never by a look-up), held by one thread of one process at a time and released
    by the kernel when its holder dies, so a worker killed in the middle of an append stalls
    nobody. Each thread locks through its own open file, so threads of one process exclude each
    other too."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._held = threading.local()

    def acquire(self) -> bool:
        handle = open(self._path, "a")  # noqa: SIM115 (closed by release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except BaseException:
            handle.close()
            raise
        self._held.handle = handle
        return True

    def release(self) -> None:
        handle = getattr(self._held, "handle", None)
        if handle is None:
            raise RuntimeError("the journal write lock is not held by this thread")
        self._held.handle = None
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """A journal storage with Optuna's heartbeat protocol (``record_heartbeat``, stale trials):
    the heartbeat is a trial system attribute, compared with this process's clock."""

    def __init__(
        self,
        backend: optuna.storages.journal.BaseJournalBackend,
        heartbeat: int,
        grace_s: float,
        stale_callback: StaleCallback | None,
    ) -> None:
        super().__init__(backend)
        self._heartbeat = heartbeat
        self._grace_s = grace_s
        self._stale_callback = stale_callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, JOURNAL_HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        running = self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
        return [
            trial._trial_id
            for trial in running
            if now - float(trial.system_attrs.get(JOURNAL_HEARTBEAT_ATTR, now)) > self._grace_s
        ]

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat

    def get_heartbeat_stale_trial_callback(self) -> StaleCallback | None:
        return self._stale_callback


def open_storage(
    url: str,
    *,
    heartbeat: int | None = None,
    stale_callback: StaleCallback | None = None,
    create: bool = True,
) -> OpenedStorage:
    """Open ``url`` (see the module docstring) or raise a one-line ``UsageError``.

    ``heartbeat``: seconds between heartbeats (None: none); ``stale_callback``: called once
    for each stale trial :func:`fail_stale` fails. ``create=False`` (look-ups): write nothing,
    and refuse a storage file that does not exist.
    """
    if not isinstance(url, str) or not url:
        raise UsageError("storage must be a URL: sqlite:///PATH, journal:PATH or a database URL")
    grace = None if heartbeat is None else GRACE_BEATS * heartbeat
    try:
        if url.startswith(JOURNAL_PREFIX):
            path = Path(url[len(JOURNAL_PREFIX) :]).expanduser()
            _make_parent(path, url, create)
            backend = optuna.storages.journal.JournalFileBackend(
                str(path), lock_obj=JournalWriteLock(_write_lock_for(path))
            )
            storage: optuna.storages.BaseStorage = (
                optuna.storages.JournalStorage(backend)
                if heartbeat is None
                else HeartbeatJournalStorage(backend, heartbeat, grace, stale_callback)  # type: ignore[arg-type]
            )
            lock = _lock_for(path) if create else None
            return OpenedStorage(url, storage, lock_path=lock, heartbeat=heartbeat)
        if url.startswith(SQLITE_PREFIX):
            path = Path(url[len(SQLITE_PREFIX) :]).expanduser()
            _make_parent(path, url, create)
            opened = OpenedStorage(url, None, _lock_for(path), heartbeat=heartbeat)  # type: ignore[arg-type]
            if not create:
                opened.lock_path = None
                opened.storage = _rdb(url, None, None, {"timeout": 120}, read_only=True)
                return opened
            with opened.claim():  # two processes creating the schema at once would collide
                opened.storage = _rdb(url, heartbeat, stale_callback, {"timeout": 120})
            return opened
        if "://" not in url:
            raise UsageError(
                f"storage {url!r} is not a URL: use sqlite:///PATH, journal:PATH or a database "
                "URL such as postgresql://user@host/db"
            )
        engine_url = driver_url(url)
        opened = OpenedStorage(url, None, heartbeat=heartbeat)  # type: ignore[arg-type]
        if engine_url.split(":", 1)[0].split("+", 1)[0] == "postgresql":
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            opened.advisory = sqlalchemy.create_engine(engine_url, poolclass=NullPool)
        if not create:
            opened.storage = _rdb(engine_url, None, None, None, read_only=True)
            return opened
        with opened.claim():  # two workers creating the schema at once would collide
            opened.storage = _rdb(engine_url, heartbeat, stale_callback, None)
        return opened
    except UsageError:
        raise
    except ImportError as exc:
        hint = f": {POSTGRES_EXTRA}" if url.startswith("postgres") else ""
        raise UsageError(
            f"cannot open storage {url!r}: its database driver is missing{hint} ({exc})"
        ) from exc
    except Exception as exc:  # SQLAlchemy and Optuna raise many kinds
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"cannot open storage {url!r}: {first}") from exc


def driver_url(url: str) -> str:
    """``url`` with the PostgreSQL driver SQLAlchemy should use: a plain ``postgresql://`` (or
    ``postgres://``) URL names psycopg 3 when psycopg2 is not installed; ``UsageError`` naming
    the extra when neither is."""
    scheme, sep, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres", "postgresql+psycopg", "postgresql+psycopg2"):
        return url
    have_v3 = importlib.util.find_spec("psycopg") is not None
    have_v2 = importlib.util.find_spec("psycopg2") is not None
    if scheme in ("postgresql", "postgres"):
        if not (have_v3 or have_v2):
            raise UsageError(
                f"cannot open storage {url!r}: no PostgreSQL driver is installed; install one "
                f"with {POSTGRES_EXTRA}"
            )
        scheme = "postgresql" if have_v2 else "postgresql+psycopg"
    elif scheme == "postgresql+psycopg" and not have_v3:
        raise UsageError(
            f"cannot open storage {url!r}: psycopg 3 is not installed; install it with "
            f"{POSTGRES_EXTRA}"
        )
    return f"{scheme}{sep}{rest}"


def _rdb(
    url: str,
    heartbeat: int | None,
    stale_callback: StaleCallback | None,
    connect_args: dict[str, Any] | None,
    read_only: bool = False,
) -> optuna.storages.RDBStorage:
    kwargs: dict[str, Any] = {}
    if heartbeat is not None:
        kwargs = {
            "heartbeat_interval": heartbeat,
            "grace_period": GRACE_BEATS * heartbeat,
            "heartbeat_stale_trial_callback": stale_callback,
        }
    engine_kwargs = {"connect_args": connect_args} if connect_args else {}
    with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, skip_table_creation=read_only, **kwargs
        )


def fail_stale(study: optuna.Study) -> None:
    """Fail the study's stale running trials, calling the storage's stale-trial callback once
    for each (Optuna's :func:`~optuna.storages.fail_stale_trials`; a no-op without
    heartbeats)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def fail_once(storage: optuna.storages.BaseStorage, trial_id: int) -> bool:
    """Set a running trial to ``FAIL``; True for the one worker whose call did it (the storage
    refuses the others: a row lock, or the journal's order)."""
    try:
        return bool(storage.set_trial_state_values(trial_id, state=TrialState.FAIL))
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


class Heartbeat:
    """``with Heartbeat(beat, interval):`` calls ``beat()`` every ``interval`` seconds in a
    daemon thread while the block runs (``interval=None``: never). A failing call is retried at
    the next beat: a storage briefly out of reach must not stop the work it guards."""

    def __init__(self, beat: Callable[[], None], interval: float | None) -> None:
        self._beat = beat
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        if self._interval is not None:
            self._thread = threading.Thread(target=self._run, daemon=True, name="heartbeat")
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        assert self._interval is not None
        while not self._stop.wait(self._interval):
            with contextlib.suppress(Exception):
                self._beat()


def _make_parent(path: Path, url: str, create: bool) -> None:
    if not create:
        if not path.is_file():
            raise UsageError(
                f"no tuning storage at {path} (storage={url}): the file does not exist"
            )
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot open storage {url!r}: cannot create {path.parent} ({exc})"
        ) from exc


def _lock_for(path: Path) -> Path:
    return path.with_name(path.name + ".claim")  # not ".lock": Optuna's journal uses that name


def _write_lock_for(path: Path) -> Path:
    """The journal's append lock file (:class:`JournalWriteLock`); not the claim lock's file:
    a process holding the claim writes to the journal, and two ``flock`` calls of one process
    on one file through two open files would wait for each other."""
    return path.with_name(path.name + ".write")
