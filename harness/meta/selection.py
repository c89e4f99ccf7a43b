"""``lopt select-snapshot``: which snapshot of a meta-training run to ship, and how noisy its
ES was.

Trains the run's task (``config.json``) for ``steps`` steps on the selection seeds (default
200-204, not the paper suite's 100-104) with a tuned baseline of the run's objective and with
each snapshot of the run (``snapshots``; 0 is the theta the run started at: its ``init_from``
checkpoint, or else the learner's initial theta, written once to
``RUN/lopt_step000000.safetensors``), evaluated on the whole splits every ``eval_every`` steps,
and prints one row per candidate. The rule is fixed by the objective, before the suite's seeds
are looked at:

* ``train`` (the speed target; baseline: tuned ``adam`` from the train-loss study of tag
  ``paper-s2``): the seeds that reach the baseline's median final training loss, the mean first
  step at which they do, the median and the maximum final training loss, the median over seeds
  of the largest training loss after the run's middle (late spikes) and the mean final test
  loss. The snapshot that reaches the target on all seeds in the fewest steps is chosen; if
  none does, the one with the lowest median final training loss.
* ``valid`` (the generalisation target; baseline: tuned ``adamw_cosine`` from the valid-loss
  study of tag ``paper``): the mean and std over seeds of the final validation and test losses
  and the mean final training loss. The snapshot with the lowest mean final validation loss is
  chosen (the test split stays unseen by the choice).

Then, from the run's ``meta_log.csv``, the ES noise per outer step: per element of theta, the
variance of the B-sample mean (``var_es / B``) over the squared element of the estimate
(``grad_norm^2 / P``); about 1 means the estimate is as large as its own noise.

The candidates' runs are saved as they finish (``out``, default ``RUN/selection.csv``, the
tidy schema), so an interrupted selection resumes and a rerun only reports. Per-step snapshots
are not kept in ``results/``: a snapshot that is neither on disk nor among the saved runs is a
one-line ``UsageError`` that prints the run's own meta-training command, which writes one every
outer step (``checkpoint_every=1``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import UsageError
from harness.settings.select import SelectSnapshotConfig, coerce_select_config

#: per objective: the default baseline, the tuning objective and study tag of the paper suite's
#: studies, and the runs' suite name (part of their ids, so a rerun finds the runs saved before)
BASELINES = {"train": "adam", "valid": "adamw_cosine"}
STUDIES = {"train": ("train_loss", "paper-s2"), "valid": ("valid_loss", "paper")}
SUITES = {"train": "select-speed-snapshot", "valid": "select-valid-snapshot"}


def select_snapshot_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    """The ``lopt select-snapshot`` entry of :mod:`harness.cli`: ``key=value`` overrides of
    :class:`~harness.settings.select.SelectSnapshotConfig`; prints the report."""
    import dataclasses

    import torch

    from harness.overrides import parse_overrides
    from harness.util import to_plain

    if show_help:
        print((__doc__ or "").strip())
        print("\n`lopt select-snapshot` keys and their defaults:\n")
        for item in dataclasses.fields(SelectSnapshotConfig):
            default = SelectSnapshotConfig.__dataclass_fields__[item.name]
            value = default.default_factory() if callable(default.default_factory) else item.default
            print(f"{item.name}: {_value(value)}")
        return 0
    if multirun:
        raise UsageError("-m (multirun) is supported by `lopt bench`, not by select-snapshot")
    data: dict[str, Any] = {}
    for override in parse_overrides(list(overrides)):
        if override.is_sweep_override() or override.is_add() or override.is_delete():
            raise UsageError(
                f"{override.input_line!r}: write one key=value per setting (lists as [a,b])"
            )
        data[override.key_or_group] = to_plain(override.value())
    cfg = coerce_select_config(data)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # runs of workers=1 run here: one thread, as in the suite
    try:
        print(select_snapshot(cfg))
    finally:
        torch.set_num_threads(previous)
    return 0


def select_snapshot(cfg: SelectSnapshotConfig | Any = None, **overrides: Any) -> str:
    """Run (or read back) the candidates and return the report printed by the command: the
    table, the chosen snapshot and the ES noise line."""
    from harness.results.io import read_results

    cfg = coerce_select_config(cfg, **overrides)
    run = Path(cfg.run)
    config = read_config(run)
    if cfg.noise_only:
        return es_noise_line(run, config)
    objective = str(config["objective"])
    baseline = cfg.baseline or BASELINES[objective]
    task_cfg = {k: v for k, v in config.get("task_cfg", {}).items() if k == "train_size"}
    out = Path(cfg.out) if cfg.out else run / "selection.csv"
    saved = read_results(out) if out.is_file() else None
    saved_checkpoints = _checkpoints(saved)
    candidates: dict[str, tuple[str, dict[str, Any]]] = {
        f"tuned {baseline}": (baseline, baseline_hparams(cfg, config, baseline, task_cfg))
    }
    for step in cfg.snapshots:
        path = candidate_checkpoint(run, step, config, saved_checkpoints)
        candidates[f"snapshot {step}"] = ("lopt", {"checkpoint": path})
    frame = saved_runs(saved, candidates, cfg)
    if frame is None:
        frame = run_candidates(candidates, cfg, config, objective, task_cfg, out)
    tables = {"train": speed_table, "valid": valid_table}
    table = tables[objective](frame, list(candidates), late_after=cfg.steps // 2)
    snapshots = table.drop(index=f"tuned {baseline}")
    return "\n".join(
        [
            table.to_string(float_format=lambda v: f"{v:.4g}"),
            f"chosen by the rule: {chosen(snapshots, objective, cfg.seeds)}",
            es_noise_line(run, config),
        ]
    )


def saved_runs(
    saved: pd.DataFrame | None,
    candidates: dict[str, tuple[str, dict[str, Any]]],
    cfg: SelectSnapshotConfig,
) -> pd.DataFrame | None:
    """The saved rows of every candidate on every selection seed (with a ``candidate``
    column), or None when one is missing: a rerun reports from them without building the
    candidates (whose snapshots may be gone)."""
    if saved is None or saved.empty:
        return None
    frame = saved.copy()
    frame["candidate"] = frame.tags.map(lambda t: json.loads(t).get("candidate"))
    seeds = set(range(cfg.first_seed, cfg.first_seed + cfg.seeds))
    parts = []
    for candidate, (name, hparams) in candidates.items():
        rows = frame[
            (frame.candidate == candidate)
            & (frame.optimizer == name)
            & frame.seed.isin(seeds)
            & (frame.budget_steps == cfg.steps)
            & (frame.status == "completed")
        ]
        wanted = dict(hparams)
        stored = rows.hparams.map(json.loads)
        rows = rows[stored.map(lambda h, w=wanted: all(h.get(k) == v for k, v in w.items()))]
        if set(rows.seed) != seeds:
            return None
        parts.append(rows)
    return pd.concat(parts, ignore_index=True)


def run_candidates(
    candidates: dict[str, tuple[str, dict[str, Any]]],
    cfg: SelectSnapshotConfig,
    config: dict[str, Any],
    objective: str,
    task_cfg: dict[str, Any],
    out: Path,
) -> pd.DataFrame:
    """Run every candidate on the selection seeds (those already in ``out`` are not run
    again; each run is saved as it finishes); returns their rows with a ``candidate`` column."""
    from harness.plan import RunPlan, execute

    plans = [
        RunPlan(
            task=str(config["task"]),
            task_cfg=task_cfg,
            optimizer=name,
            seed=cfg.first_seed + k,
            suite=SUITES[objective],
            steps=cfg.steps,
            hparams=hparams,
            eval_every=cfg.eval_every,
            log_every=cfg.steps,
            tags={"candidate": candidate},
        )
        for candidate, (name, hparams) in candidates.items()
        for k in range(cfg.seeds)
    ]
    ids = {plan.run_id() for plan in plans}
    frame = execute(plans, out, workers=cfg.workers)
    frame = frame[frame.run_id.isin(ids)].copy()
    frame["candidate"] = frame.tags.map(lambda t: json.loads(t)["candidate"])
    return frame


def read_config(run: Path) -> dict[str, Any]:
    """The run's ``config.json``; a one-line ``UsageError`` when ``run`` is not a run folder."""
    path = run / "config.json"
    if not path.is_file():
        raise UsageError(
            f"run={str(run)!r} is not a meta-training run: it has no config.json (give the "
            "out folder of a `lopt meta-train` run)"
        )
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise UsageError(f"{str(path)!r} is not valid JSON ({exc.__class__.__name__})") from exc
    if not isinstance(config, dict) or config.get("objective") not in BASELINES:
        raise UsageError(f"{str(path)!r} has no objective train or valid: not a run's config")
    return config


