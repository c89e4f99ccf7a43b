"""Ctrl-C for meta-training over worker processes: the launcher stops them all, quietly.

Two halves, one for each side of ``torchrun``:

* :func:`run_workers` (the ``lopt`` process): runs the torchrun command in a session of its own,
  so that a terminal's Ctrl-C (SIGINT to the foreground process group), a ``kill -INT`` of the
  ``lopt`` process alone, a SIGTERM or a SIGHUP all reach only ``lopt``, which then decides: it
  sends SIGINT to the whole group (torchrun and its workers), waits up to ``grace`` seconds for
  every process of the group to exit, SIGKILLs what is left, and raises ``KeyboardInterrupt``.
  The workers' standard error passes through ``lopt`` as it comes, and is dropped from the
  interrupt on (torchrun's and the workers' reports of the signal are noise then).
* :func:`stop_signals` (each worker): SIGINT and SIGTERM raise ``KeyboardInterrupt`` once (the
  later ones are ignored); the worker's entry point then exits 130 without a traceback,
  whatever the interrupt caused (a peer's collective failing, ``Interrupted``).

Checkpoints are written atomically (:func:`harness.util.write_atomically`), so an interrupt
leaves the last one whole; the caller reads the saved outer step from it for its one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from typing import IO

#: seconds the workers get to exit after SIGINT before they are killed
GRACE_SECONDS = 5.0
#: the exit status of a process stopped by Ctrl-C (128 + SIGINT)
INTERRUPTED_EXIT = 130


def run_workers(
    command: Sequence[str], env: Mapping[str, str], grace: float = GRACE_SECONDS
) -> int:
    """Run ``command`` (torchrun) in a new session and wait; returns its exit status.

    On ``KeyboardInterrupt`` (SIGINT; SIGTERM and SIGHUP are turned into it while this waits)
    it stops the session's process group (SIGINT, then SIGKILL after ``grace`` seconds), so no
    worker outlives it, and re-raises. Standard error is forwarded until the interrupt.
    """
    process = subprocess.Popen(
        list(command), env=dict(env), start_new_session=True, stderr=subprocess.PIPE
    )
    quiet = threading.Event()
    assert process.stderr is not None
    forward = threading.Thread(target=_forward, args=(process.stderr, quiet), daemon=True)
    forward.start()
    try:
        with _interrupt_on_termination():
            code = process.wait()
    except KeyboardInterrupt:
        quiet.set()
        stop_group(process, grace)
        raise
    finally:
        forward.join(timeout=grace)
    return code


def stop_group(process: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGINT to ``process``'s process group (``process`` leads it), then SIGKILL to what is
    left of it after ``grace`` seconds; returns when every process of the group is gone or
    about 2 s after the SIGKILL (``process`` itself is reaped)."""
    group = process.pid
    _signal_group(group, signal.SIGINT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _group_alive(group, process):
        time.sleep(0.05)
    if _group_alive(group, process):
        _signal_group(group, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and _group_alive(group, process):
            time.sleep(0.05)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=1.0)


def _signal_group(group: int, signum: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)


def _group_alive(group: int, process: subprocess.Popen) -> bool:
    """Whether a process of ``group`` still runs (``process`` is reaped when it has exited,
    so that a zombie leader does not count)."""
    process.poll()
    try:
        os.killpg(group, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return process.returncode is None or _members_alive(group)


def _members_alive(group: int) -> bool:
    """Whether a process of ``group`` other than a zombie is left (Linux ``/proc``; elsewhere
    True while the group exists)."""
    if not os.path.isdir("/proc"):
        return True
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def _forward(stream: IO[bytes], quiet: threading.Event) -> None:
    """Copy ``stream`` to this process's standard error as it comes, until ``quiet`` is set."""
    target = sys.stderr.buffer if hasattr(sys.stderr, "buffer") else None
    fd = stream.fileno()
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        if quiet.is_set():
            continue
        if target is not None:
            target.write(chunk)
            target.flush()
        else:
            sys.stderr.write(chunk.decode(errors="replace"))
            sys.stderr.flush()


@contextmanager
def _interrupt_on_termination() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``KeyboardInterrupt`` inside (main thread only), so the workers
    are stopped as for Ctrl-C rather than orphaned."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    kinds = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    previous = {kind: signal.signal(kind, interrupt) for kind in kinds}
    try:
        yield
    finally:
        for kind, handler in previous.items():
            signal.signal(kind, handler)


def stop_signals() -> Callable[[], bool]:
    """In a worker: SIGINT and SIGTERM raise ``KeyboardInterrupt`` the first time, and are
    ignored after (torchrun forwards its own); returns a function telling whether one came."""
    received: list[int] = []

    def handler(signum: int, frame: object) -> None:
        if not received:
            received.append(signum)
            raise KeyboardInterrupt

    for kind in (signal.SIGINT, signal.SIGTERM):
        signal.signal(kind, handler)
    return lambda: bool(received)


def interrupted_line(state_path: str | os.PathLike[str]) -> str:
    """The one line after Ctrl-C: the outer step of the last checkpoint (``state_path``, a
    trainer state with ``outer_step``) and how to go on."""
    from harness.meta.checkpoint import load_trainer_state

    try:
        step = int(load_trainer_state(state_path)["outer_step"])
    except Exception:  # no checkpoint yet (or unreadable): a rerun starts again
        return "interrupted before the first checkpoint; rerun the same command to start again"
    return f"interrupted at outer step {step}; rerun the same command to continue"
