"""The one progress display of every long job (bench plans, meta-training, family
meta-training, the pathology study), on tqdm.

:class:`Progress` counts units of work (runs, outer steps, pieces of a study) and shows them in
one of three modes (:func:`display_mode`):

* ``bar``: a tqdm bar on the stream (stderr), with its rate and ETA and the job's own fields as
  its postfix; messages (:meth:`Progress.write`) go above it without breaking it;
* ``lines``: plain one-line updates, no carriage returns and no ANSI codes, for CI logs and
  files: a line whenever the job asks for one (``force``, e.g. at a checkpoint), at the end,
  and otherwise at most every ``every`` seconds (default :data:`LINE_SECONDS`);
* ``off``: nothing at all (``progress=false``).

``show=None`` (the default of every ``progress`` setting) picks ``bar`` on a terminal and
``lines`` otherwise. The text of a line is the job's: each job keeps its own line format.

:class:`WeightedEta` is the time left of a job whose pieces cost different amounts (runs of
different step budgets on tasks of different speeds): each piece left is weighed by its cost,
measured per kind on the pieces already finished.

``Log`` is the type of every one-line log callback in the harness.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from tqdm import tqdm

#: a one-line log callback (a message without its newline)
Log = Callable[[str], None]

#: in ``lines`` mode, a line at least this often (seconds) while work advances
LINE_SECONDS = 30.0

MODES = ("bar", "lines", "off")


def display_mode(show: bool | str | None, stream: TextIO | None = None) -> str:
    """``bar``, ``lines`` or ``off``: ``show`` True is a bar, False nothing, None a bar when
    ``stream`` (default stderr) is a terminal and plain lines otherwise; a mode name is kept."""
    if isinstance(show, str):
        if show not in MODES:
            raise ValueError(f"progress display {show!r}: use one of {', '.join(MODES)}")
        return show
    if show is None:
        stream = stream if stream is not None else sys.stderr
        is_tty = getattr(stream, "isatty", None)
        return "bar" if is_tty is not None and is_tty() else "lines"
    return "bar" if show else "off"


class Progress:
    """Progress over ``total`` units of work (module docstring).

    Args:
        total: units of work of the whole job (outer steps, runs, pieces).
        desc: the bar's label (``bar`` mode).
        unit: the bar's unit.
        initial: units already done before this process (a resumed job).
        show: True, False, None or a mode name (:func:`display_mode`).
        stream: where the bar and the lines go (default: stderr).
        log: where lines and messages go instead of ``stream`` (``bar`` mode: written with
            ``tqdm.write`` when not given, so the bar stays whole).
        every: ``lines`` mode: seconds between unforced lines.
        clock: the clock of ``every`` (injectable for tests), in seconds.
        leave, position: passed to tqdm (an inner bar: ``leave=False, position=1``).
    """

    def __init__(
        self,
        total: int,
        *,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        show: bool | str | None = None,
        stream: TextIO | None = None,
        log: Log | None = None,
        every: float = LINE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        leave: bool = True,
        position: int | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.mode = display_mode(show, self.stream)
        self.total, self.n = int(total), int(initial)
        self.every, self.clock = every, clock
        self.last_line = clock()
        self.custom_log = log
        self.desc = desc
        self.bar: Any = None
        if self.mode == "bar":
            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                file=self.stream,
                leave=leave,
                position=position,
            )

    @property
    def done(self) -> bool:
        return self.n >= self.total

    def update(
        self,
        n: int = 1,
        *,
        note: str | None = None,
        line: str | Callable[[], str] | None = None,
        postfix: Mapping[str, Any] | str | Callable[[], Mapping[str, Any] | str] | None = None,
        force: bool = False,
    ) -> None:
        """Advance by ``n`` units. ``bar``: the bar moves and shows ``postfix`` (default:
        ``note``), and closes once the work is done; ``lines``: the ``line`` (default:
        ``[desc n/total] note`` when a ``note`` is given; a function is called only when a line
        is due) is written when ``force``, when the work is done, or when ``every`` seconds
        passed since the last line; ``off``: nothing. (``postfix`` too may be a function,
        called only for a bar.)"""
        self.n += n
        if self.bar is not None:
            if postfix is None:
                postfix = note
            if callable(postfix):
                postfix = postfix()
            if isinstance(postfix, str):
                self.bar.set_postfix_str(postfix, refresh=False)
            elif postfix is not None:
                self.bar.set_postfix(dict(postfix), refresh=False)
            self.bar.update(n)
            if self.done:
                self.close()
            return
        if line is None and note is not None:
            line = f"[{self.desc} {self.n}/{self.total}] {note}"
        if line is not None and (force or self.done or self.clock() - self.last_line >= self.every):
            self.show(line)

    def show(self, line: str | Callable[[], str]) -> None:
        """Write ``line`` now in ``lines`` mode (nothing in the other modes)."""
        if self.mode != "lines":
            return
        self.last_line = self.clock()
        self.write(line() if callable(line) else line)

    def write(self, message: str) -> None:
        """A message, in ``bar`` and ``lines`` mode (above the bar, without breaking it)."""
        if self.mode == "off":
            return
        if self.custom_log is not None:
            self.custom_log(message)
        elif self.bar is not None:
            tqdm.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    def close(self) -> None:
        """Close the bar (it stays on screen unless ``leave=False``)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WeightedEta:
    """The time left of pieces of work whose costs differ (the runs of a bench plan).

    Each piece has a kind and a size (a run: its task and its step budget). A kind's cost per
    unit of size is measured on its finished pieces (the wall time between finishes, times
    ``workers``, over their sizes); the time left is the sum over the pieces left of size times
    cost, over ``workers``. While a kind left has no finished piece its cost is unknown: the
    text says ``ETA >X`` and names the kind, instead of guessing.

    Args:
        total: pieces in the whole job; ``already``: done before this process.
        work: ``{label: (kind, size)}`` of the pieces to do (None: every piece counts the same,
            the mean pace of the pieces finished since the start).
        workers: pieces at a time.
        cap: ``total`` is only a cap (a study that may stop earlier): the text says ``ETA <=``.
        clock: seconds (injectable for tests).
    """

    def __init__(
        self,
        total: int,
        already: int = 0,
        *,
        work: Mapping[str, tuple[str, int]] | None = None,
        workers: int = 1,
        cap: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total, self.count, self.already = total, already, already
        self.cap = cap
        self.clock = clock
        self.started = self.last = clock()
        self.work = dict(work or {})
        self.workers = max(1, workers)
        self.seconds: dict[str, float] = {}  # per kind: worker-seconds of its finished pieces
        self.sizes: dict[str, int] = {}  # per kind: sizes of its finished pieces

    def elapsed(self) -> float:
        return self.clock() - self.started

    def finished(self, label: str) -> None:
        """Record that the piece ``label`` finished now."""
        now = self.clock()
        self.count += 1
        kind, size = self.work.pop(label, ("", 0))
        self.seconds[kind] = self.seconds.get(kind, 0.0) + (now - self.last) * self.workers
        self.sizes[kind] = self.sizes.get(kind, 0) + max(1, size)
        self.last = now

    def observe(self, count: int) -> None:
        """The job's count of finished pieces as counted elsewhere (a study in a shared storage:
        other workers' trials count too), for the mean pace of a job without costs."""
        self.count = count

    def text(self) -> str:
        """``ETA 3m05s``, or ``ETA >40s (fmnist_cnn16 not timed yet)``; ``ETA <=3m05s`` when
        ``total`` is only a cap."""
        left = self.total - self.count
        if not self.work:  # no costs known: each piece as long as the mean so far
            pace = self.elapsed() / max(1, self.count - self.already)
            return f"ETA {'<=' if self.cap else ''}{duration(pace * max(0, left))}"
        known, unknown = 0.0, []
        for kind, size in self.work.values():
            if kind in self.sizes:
                known += max(1, size) * self.seconds[kind] / self.sizes[kind]
            elif kind not in unknown:
                unknown.append(kind)
        eta = duration(known / self.workers)
        if unknown:
            return f"ETA >{eta} ({', '.join(unknown)} not timed yet)"
        return f"ETA {eta}"


def duration(seconds: float) -> str:
    """``42s``, ``3m05s`` or ``1h02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