def baseline_hparams(
    cfg: SelectSnapshotConfig, config: dict[str, Any], baseline: str, task_cfg: dict[str, Any]
) -> dict[str, Any]:
    """The baseline's hyperparameters: its tuned study's (``tuned``), else none (defaults)."""
    if not cfg.tuned:
        return {}
    from harness.tuning.tuner import tuned_configuration

    objective, tag = STUDIES[str(config["objective"])]
    hparams, _ = tuned_configuration(
        task=str(config["task"]),
        optimizer=baseline,
        objective=objective,
        budget_steps=cfg.steps,
        tag=tag,
        storage=cfg.storage,
        task_cfg=task_cfg or None,
    )
    return dict(hparams)


def candidate_checkpoint(run: Path, step: int, config: dict[str, Any], saved: set[str]) -> str:
    """The checkpoint string of snapshot ``step``: a file on disk (``.safetensors``, or the
    ``.pt`` of runs written before), else the name the saved runs used (a rerun then reports
    without the files), else, for step 0 of a run that started at its learner's initial theta,
    that theta written once; otherwise a one-line ``UsageError`` saying how to recreate it."""
    from harness.meta.trainer import snapshot_name

    if step == 0 and config.get("init_from"):
        names = [str(config["init_from"])]
    else:
        stem = run / snapshot_name(step)
        names = [str(stem), str(stem.with_suffix(".pt"))]
    for name in names:
        if _on_disk(Path(name)):
            return name
    for name in names:
        if name in saved:
            return name
    if step == 0 and not config.get("init_from"):
        return str(start_snapshot(run, config))
    if step == 0:
        raise UsageError(
            f"the run started at {names[0]!r}, which does not exist: per-step snapshots are not "
            "kept in results/; rerun the earlier stage's `lopt meta-train` command (its folder's "
            "config.json) with checkpoint_every=1 to recreate it"
        )
    raise UsageError(
        f"snapshot {names[0]!r} does not exist: per-step snapshots are not kept in results/; "
        f"recreate them with the run's own command, which writes one every outer step: "
        f"{meta_train_command(config, run)}"
    )


