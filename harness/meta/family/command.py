"""``lopt meta-train family=NAME ...``: the entrance of family meta-training.

    lopt meta-train family=mlp_mix [learner=nominal_mlp] [estimator=pes|tes|merged]
                    [objective=train|valid] [pairs=32] [outer_steps=N] [max_seconds=S]
                    [out=DIR] [workers=2] [KEY=VALUE ...]

:func:`meta_train_family` checks the settings (one-line ``UsageError``, nothing written), prepares
``out`` (``resume=false`` removes a previous run's files; ``resume=true`` checks a saved run is
this one), writes ``out/config.json``, then runs one chunk in this process (``parallel=single``
or one worker) or launches ``workers`` ranks with torchrun (``parallel=processes``; gloo) and
waits. Rerunning the same command continues the run for another chunk.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from harness.errors import UsageError
from harness.meta.checkpoint import load_trainer_state
from harness.meta.family.trainer import (
    INNER_FILE,
    STATE_FILE,
    check_identity,
    run_family_training,
)
from harness.meta.trainer import CONFIG_FILE, LOG_FILE, LOPT_FILE
from harness.meta.world import World
from harness.settings.family import FamilyMetaTrainConfig, coerce_family_config
from harness.util import to_plain, write_atomically

MODULE = "harness.meta.family.command"


def meta_train_family(cfg: FamilyMetaTrainConfig | Any = None, **overrides: Any) -> Path:
    """Meta-train on a task family as ``cfg`` says (one chunk); returns ``out/lopt.safetensors``."""
    from harness.meta.distributed import in_torchrun, launch

    cfg = coerce_family_config(cfg, **overrides)
    out = prepare_out(cfg)
    if cfg.parallel == "processes" and cfg.workers > 1 and not in_torchrun():
        launch(out / CONFIG_FILE, cfg.workers, 1, module=MODULE)
        return out / LOPT_FILE
    previous = torch.get_num_threads()
    if cfg.parallel == "processes":
        torch.set_num_threads(1)
    try:
        return run_family_training(cfg, World())
    finally:
        torch.set_num_threads(previous)


def prepare_out(cfg: FamilyMetaTrainConfig) -> Path:
    """Create ``out``; with ``resume`` check a saved run is this one, else clear it; write
    ``config.json``."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"out={str(out)!r} is a file; meta-training writes a folder")
    state = out / STATE_FILE
    if state.is_file():
        if cfg.resume:
            check_identity(cfg, load_trainer_state(state))
        else:
            for old in (state, out / INNER_FILE, out / LOG_FILE, out / LOPT_FILE):
                old.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n"
    write_atomically(out / CONFIG_FILE, lambda tmp: tmp.write_text(text))
    return out


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


def main(argv: Sequence[str] | None = None) -> int:
    """torchrun entry point: ``-m harness.meta.family.command CONFIG.json``."""
    import torch.distributed as dist

    from harness.meta.distributed import init_world
    from harness.registry import load_plugin_modules

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: torchrun ... -m harness.meta.family.command CONFIG.json", file=sys.stderr)
        return 2
    try:
        data = json.loads(Path(args[0]).read_text())
        load_plugin_modules(data.get("plugins", []))
        cfg = coerce_family_config(data)
        world, _ = init_world("cpu")
        torch.set_num_threads(1)
        try:
            run_family_training(cfg, world)
        finally:
            dist.destroy_process_group()
    except UsageError as exc:
        print(f"lopt: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
