"""Exceptions the harness raises on purpose.

Every message is one line that says what was wrong and what is allowed. The CLI turns a
:class:`UsageError` into that line on stderr and exit code 2.
"""

from __future__ import annotations


class HarnessError(Exception):
    """Base class of the harness's own errors."""


class UsageError(HarnessError):
    """Bad input from the user (a name, a value, a file): the CLI exits with code 2."""


class UnknownNameError(UsageError):
    """A task or optimizer name that no plugin registered."""


class DatasetUnavailableError(UsageError):
    """A task's data is not on this machine and could not be downloaded."""


class RegistrationError(HarnessError):
    """Two different plugins claimed the same name, or a plugin is malformed."""


#: the exit code of a chunk that stopped at its time budget with work left (EX_TEMPFAIL): the
#: same command continues it
EXIT_UNFINISHED = 75


class Unfinished(HarnessError):
    """A chunk (``max_seconds``) stopped with work left and everything finished saved: the CLI
    prints the one-line message and exits with :data:`EXIT_UNFINISHED`."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what was saved and how to go on (the CLI prints ``message``, exit 130)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