def _on_disk(path: Path) -> bool:
    return path.is_file() or (path.suffix == ".pt" and path.with_suffix(".safetensors").is_file())


def _checkpoints(frame: pd.DataFrame | None) -> set[str]:
    """The ``checkpoint`` hyperparameters of the saved runs."""
    if frame is None:
        return set()
    found = set()
    for text in frame.hparams.unique():
        value = json.loads(text).get("checkpoint") if text else None
        if value:
            found.add(str(value))
    return found


def meta_train_command(config: dict[str, Any], run: Path) -> str:
    """The ``lopt meta-train`` command that redoes the run of ``config`` into ``run`` with a
    snapshot every outer step (the settings that differ from the defaults, task and learner
    settings as ``task.K=V`` and ``+learner_cfg.K=V``)."""
    from harness.settings.meta import MetaTrainConfig

    defaults = MetaTrainConfig().to_dict()
    wanted = {**config, "checkpoint_every": 1, "out": str(run)}
    parts = ["lopt meta-train", f"task={wanted.pop('task')}"]
    for key, value in sorted(wanted.pop("task_cfg", {}).items()):
        parts.append(f"task.{key}={_value(value)}")
    learner_cfg = wanted.pop("learner_cfg", {})
    parts.append(f"learner={wanted.pop('learner', defaults.get('learner'))}")
    for key, value in sorted(learner_cfg.items()):
        parts.append(f"+learner_cfg.{key}={_value(value)}")
    for key, value in wanted.items():
        if key in defaults and key not in ("task", "learner") and defaults[key] != value:
            parts.append(f"{key}={_value(value)}")
    return " ".join(parts)


def _value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_value(v) for v in value) + "]"
    return str(value)


def start_snapshot(run: Path, config: dict[str, Any]) -> Path:
    """``RUN/lopt_step000000.safetensors``: the learner's initial theta as the run drew it
    (written once), for a run that did not start at a checkpoint."""
    from harness.meta.trainer import snapshot_name
    from harness.meta.truncation import STREAM_THETA, derive_seed
    from harness.resolve import build_learner
    from optimizers.checkpoint import save_lopt_checkpoint

    path = run / snapshot_name(0)
    if not path.is_file():
        learner = build_learner(str(config["learner"]), dict(config.get("learner_cfg", {})))
        theta = learner.init_theta(derive_seed(int(config["seed"]), STREAM_THETA))
        save_lopt_checkpoint(path, theta, learner, {**config, "outer_step": 0})
    return path


