"""What a walk of ``lopt meta-train`` from its settings to its checkpoints builds: learner
constructions (the registry's factories of ``mlp`` and ``nominal_mlp``, counted), plugin module
imports through the registry and serialisations of the settings (``to_dict``), for a tiny
per-problem run (``parallel=loop``, 3 outer steps, a checkpoint after each) and a tiny family run
(``parallel=single``, the same), each with one ``plugins=`` module.

The target (issue 26): one learner construction and one plugin import per run. Run it against
any checkout to compare (``PYTHONPATH=<checkout>``)::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/resolve_walk.py

About 10 s on one thread. Prints one line per walk, then the verdict.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

META = [
    "task=quadratic",
    "problems=4",
    "horizon=40",
    "outer_batches=2",
    "schedule=constant",
    "unroll_length=6",
    "progress=false",
    "threads=1",
    "eval_every=0",
    "outer_steps=3",
    "checkpoint_every=1",
    "parallel=loop",
]
FAMILY = [
    "family=mlp_mix",
    "learner=nominal_mlp",
    "learner_cfg.compile=false",
    "pairs=4",
    "arch_groups=2",
    "truncation=10",
    "min_horizon=20",
    "max_horizon=40",
    "heldout_tasks=2",
    "eval_every=0",
    "checkpoint_every=1",
    "parallel=single",
    "outer_steps=3",
    "progress=false",
]


def counted(counts: dict[str, int], key: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, adding one to ``counts[key]`` per call."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        counts[key] += 1
        return function(*args, **kwargs)

    return wrapper


def walk(overrides: list[str], work: Path) -> dict[str, int]:
    """Run ``lopt meta-train OVERRIDES plugins=[walk_plugin] out=...`` in ``work`` with the
    counters in place; returns the counts."""
    from harness import registry
    from harness.cli import main
    from harness.settings.family import FamilyMetaTrainConfig
    from harness.settings.meta import MetaTrainConfig

    counts = {"learner builds": 0, "plugin imports": 0, "settings serialised": 0}
    registry.LEARNERS.names()  # the built-in learners registered before they are wrapped
    saved = dict(registry.LEARNERS._entries), registry.load_plugin_modules
    saved_to_dict = {cls: cls.to_dict for cls in (MetaTrainConfig, FamilyMetaTrainConfig)}
    try:
        for name in ("mlp", "nominal_mlp"):
            entry = registry.LEARNERS.get(name)
            factory = counted(counts, "learner builds", entry.factory)
            registry.LEARNERS._entries[name] = dataclasses.replace(entry, factory=factory)
        real = registry.load_plugin_modules

        def loads(modules: Any) -> None:
            modules = list(modules)
            counts["plugin imports"] += len(modules)
            real(modules)

        registry.load_plugin_modules = loads
        for cls, to_dict in saved_to_dict.items():
            cls.to_dict = counted(counts, "settings serialised", to_dict)
        plugin = f"walk_plugin_{work.name}"
        (work / f"{plugin}.py").write_text('"""registers nothing"""\n')
        os.chdir(work)
        code = main(["meta-train", *overrides, f"plugins=[{plugin}]", f"out={work / 'run'}"])
        assert code == 0, f"lopt meta-train exited {code}"
    finally:
        registry.LEARNERS._entries.clear()
        registry.LEARNERS._entries.update(saved[0])
        registry.load_plugin_modules = saved[1]
        for cls, to_dict in saved_to_dict.items():
            cls.to_dict = to_dict
    return counts


def main(argv: list[str] | None = None) -> int:
    import torch
    from verdict import verdict

    if argv if argv is not None else sys.argv[1:]:
        print("usage: resolve_walk.py (no arguments)", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    here = Path.cwd()
    results = {}
    try:
        for name, overrides in (("per-problem", META), ("family", FAMILY)):
            results[name] = walk(overrides, Path(tempfile.mkdtemp(prefix=f"walk_{name}_")))
            line = ", ".join(f"{k} {v}" for k, v in results[name].items())
            print(f"lopt meta-train ({name}, 3 checkpoints): {line}", flush=True)
    finally:
        os.chdir(here)
    once = all(r["learner builds"] == 1 and r["plugin imports"] == 1 for r in results.values())
    return verdict(once, "one learner construction and one plugin import per meta-training run")


if __name__ == "__main__":
    sys.exit(main())
