"""``lopt evaluate-family``: a family-trained learned optimizer on held-out family tasks it was
never trained on, against Adam tuned per task, Adam at its default and its own initial theta.

    lopt evaluate-family checkpoint=PATH [family=mlp_mix] [tasks=64] [seeds=10] [steps=0]
                         [out=DIR] [max_seconds=S] [KEY=VALUE ...]

For each task ``k`` of the evaluation sample (:mod:`harness.meta.family.evalset`: member seeds
no meta-training draw and no held-out judge uses) and each evaluation seed (initialisation and
data order, as ``lopt bench``'s ``seed``), every optimizer row trains the task for ``steps``
inner steps on the batched engine (one :class:`~harness.meta.batched.ProblemBatch` per learner:
Adam at every grid rate as ``BatchedAdam`` rows, the learned and the initial theta as learner
rows), with the whole training split's loss at ``checkpoints`` evenly spaced steps and the final
train, valid and test losses. Nothing of that is timed.

Wall-clock is modelled, not read off these batched runs: per task, each optimizer's cost of one
whole training step (minibatch loss, gradient and update) on a single problem is measured with
:class:`harness.timing.Stopwatch`, one thread, Adam and the learner alternating (the minimum of 3
rounds of ``timing_steps`` steps each), and a run's ``wall_time_s`` is its step times that
cost.

Output folder ``out``: ``parts/task_KKKK.csv.gz`` (one task's tidy rows, gzipped, written when
the task is done: rerunning the same command skips finished tasks, ``max_seconds`` stops between
tasks, and a larger ``tasks=`` extends a finished evaluation), then, once all are done,
``evaluation.csv.gz`` (the tidy table of :mod:`harness.results.schema`),
``per_task.csv``, ``summary.md`` and ``speedups.png`` (:mod:`harness.meta.family.evalreport`).
``config.json`` records the settings and the checkpoint's SHA-256; another evaluation's folder
is refused in one line, before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from harness.errors import UsageError
from harness.meta.family.evalreport import ROLES, part_path, with_status, write_report
from harness.meta.family.evalset import EvalSample, check_disjoint
from harness.settings.evaluate_family import (
    IDENTITY_FIELDS,
    FamilyEvaluateConfig,
    coerce_evaluate_config,
)
from harness.util import write_atomically

SUITE = "evaluate-family"
CONFIG_FILE = "config.json"
SPLITS = ("train", "valid", "test")
TIMING_ROUNDS = 3


# -- setting up --------------------------------------------------------------------------------
def checkpoint_digest(path: Path) -> str:
    """SHA-256 (hex) of the checkpoint file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_candidate(cfg: FamilyEvaluateConfig) -> tuple[Any, torch.Tensor, torch.Tensor, dict]:
    """The checkpoint's learner, its theta, its initial theta (the meta-training's
    ``init_theta(derive_seed(seed, STREAM_THETA))``) and its meta-training record; one-line
    ``UsageError`` when it cannot run batched or its held-out judge reaches the sample."""
    from harness.meta.truncation import STREAM_THETA, derive_seed
    from optimizers.checkpoint import load_lopt_checkpoint

    loaded = load_lopt_checkpoint(cfg.checkpoint)
    learner = loaded.learner
    for method in ("batched_init", "batched_step", "init_theta"):
        if not callable(getattr(learner, method, None)):
            raise UsageError(
                f"checkpoint={cfg.checkpoint!r}: its learner has no {method}; evaluate-family "
                "needs a learner that runs batched (e.g. nominal_mlp)"
            )
    meta = dict(loaded.meta_training)
    check_disjoint(int(meta.get("heldout_tasks", 0) or 0))
    initial = learner.init_theta(derive_seed(int(meta.get("seed", 0)), STREAM_THETA))
    return learner, loaded.theta.float(), initial.float(), meta