def es_noise_line(run: Path, config: dict[str, Any]) -> str:
    """Per outer step of ``run``, the variance of the B-sample ES mean over the squared estimate,
    per element of theta (``(var_es / B) / (grad_norm^2 / P)``): its range and median."""
    from harness.resolve import build_learner

    log_path = run / "meta_log.csv"
    if not log_path.is_file():
        raise UsageError(f"{str(log_path)!r} does not exist: not a meta-training run's folder")
    log = pd.read_csv(log_path)
    wide = log.pivot_table(index="outer_step", columns="metric", values="value")
    if "var_es" not in wide or "grad_norm" not in wide:
        return "ES noise over signal: the run's log has no var_es (not an ES run)"
    problems = int(config["problems"])
    size = int(build_learner(str(config["learner"]), dict(config.get("learner_cfg", {}))).num_theta)
    ratio = ((wide["var_es"] / problems) / (wide["grad_norm"] ** 2 / size)).dropna()
    return (
        f"ES noise over signal per element, {len(ratio)} outer steps: "
        f"{ratio.min():.2f} .. {ratio.max():.2f}, median {ratio.median():.2f} "
        f"(B = {problems}, P = {size})"
    )


def chosen(snapshots: pd.DataFrame, objective: str, seeds: int) -> str:
    """The snapshot the rule of ``objective`` ships (see the module docstring), from the
    table's rows of the snapshots run on ``seeds`` seeds."""
    if objective == "valid":
        return str(snapshots["valid loss"].idxmin())
    everywhere = snapshots[snapshots["seeds reaching"] == seeds]
    if len(everywhere):
        return str(everywhere["mean steps to it"].idxmin())
    return str(snapshots["final train median"].idxmin())


def final_losses(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    """The whole-split loss of ``split`` at each run's last evaluation: candidate, seed, value."""
    rows = frame[(frame.split == split) & (frame.metric == "loss")]
    return rows[rows.step == rows.step.max()][["candidate", "seed", "value"]]


def speed_table(frame: pd.DataFrame, order: list[str], late_after: int = 1000) -> pd.DataFrame:
    """One row per candidate of an outer-train run (see the module docstring); the first row
    is the baseline, whose median final training loss is the target."""
    train = frame[(frame.split == "train") & (frame.metric == "loss")]
    final, test = final_losses(frame, "train"), final_losses(frame, "test")
    target = float(final[final.candidate == order[0]].value.median())
    rows = []
    for name in order:
        runs = train[train.candidate == name]
        reached = [
            float(run[run.value <= target].step.min()) if (run.value <= target).any() else np.nan
            for _, run in runs.groupby("seed")
        ]
        last = final[final.candidate == name].value
        late = runs[runs.step > late_after].groupby("seed").value.max().median()
        rows.append(
            {
                "candidate": name,
                "target": target,
                "seeds reaching": int(np.isfinite(reached).sum()),
                "mean steps to it": np.nanmean(reached) if np.isfinite(reached).any() else np.nan,
                "final train median": last.median(),
                "final train max": last.max(),
                "late max (median)": late,
                "test loss": test[test.candidate == name].value.mean(),
            }
        )
    return pd.DataFrame(rows).set_index("candidate")


def valid_table(frame: pd.DataFrame, order: list[str], late_after: int = 1000) -> pd.DataFrame:
    """One row per candidate of an outer-valid run (see the module docstring)."""
    del late_after  # the same signature as speed_table
    finals = {split: final_losses(frame, split) for split in ("train", "valid", "test")}
    rows = []
    for name in order:
        valid, test = (finals[s][finals[s].candidate == name].value for s in ("valid", "test"))
        rows.append(
            {
                "candidate": name,
                "valid loss": valid.mean(),
                "valid std": valid.std(),
                "test loss": test.mean(),
                "test std": test.std(),
                "train loss": finals["train"][finals["train"].candidate == name].value.mean(),
            }
        )
    return pd.DataFrame(rows).set_index("candidate")
