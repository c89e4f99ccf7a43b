"""A graceful stop on a signal, for long commands that work in units (runs, trials).

Inside ``with StopRequest("the runs in flight") as stop:``, the first SIGTERM or SIGINT (a
scheduler's ``kill -TERM``, a terminal's Ctrl-C) only asks: ``stop()`` turns True and one line
says so, and the command starts no new unit, lets the ones in flight finish and save, and ends
(the same command continues). A second signal raises ``KeyboardInterrupt`` at once, as if there
were no handler. Outside the block the previous handlers are back. Off the main thread (where
Python allows no handler) nothing is installed and ``stop()`` stays False.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

#: the signals a :class:`StopRequest` turns into a request: a scheduler's and a terminal's
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Whether a stop was asked (call it), from the first signal inside the ``with`` block.

    Args:
        what: what is left to finish, for the line printed on the first signal
            (``stopping after {what} (signal again: at once)``).
        log: where that line goes (default: standard error).
    """

    def __init__(self, what: str, log: Callable[[str], None] | None = None) -> None:
        self.what = what
        self.log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.signal: signal.Signals | None = None
        self._previous: dict[signal.Signals, Any] = {}

    def __call__(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        """The first signal's name (``SIGTERM``), or ``""`` when none came."""
        return "" if self.signal is None else self.signal.name

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum)
        self.log(f"stopping after {self.what} (signal again: at once)")

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {kind: signal.signal(kind, self._handle) for kind in STOP_SIGNALS}
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
