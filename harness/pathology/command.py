"""``lopt pathology``: run the pathology studies and write their tables, figures and summary.

    lopt pathology [study=all|landscape|variance|training|truncation] [out=results/pathology]
                   [quick=true] [seed=0] [KEY=VALUE ...]

For each study ``NAME`` it writes, atomically, under ``out``: ``NAME.csv`` (the tidy table of
every measurement, with provenance columns), ``NAME_table.csv`` (the derived table behind the
summary) and ``NAME.png``; then ``summary.md`` with every table of the studies found in
``out``. Bad input is a one-line ``UsageError`` (exit code 2) before anything is written.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from harness.errors import UsageError
from harness.outputs import check_writable
from harness.overrides import parse_overrides
from harness.pathology.common import tidy_frame, write_csv
from harness.pathology.report import write_markdown
from harness.pathology.study import studies
from harness.progress import display_mode
from harness.results.schema import provenance
from harness.settings.help import help_lines, key_docs
from harness.settings.pathology import PathologyConfig, coerce_pathology_config
from harness.util import to_plain

SUMMARY_FILE = "summary.md"


def pathology_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    """The ``lopt pathology`` entry of :mod:`harness.cli`."""
    if show_help:
        print((__doc__ or "").strip())
        print("\n`lopt pathology` keys and their defaults:\n")
        print(OmegaConf.to_yaml(OmegaConf.structured(PathologyConfig)))
        print("What the keys of `lopt pathology` mean:\n")
        keys = [f.name for f in dataclasses.fields(PathologyConfig)]
        print("\n".join(help_lines(key_docs(PathologyConfig), keys)))
        return 0
    if multirun:
        raise UsageError("-m (multirun) is supported by `lopt bench`, not by `lopt pathology`")
    cfg = coerce_pathology_config(settings_from_overrides(overrides))
    check_writable(cfg.out)  # before any work
    for path in run_pathology(cfg):
        print(path)
    return 0


def settings_from_overrides(overrides: list[str]) -> dict[str, Any]:
    """``key=value`` overrides (Hydra's grammar: lists ``[1,2]``, ``task_cfg.noise=0.5``) as a
    mapping; comma sweeps and ``+``/``~`` prefixes are refused in one line."""
    data: dict[str, Any] = {}
    for override in parse_overrides(list(overrides)):
        if override.is_sweep_override():
            raise UsageError(
                f"{override.input_line!r} is a comma list: `lopt pathology` takes one value "
                "per key (lists are written [a,b])"
            )
        if override.is_add() or override.is_delete():
            raise UsageError(f"{override.input_line!r}: write overrides as key=value")
        key, value = override.key_or_group, override.value()
        value = to_plain(value)
        if "." in key:
            head, tail = key.split(".", 1)
            if head != "task_cfg" or "." in tail:
                raise UsageError(
                    f"unknown key {key!r}: only task_cfg.NAME=VALUE takes a dotted key"
                )
            data.setdefault("task_cfg", dict(PathologyConfig().task_cfg))[tail] = value
        else:
            data[key] = value
    return data


def run_pathology(cfg: PathologyConfig | Any = None, **overrides: Any) -> list[Path]:
    """Run the studies ``cfg`` selects; returns the paths written."""
    from harness.resolve import build_task

    cfg = coerce_pathology_config(cfg, **overrides)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"out={str(out)!r} is a file; the pathology study writes a folder")
    sized = cfg.sized()
    previous = torch.get_num_threads()
    if sized.threads:
        torch.set_num_threads(sized.threads)
    written: list[Path] = []
    try:
        # an unknown task or setting is a one-line UsageError here, before anything is written
        task = build_task(sized.task, "cpu", dict(sized.task_cfg))
        every = studies()
        for name in sized.studies():
            study = every[name]
            start = time.perf_counter()
            frame = study.run(sized, task)
            seconds = time.perf_counter() - start
            tidy = tidy_frame(frame.to_dict("records"), study_seconds=round(seconds, 2))
            written.append(write_csv(tidy, out / f"{name}.csv"))
            written.append(write_csv(study.table(sized, frame), out / f"{name}_table.csv"))
            written.append(study.plot(sized, frame, out / f"{name}.png"))
            if display_mode(sized.progress) != "off":  # a line on a terminal and in a log
                print(f"[pathology] {name}: {seconds:.1f}s", file=sys.stderr, flush=True)
        written.append(write_summary(out))
    finally:
        torch.set_num_threads(previous)
    return written


def write_summary(out: Path) -> Path:
    """``summary.md``: the section of every study whose ``NAME_table.csv`` is in ``out`` (its
    ``summary``: the figure, the table and, for the variance study, the growth fits)."""
    sections = []
    for name, study in studies().items():
        path = out / f"{name}_table.csv"
        if path.is_file():
            sections.append((study.title, study.summary(pd.read_csv(path))))
    machine = provenance("cpu")
    header = (
        "Written by `lopt pathology`; the tidy measurements are the `*.csv` files beside this "
        f"page. Machine: {machine.get('device', '?')}, torch {machine.get('torch_version', '?')}"
        f", commit {machine.get('git_commit', '?')}."
    )
    sections.insert(0, ("Pathology study: tables", header))
    return write_markdown(out / SUMMARY_FILE, sections)