def prepare_out(cfg: FamilyEvaluateConfig, identity: dict[str, Any]) -> Path:
    """Check ``out`` is new or this evaluation's, then write ``config.json`` there."""
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"out={str(out)!r} is a file; evaluate-family writes a folder")
    saved = out / CONFIG_FILE
    if saved.is_file():
        old = json.loads(saved.read_text()).get("identity")
        if old != identity:
            diff = sorted(k for k in identity if (old or {}).get(k) != identity[k])
            raise UsageError(
                f"out={str(out)!r} holds another evaluation (differs in {', '.join(diff)}); "
                "give a new out= or the same settings to resume it"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise UsageError(f"out={str(out)!r} is a folder with other files; give a new out=")
    text = json.dumps({"identity": identity, "settings": cfg.to_dict()}, indent=2) + "\n"
    write_atomically(saved, lambda tmp: tmp.write_text(text))
    return out


# -- one task ----------------------------------------------------------------------------------
def checkpoint_steps(steps: int, count: int) -> list[int]:
    """``count`` evenly spaced steps in ``(0, steps]``, the last one ``steps``."""
    return sorted({max(1, round(steps * (j + 1) / count)) for j in range(count)})


def train_rows(
    task: Any,
    init_seeds: Sequence[int],
    learner: Any,
    theta: torch.Tensor,
    steps: int,
    marks: Sequence[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``len(init_seeds)`` rows of ``task`` with ``learner`` (``theta`` ``[R, D]``) for
    ``steps``; returns the training-split loss at ``marks`` ``[R, C]`` and the final train,
    valid and test losses ``[R, 3]`` (float64; non-finite or above 10: 10, as the judge)."""
    from harness.meta.batched import ProblemBatch, unroll
    from harness.meta.family.problems import LOSS_CLIP

    def clean(values: torch.Tensor) -> np.ndarray:
        values = torch.nan_to_num(values.double(), nan=LOSS_CLIP, posinf=LOSS_CLIP)
        return values.clamp(max=LOSS_CLIP).numpy()

    count = len(init_seeds)
    batch = ProblemBatch([task] * count, list(init_seeds))
    w = batch.init_params()
    state = learner.batched_init(w)
    step = torch.zeros(count, dtype=torch.int64)
    horizon = torch.full((count,), steps, dtype=torch.int64)
    curve = np.empty((count, len(marks)))
    done = 0
    for j, mark in enumerate(marks):
        w, state, step, _ = unroll(batch, learner, theta, w, state, step, horizon, mark - done)
        done = mark
        curve[:, j] = clean(batch.eval_loss(w, "train"))
    finals = np.stack([curve[:, -1], *(clean(batch.eval_loss(w, s)) for s in SPLITS[1:])], 1)
    return curve, finals


def step_costs(
    task: Any, learner: Any, theta: torch.Tensor, adam_lr: float, timing_steps: int
) -> tuple[float, float]:
    """Seconds per whole training step of Adam and of the learner on one problem of ``task``
    (one thread as set by the caller; :class:`harness.timing.Stopwatch`; alternating, the
    minimum over rounds, after one warm-up round each)."""
    from harness.meta.batched import BatchedAdam, ProblemBatch, unroll
    from harness.timing import Stopwatch

    batch = ProblemBatch([task], [0])
    runs = []
    for opt, th in ((BatchedAdam(lr=adam_lr), torch.zeros(1, 1)), (learner, theta[None])):
        w = batch.init_params()
        runs.append([opt, th, w, opt.batched_init(w), torch.zeros(1, dtype=torch.int64)])
    horizon = torch.full((1,), 10**9, dtype=torch.int64)
    best = [math.inf, math.inf]
    for rnd in range(TIMING_ROUNDS + 1):
        for i, run in enumerate(runs):
            opt, th, w, state, step = run
            watch = Stopwatch()
            with watch.timed():
                w, state, step, _ = unroll(batch, opt, th, w, state, step, horizon, timing_steps)
            run[2:] = [w, state, step]
            if rnd > 0:  # round 0 warms up (torch.compile, caches)
                best[i] = min(best[i], watch.total / timing_steps)
    return best[0], best[1]


def run_task(
    cfg: FamilyEvaluateConfig,
    sample: EvalSample,
    k: int,
    learner: Any,
    thetas: dict[str, torch.Tensor],
    digest: str,
    learner_name: str,
) -> pd.DataFrame:
    """Task ``k``'s tidy rows: every optimizer row on every evaluation seed."""
    from harness.meta.batched import BatchedAdam
    from harness.results.schema import canonical_json, definition_digest, provenance

    task = sample.task(k)
    seeds = sample.init_seeds()
    marks = checkpoint_steps(sample.steps, cfg.checkpoints)
    rates = [float(r) for r in cfg.lr_grid]
    num = len(seeds)
    log_rates = torch.tensor([math.log(r) for r in rates for _ in seeds]).view(-1, 1)
    adam_curve, adam_final = train_rows(
        task, seeds * len(rates), BatchedAdam(lr=1.0), log_rates, sample.steps, marks
    )
    lopt_theta = torch.cat([thetas[role].expand(num, -1) for role in ROLES])
    lopt_curve, lopt_final = train_rows(
        task, seeds * len(ROLES), learner, lopt_theta, sample.steps, marks
    )
    torch_threads = torch.get_num_threads()
    adam_cost, lopt_cost = step_costs(
        task, learner, thetas["learned"], cfg.adam_default, cfg.timing_steps
    )
    from harness.results.schema import COLUMNS

    base = {
        "suite": SUITE,
        "task": task.name,
        "task_cfg": canonical_json({"family": cfg.family, "member": task.seed}),
        "budget_steps": sample.steps,
        **provenance("cpu"),
        "threads": torch_threads,
    }
    records: list[dict[str, Any]] = []
    labels = [("adam", {"lr": r}, "adam", adam_cost) for r in rates]
    labels += [
        (learner_name, {"checkpoint": digest[:12], "theta": role}, role, lopt_cost)
        for role in ROLES
    ]
    curves = np.concatenate([adam_curve, lopt_curve])
    finals = np.concatenate([adam_final, lopt_final])
    for o, (optimizer, hparams, role, cost) in enumerate(labels):
        for s, seed in enumerate(seeds):
            r = o * num + s
            hp = canonical_json(hparams)
            run = {
                **base,
                "run_id": definition_digest(
                    {"suite": SUITE, "task": task.name, "optimizer": optimizer, "hparams": hp}
                    | {"seed": seed, "steps": sample.steps}
                ),
                "optimizer": optimizer,
                "hparams": hp,
                "seed": seed,
                "status": "",  # with_status sets it
                "tags": canonical_json({"role": role, "seconds_per_step": cost}),
            }
            for step, value in zip(marks, curves[r], strict=True):
                records.append(run | _measure(step, cost, "train", value))
            for split, value in zip(SPLITS[1:], finals[r, 1:], strict=True):
                records.append(run | _measure(marks[-1], cost, split, value))
    return with_status(pd.DataFrame.from_records(records, columns=list(COLUMNS)))


def _measure(step: int, cost: float, split: str, value: float) -> dict[str, Any]:
    return {
        "step": step,
        "wall_time_s": step * cost,
        "split": split,
        "metric": "loss",
        "value": float(value),
    }


# -- the command -------------------------------------------------------------------------------
def evaluate_family(cfg: FamilyEvaluateConfig | Any = None, **overrides: Any) -> Path:
    """Run (or continue) the evaluation ``cfg`` describes; returns ``out``. When every task is
    done, writes the tables, the summary and the figure."""
    from harness.meta.family.problems import check_family
    from harness.registry import load_plugin_modules
    from tasks.families import create_family

    cfg = coerce_evaluate_config(cfg, **overrides)
    load_plugin_modules(cfg.plugins)
    check_family(cfg.family)
    steps = cfg.steps or int(create_family(cfg.family).default_steps)
    if steps < cfg.checkpoints:
        raise UsageError(f"steps ({steps}) must be >= checkpoints ({cfg.checkpoints})")
    path = Path(cfg.checkpoint)
    learner, theta, initial, meta = load_candidate(cfg)
    from optimizers.checkpoint import resolve_checkpoint

    digest = checkpoint_digest(resolve_checkpoint(cfg.checkpoint))
    data = cfg.to_dict()
    identity = {name: data[name] for name in IDENTITY_FIELDS} | {
        "steps": steps,
        "checkpoint_sha256": digest,
    }
    out = prepare_out(cfg, identity)
    sample = EvalSample(cfg.family, cfg.tasks, cfg.seeds, steps, cfg.first_seed)
    learner_name = str(meta.get("learner", type(learner).__name__))
    thetas = {"learned": theta, "initial": initial}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    ran = 0
    try:
        for k in range(sample.count):
            part = part_path(out, k)
            if part.is_file():
                continue
            if (
                ran
                and cfg.max_seconds is not None
                and time.perf_counter() - start > cfg.max_seconds
            ):
                left = sum(not part_path(out, j).is_file() for j in range(k, sample.count))
                print(
                    f"evaluate-family: stopped after max_seconds; {left} tasks left: "
                    "rerun the same command to continue"
                )
                return out
            t0 = time.perf_counter()
            frame = run_task(cfg, sample, k, learner, thetas, digest, learner_name)
            write_atomically(
                part, lambda tmp, f=frame: f.to_csv(tmp, index=False, compression="gzip")
            )
            ran += 1
            if cfg.progress:
                task = sample.task(k)
                left = sum(not part_path(out, j).is_file() for j in range(k, sample.count))
                eta = (time.perf_counter() - start) / ran * left / 60
                print(
                    f"evaluate-family: task {k + 1}/{sample.count} {task.name} "
                    f"({task.num_params} params, {task.dataset}) "
                    f"{time.perf_counter() - t0:.1f} s; {left} left, about {eta:.0f} min",
                    flush=True,
                )
    finally:
        torch.set_num_threads(previous)
    trained = (
        f"{learner_name} after {meta.get('outer_step', '?')} outer steps of "
        f"{meta.get('estimator', '?')} on {meta.get('family', '?')} (meta-training seed "
        f"{meta.get('seed', '?')}, held-out judge of {meta.get('heldout_tasks', '?')} tasks); "
        f"checkpoint SHA-256 {digest[:12]}"
    )
    write_report(out, sample, cfg, path, trained)
    return out


def family_evaluate_command(overrides: Sequence[Any], *, show_help: bool = False) -> int:
    """The ``lopt evaluate-family`` entry of :mod:`harness.cli` (parsed overrides)."""
    import dataclasses

    from harness.util import to_plain

    if show_help:
        print((__doc__ or "").strip())
        print("\n`lopt evaluate-family` keys and their defaults:\n")
        for f in dataclasses.fields(FamilyEvaluateConfig):
            default = f.default_factory() if callable(f.default_factory) else f.default
            print(f"  {f.name}={json.dumps(to_plain(default))}")
        return 0
    out = evaluate_family(settings_from_overrides(overrides))
    summary = out / "summary.md"
    if summary.is_file():
        print(f"{summary}")
    return 0


def settings_from_overrides(overrides: Sequence[Any]) -> dict[str, Any]:
    """Parsed ``key=value`` overrides as a mapping; comma sweeps, ``+``/``~`` prefixes and
    dotted keys are refused in one line."""
    from harness.util import to_plain

    data: dict[str, Any] = {}
    for override in overrides:
        if override.is_sweep_override():
            raise UsageError(
                f"{override.input_line!r} is a comma list: `lopt evaluate-family` takes one value "
                "per key (lists are written [a,b])"
            )
        if override.is_delete() or "." in override.key_or_group:
            raise UsageError(f"{override.input_line!r}: write overrides as key=value")
        data[override.key_or_group] = to_plain(override.value())
    return data
