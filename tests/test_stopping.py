"""harness.stopping.StopRequest: the first signal asks, the second stops at once."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from harness.stopping import StopRequest


@pytest.mark.parametrize("kind", [signal.SIGTERM, signal.SIGINT])
def test_the_first_signal_asks_and_the_second_interrupts(kind) -> None:
    before = signal.getsignal(kind)
    lines: list[str] = []
    with StopRequest("the trial in flight", log=lines.append) as stop:
        assert not stop() and stop.name == ""
        os.kill(os.getpid(), kind)
        assert stop() and stop.name == kind.name
        assert lines == ["stopping after the trial in flight (signal again: at once)"]
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), kind)
    assert signal.getsignal(kind) is before


def test_off_the_main_thread_nothing_is_installed() -> None:
    before = signal.getsignal(signal.SIGTERM)
    seen: list[object] = []

    def inside() -> None:
        with StopRequest("the runs in flight", log=seen.append) as stop:
            seen.append(signal.getsignal(signal.SIGTERM))
            seen.append(stop())

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    assert seen == [before, False]
