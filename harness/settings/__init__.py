"""Every command's settings and their checks: where ``lopt``'s input is validated.

One module per command, each a dataclass (or nested dataclasses) with the command's options,
their defaults and a ``check()`` that raises a one-line :class:`~harness.errors.UsageError`
for the first invalid value; every check uses the validators of :mod:`.validate`.

This package imports neither Hydra nor the registry nor Optuna at module level, so torchrun
workers and Python callers (``meta_train(...)``, ``run_pathology(...)``, ``tune(...)``) load and
check their settings without them; :mod:`harness.config` composes the Hydra configs of the
command line from these dataclasses. This ``__init__`` imports nothing: import the modules.
"""
