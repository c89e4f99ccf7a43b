"""Fixtures shared by test modules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """torch at one thread for the test (timing-free, reproducible); restored afterwards.
    A module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """A throwaway PostgreSQL server for the session (tests/postgres.py); the test skips, with
    the reason, where none can be started."""
    import pg_server as postgres

    reason = postgres.unavailable()
    if reason:
        pytest.skip(reason)
    server = postgres.Server()
    try:
        server.start()
    except Exception as exc:
        server.stop()
        pytest.skip(f"PostgreSQL did not start: {exc}")
    yield server
    server.stop()
