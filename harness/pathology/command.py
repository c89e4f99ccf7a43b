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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import OmegaConf

from harness.errors import UsageError
from harness.outputs import check_writable
from harness.overrides import parse_overrides
from harness.pathology.common import tidy_frame, write_csv
from harness.pathology.report import frame_table, write_markdown
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
    from harness.registry import create_task

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
        task = create_task(sized.task, device="cpu", **sized.task_cfg)
        for study in sized.studies():
            start = time.perf_counter()
            frame = STUDIES[study][0](sized, task)
            seconds = time.perf_counter() - start
            tidy = tidy_frame(frame.to_dict("records"))
            tidy["study_seconds"] = round(seconds, 2)
            written.append(write_csv(tidy, out / f"{study}.csv"))
            table = STUDIES[study][1](sized, frame)
            written.append(write_csv(table, out / f"{study}_table.csv"))
            written.append(STUDIES[study][2](sized, frame, out / f"{study}.png"))
            if sized.progress is not False and (sized.progress or sys.stderr.isatty()):
                print(f"[pathology] {study}: {seconds:.1f}s", file=sys.stderr, flush=True)
        written.append(write_summary(out))
    finally:
        torch.set_num_threads(previous)
    return written


# -- the studies: run, derived table, figure --------------------------------------------------
def _landscape(cfg: PathologyConfig, task: Any) -> pd.DataFrame:
    from harness.pathology.landscape import run_landscape

    return run_landscape(cfg, task)


def _landscape_table(cfg: PathologyConfig, frame: pd.DataFrame) -> pd.DataFrame:
    from harness.pathology.landscape import landscape_table

    return landscape_table(frame)


def _landscape_plot(cfg: PathologyConfig, frame: pd.DataFrame, path: Path) -> Path:
    from harness.pathology.landscape import plot_landscape

    return plot_landscape(frame, path)


def _variance(cfg: PathologyConfig, task: Any) -> pd.DataFrame:
    from harness.pathology.variance import run_variance

    return run_variance(cfg, task)


def _variance_table(cfg: PathologyConfig, frame: pd.DataFrame) -> pd.DataFrame:
    from harness.pathology.variance import variance_summary

    return variance_summary(frame, cfg.variance.batch)


def _variance_plot(cfg: PathologyConfig, frame: pd.DataFrame, path: Path) -> Path:
    from harness.pathology.variance import plot_variance, variance_summary

    return plot_variance(variance_summary(frame, cfg.variance.batch), path)


def _training(cfg: PathologyConfig, task: Any) -> pd.DataFrame:
    from harness.pathology.training import run_training

    return run_training(cfg, task)


def _training_table(cfg: PathologyConfig, frame: pd.DataFrame) -> pd.DataFrame:
    from harness.pathology.training import training_table

    return training_table(frame)


def _training_plot(cfg: PathologyConfig, frame: pd.DataFrame, path: Path) -> Path:
    from harness.pathology.training import plot_training

    return plot_training(frame, path)


def _truncation(cfg: PathologyConfig, task: Any) -> pd.DataFrame:
    from harness.pathology.truncation import run_truncation

    return run_truncation(cfg, task)


def _truncation_table(cfg: PathologyConfig, frame: pd.DataFrame) -> pd.DataFrame:
    from harness.pathology.truncation import crossover_step, truncation_table

    table = truncation_table(frame)
    table["short_behind_from_step"] = crossover_step(frame)
    return table


def _truncation_plot(cfg: PathologyConfig, frame: pd.DataFrame, path: Path) -> Path:
    from harness.pathology.truncation import plot_truncation

    return plot_truncation(frame, path)


Run = Callable[[PathologyConfig, Any], pd.DataFrame]
STUDIES: dict[str, tuple[Run, Callable[..., pd.DataFrame], Callable[..., Path]]] = {
    "landscape": (_landscape, _landscape_table, _landscape_plot),
    "variance": (_variance, _variance_table, _variance_plot),
    "training": (_training, _training_table, _training_plot),
    "truncation": (_truncation, _truncation_table, _truncation_plot),
}
TITLES = {
    "landscape": "1. Outer-loss landscape against unroll length (roughness)",
    "variance": "2. Estimator variance against unroll length",
    "training": "3. Outer training at equal compute: rp, ES, merged",
    "truncation": "4. Truncation bias: short constant unrolls against the increasing schedule",
}


def write_summary(out: Path) -> Path:
    """``summary.md``: every ``*_table.csv`` found in ``out`` (growth fits for the variance
    study), with its figure."""
    sections = []
    for study, title in TITLES.items():
        path = out / f"{study}_table.csv"
        if not path.is_file():
            continue
        table = pd.read_csv(path)
        body = f"![{study}]({study}.png)\n\n"
        if study == "variance":
            from harness.pathology.variance import growth_table

            body += "Fitted growth of the batch-estimate variance with T:\n\n"
            body += frame_table(growth_table(table)) + "\n\n"
        body += frame_table(table)
        sections.append((title, body))
    machine = provenance("cpu")
    header = (
        "Written by `lopt pathology`; the tidy measurements are the `*.csv` files beside this "
        f"page. Machine: {machine.get('device', '?')}, torch {machine.get('torch_version', '?')}"
        f", commit {machine.get('git_commit', '?')}."
    )
    sections.insert(0, ("Pathology study: tables", header))
    return write_markdown(out / SUMMARY_FILE, sections)
