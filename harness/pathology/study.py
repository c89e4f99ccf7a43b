"""The study protocol: what ``lopt pathology`` asks of each of its four studies.

A study is an object with a ``name`` (its file stem: ``NAME.csv``, ``NAME_table.csv``,
``NAME.png``), a ``title`` (its heading in ``summary.md``) and four methods, which the command
calls in this order and nothing else (:func:`harness.pathology.command.run_pathology`):

* ``run(cfg, task) -> frame``: the measurements, one row per measurement (the columns of
  :data:`harness.pathology.common.COLUMNS`; the command adds provenance and the study's
  wall-clock seconds). The only timed call.
* ``table(cfg, frame) -> table``: the derived table behind the summary.
* ``plot(cfg, frame, path) -> path``: the figure, written atomically at ``path``.
* ``summary(table) -> str``: the markdown body of the study's section of ``summary.md``, from
  the table as read back from ``NAME_table.csv`` (so the summary can be rebuilt from the files
  alone); :class:`StudyBase` gives the figure link and the table.

Each study lives in its own module (``landscape``, ``variance``, ``training``, ``truncation``)
as a ``STUDY_OBJECT``; :func:`studies` imports them in the settings' order
(:data:`harness.settings.pathology.STUDIES`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from harness.pathology.report import frame_table
from harness.settings.pathology import STUDIES, PathologyConfig


class Study(Protocol):
    """One pathology study (see the module docstring for the contract)."""

    name: str
    title: str

    def run(self, cfg: PathologyConfig, task: Any) -> pd.DataFrame: ...

    def table(self, cfg: PathologyConfig, frame: pd.DataFrame) -> pd.DataFrame: ...

    def plot(self, cfg: PathologyConfig, frame: pd.DataFrame, path: Path) -> Path: ...

    def summary(self, table: pd.DataFrame) -> str: ...


class StudyBase:
    """The default ``summary``: the study's figure, then its table."""

    name: str
    title: str

    def summary(self, table: pd.DataFrame) -> str:
        return f"![{self.name}]({self.name}.png)\n\n" + frame_table(table)


def studies() -> dict[str, Study]:
    """Every study by name, in the order of the summary."""
    found = {}
    for name in STUDIES:
        study: Study = importlib.import_module(f"harness.pathology.{name}").STUDY_OBJECT
        found[name] = study
    return found
