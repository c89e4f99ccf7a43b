"""``lopt meta-train family=NAME ...``: the entrance of family meta-training.

    lopt meta-train family=mlp_mix [learner=nominal_mlp] [estimator=pes|tes|merged]
                    [objective=train|valid] [pairs=32] [outer_steps=N] [max_seconds=S]
                    [out=DIR] [workers=2] [KEY=VALUE ...]

:func:`meta_train_family` checks the settings (one-line ``UsageError``, nothing written), prepares
``out`` (``resume=false`` removes a previous run's files; ``resume=true`` checks a saved run is
this one), writes ``out/config.json``, then runs one chunk in this process (``parallel=single``
or one worker) or launches ``workers`` ranks with torchrun (``parallel=processes``; gloo) and
waits; after each chunk it draws ``out/family_curves.png`` (:mod:`harness.meta.family.report`).
Rerunning the same command continues the run for another chunk. Ctrl-C stops every
process of the run within seconds (:mod:`harness.meta.processes`), keeps the last checkpoint
and prints one line, ``interrupted at outer step N; rerun the same command to continue``
(exit 130).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harness.errors import Interrupted, UsageError
from harness.meta import checkpoint
from harness.meta.family.report import CURVES_FILE, build_family_report
from harness.meta.family.trainer import (
    BEST_FILE,
    INNER_FILE,
    STATE_FILE,
    WHAT,
    run_family_training,
)
from harness.meta.processes import interrupted_line
from harness.meta.trainer import CONFIG_FILE, LOG_FILE, LOPT_FILE
from harness.meta.world import World
from harness.resolve import FamilyRun, resolve_family
from harness.settings.family import (
    LATER_IDENTITY_DEFAULTS,
    FamilyMetaTrainConfig,
    coerce_family_config,
)
from harness.util import to_plain

MODULE = "harness.meta.family.command"


def meta_train_family(cfg: FamilyMetaTrainConfig | Any = None, **overrides: Any) -> Path:
    """Meta-train on a task family as ``cfg`` says (one chunk); returns ``out/lopt.safetensors``."""
    from harness.meta.distributed import in_torchrun, launch

    cfg = coerce_family_config(cfg, **overrides)
    run = resolve_family(cfg)  # the one resolve step: an unknown name fails here, in one line
    out = prepare_out(run)
    try:
        if cfg.parallel == "processes" and cfg.workers > 1 and not in_torchrun():
            launch(out / CONFIG_FILE, cfg.workers, 1, module=MODULE)
            return out / LOPT_FILE
        previous = torch.get_num_threads()
        if cfg.parallel == "processes":
            torch.set_num_threads(1)
        try:
            return run_family_training(run, World())
        finally:
            torch.set_num_threads(previous)
    except KeyboardInterrupt as exc:  # Ctrl-C: every worker has exited; one line, exit 130
        raise Interrupted(interrupted_line(out / STATE_FILE)) from exc


def prepare_out(run: FamilyRun) -> Path:
    """Create ``out``; with ``resume`` check a saved run is this one, else clear it; write
    ``config.json``."""
    old = [STATE_FILE, INNER_FILE, LOG_FILE, LOPT_FILE, BEST_FILE, CURVES_FILE]
    return checkpoint.prepare_out(
        run.cfg, run.identity, WHAT, STATE_FILE, old, LATER_IDENTITY_DEFAULTS
    )


def family_command(overrides: Sequence[Any], *, show_help: bool = False) -> int:
    """The ``lopt meta-train family=...`` entry of :mod:`harness.cli` (parsed overrides)."""
    if show_help:
        import dataclasses

        print((__doc__ or "").strip())
        print("\n`lopt meta-train family=...` keys and their defaults:\n")
        for f in dataclasses.fields(FamilyMetaTrainConfig):
            default = f.default_factory() if callable(f.default_factory) else f.default
            print(f"  {f.name}={json.dumps(to_plain(default))}")
        return 0
    path = meta_train_family(settings_from_overrides(overrides))
    build_family_report(path.parent)  # family_curves.png: the judge, the meters, CPU-hours
    print(summary_line(path.parent))
    return 0


def settings_from_overrides(overrides: Sequence[Any]) -> dict[str, Any]:
    """Parsed ``key=value`` overrides as a mapping (``learner_cfg.NAME=VALUE`` nests); comma
    sweeps and ``+``/``~`` prefixes are refused in one line."""
    data: dict[str, Any] = {}
    for override in overrides:
        if override.is_sweep_override():
            raise UsageError(
                f"{override.input_line!r} is a comma list: `lopt meta-train family=...` takes "
                "one value per key (lists are written [a,b])"
            )
        if override.is_delete():
            raise UsageError(f"{override.input_line!r}: write overrides as key=value")
        key, value = override.key_or_group, to_plain(override.value())
        if "." in key:
            head, tail = key.split(".", 1)
            if head != "learner_cfg" or "." in tail:
                raise UsageError(
                    f"unknown key {key!r}: only learner_cfg.NAME=VALUE takes a dotted key"
                )
            data.setdefault("learner_cfg", {})[tail] = value
        else:
            data[key] = value
    return data


def summary_line(out: str | Path) -> str:
    """One line on the run in ``out``: outer steps, the last held-out losses, the meters'
    medians and whether the estimate is noise, seconds and CPU-hours (from its log)."""
    import pandas as pd

    from harness.meta.family import meters

    out = Path(out)
    log = pd.read_csv(out / LOG_FILE)
    last = log.sort_values("outer_step").groupby("metric")["value"].last()
    rows = log[log["metric"].isin(meters.METER_NAMES)].pivot_table(
        index="outer_step", columns="metric", values="value"
    )
    parts = [f"{out / LOPT_FILE}: {int(log['outer_step'].max())} outer steps"]
    for name in ("heldout_loss", "heldout_final_valid"):
        if name in last:
            parts.append(f"{name} {last[name]:.4g}")
    medians = rows.to_dict("records")
    if medians:
        parts.append(f"median {meters.summary(medians)}")
        words = meters.verdict(meters.medians(medians))
        if words:
            parts.append(words)
    if "cpu_seconds" in last:
        parts.append(f"{last['cpu_seconds'] / 3600:.3f} CPU-hours")
    return ", ".join(parts)


def _family_worker(data: dict[str, Any]) -> None:
    from harness.meta.distributed import init_world

    cfg = coerce_family_config(data)
    world, _ = init_world("cpu")
    torch.set_num_threads(1)
    # the one resolve step of this process (plugins, family, learner)
    run_family_training(resolve_family(cfg), world)


def main(argv: Sequence[str] | None = None) -> int:
    """torchrun entry point: ``-m harness.meta.family.command CONFIG.json``."""
    from harness.meta.distributed import worker_main

    return worker_main(argv, MODULE, _family_worker)


if __name__ == "__main__":
    sys.exit(main())
