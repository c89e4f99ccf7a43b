"""Which snapshot of a meta-training run to ship (issue 11), and how noisy its ES was.

Trains the run's task for 2,000 steps on the selection seeds 200-204 (not the paper suite's
100-104) with a tuned baseline of the run's objective and with each snapshot of ``--run``
(``--snapshots``; 0 is the theta the run started at: its ``init_from`` checkpoint, or else the
learner's initial theta, written to ``<run>/lopt_step000000.pt``), evaluated on the whole splits
every 100 steps, and prints one row per candidate. The rule is fixed by the objective, before
the suite's seeds are looked at:

* ``train`` (the speed target; baseline: tuned Adam, or ``--baseline``, from the train-loss
  study of tag paper-s2): the seeds that reach the baseline's median final training loss, the
  mean first step at which they do, the median and the maximum final training loss, the median
  over seeds of the largest training loss after step 1,000 (late spikes) and the mean final
  test loss. Ship the snapshot that reaches the target on all seeds in the fewest steps; if
  none does, the one with the lowest median final training loss.
* ``valid`` (the generalisation target; baseline: tuned AdamW with warm-up and cosine decay, or
  ``--baseline``, from the valid-loss study of tag paper): the mean and std over seeds of the
  final validation and test losses and the mean final training loss. Ship the snapshot with the
  lowest mean final validation loss (the test split stays unseen by the choice).

Then, from the run's ``meta_log.csv``, the ES noise per outer step: per element of theta, the
variance of the B-sample mean (``var_es / B``) over the squared element of the estimate
(``grad_norm^2 / P``); about 1 means the estimate is as large as its own noise.

    python results/meta/select_snapshot.py [--run RUN] [--snapshots 0,5,10] [--workers 2]
    python results/meta/select_snapshot.py --run RUN --noise-only  # the ratio only

The objective is the run's (``config.json``). Runs are saved as they finish (``--out``, default
``<run>/selection.csv``); a rerun only reports. Each run takes 10-20 s on one thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from harness.plan import RunPlan, execute
from harness.results.io import read_results
from harness.tuning.tuner import tuned_configuration

#: per objective: the default baseline, the tuning objective and study tag of the paper suite's
#: studies, and the runs' suite name (part of their ids, so a rerun finds the runs saved before)
BASELINES = {"train": "adam", "valid": "adamw_cosine"}
STUDIES = {"train": ("train_loss", "paper-s2"), "valid": ("valid_loss", "paper")}
SUITES = {"train": "select-speed-snapshot", "valid": "select-valid-snapshot"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="results/meta/adam_residual_mnist5k_speed")
    parser.add_argument("--snapshots", default="0,5,10,15,20,25")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument(
        "--baseline", default=None, help="tuned baseline (default: adam for train, adamw_cosine)"
    )
    parser.add_argument("--noise-only", action="store_true", help="print the ES noise ratio only")
    args = parser.parse_args()
    run = Path(args.run)
    if args.noise_only:
        print(es_noise_line(run))
        return
    torch.set_num_threads(1)  # the runs of --workers 1 run here: one thread, as in the suite
    config = json.loads((run / "config.json").read_text())
    objective = config["objective"]
    optimizer = args.baseline or BASELINES[objective]
    tuning_objective, tag = STUDIES[objective]
    task_cfg = {k: v for k, v in config["task_cfg"].items() if k == "train_size"}
    hparams, _ = tuned_configuration(
        task=config["task"],
        optimizer=optimizer,
        objective=tuning_objective,
        budget_steps=2000,
        tag=tag,
        storage="sqlite:///results/paper/optuna.db",
        task_cfg=task_cfg or None,
    )
    candidates = {f"tuned {optimizer}": (optimizer, hparams)}
    for step in (int(s) for s in args.snapshots.split(",")):
        path = run / f"lopt_step{step:06d}.pt"
        if step == 0 and config.get("init_from"):
            path = Path(config["init_from"])
        elif step == 0:
            path = start_snapshot(run, config)
        candidates[f"snapshot {step}"] = ("lopt", {"checkpoint": str(path)})
    plans = [
        RunPlan(
            task=config["task"],
            task_cfg=task_cfg,
            optimizer=name,
            seed=args.first_seed + k,
            suite=SUITES[objective],
            steps=2000,
            hparams=hp,
            eval_every=100,
            log_every=2000,
            tags={"candidate": candidate},
        )
        for candidate, (name, hp) in candidates.items()
        for k in range(args.seeds)
    ]
    out = Path(args.out or run / "selection.csv")
    ids = {plan.run_id() for plan in plans}
    frame = read_results(out) if out.is_file() else None
    if frame is None or not ids <= set(frame.run_id):
        frame = execute(plans, out, progress_bars=False, workers=args.workers)
    frame = frame[frame.run_id.isin(ids)].copy()
    frame["candidate"] = frame.tags.map(lambda t: json.loads(t)["candidate"])
    table = {"train": speed_table, "valid": valid_table}[objective](frame, list(candidates))
    print(table.to_string(float_format=lambda v: f"{v:.4g}"))
    snapshots = table.drop(index=f"tuned {optimizer}")
    print(f"chosen by the rule: {chosen(snapshots, objective, args.seeds)}")
    print(es_noise_line(run))


def chosen(snapshots: pd.DataFrame, objective: str, seeds: int) -> str:
    """The snapshot the rule of ``objective`` ships (see the module docstring), from the table's
    rows of the snapshots run on ``seeds`` seeds."""
    if objective == "valid":
        return str(snapshots["valid loss"].idxmin())
    everywhere = snapshots[snapshots["seeds reaching"] == seeds]
    if len(everywhere):
        return str(everywhere["mean steps to it"].idxmin())
    return str(snapshots["final train median"].idxmin())


def start_snapshot(run: Path, config: dict) -> Path:
    """``<run>/lopt_step000000.pt``: the learner's initial theta as the run drew it (written
    once), for a run (its ``config.json`` as ``config``) that did not start at a checkpoint."""
    from harness.meta.truncation import STREAM_THETA, derive_seed
    from harness.registry import create_learner
    from optimizers.checkpoint import save_lopt_checkpoint

    path = run / "lopt_step000000.pt"
    if not path.is_file():
        learner = create_learner(config["learner"], **config["learner_cfg"])
        theta = learner.init_theta(derive_seed(int(config["seed"]), STREAM_THETA))
        save_lopt_checkpoint(path, theta, learner, {**config, "outer_step": 0})
    return path


def es_noise_line(run: Path) -> str:
    """Per outer step of ``run``, the variance of the B-sample ES mean over the squared estimate,
    per element of theta (``(var_es / B) / (grad_norm^2 / P)``): its range and median."""
    config = json.loads((run / "config.json").read_text())
    log = pd.read_csv(run / "meta_log.csv")
    wide = log.pivot_table(index="outer_step", columns="metric", values="value")
    problems, size = int(config["problems"]), int(theta_size(config))
    ratio = ((wide["var_es"] / problems) / (wide["grad_norm"] ** 2 / size)).dropna()
    return (
        f"ES noise over signal per element, {len(ratio)} outer steps: "
        f"{ratio.min():.2f} .. {ratio.max():.2f}, median {ratio.median():.2f} "
        f"(B = {problems}, P = {size})"
    )


def final_losses(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    """The whole-split loss of ``split`` at each run's last evaluation: candidate, seed, value."""
    rows = frame[(frame.split == split) & (frame.metric == "loss")]
    return rows[rows.step == rows.step.max()][["candidate", "seed", "value"]]


def speed_table(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per candidate of an outer-train run (see the module docstring)."""
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
        rows.append(
            {
                "candidate": name,
                "target": target,
                "seeds reaching": int(np.isfinite(reached).sum()),
                "mean steps to it": np.nanmean(reached) if np.isfinite(reached).any() else np.nan,
                "final train median": last.median(),
                "final train max": last.max(),
                "late max (median)": runs[runs.step > 1000].groupby("seed").value.max().median(),
                "test loss": test[test.candidate == name].value.mean(),
            }
        )
    return pd.DataFrame(rows).set_index("candidate")


def valid_table(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per candidate of an outer-valid run (see the module docstring)."""
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


def theta_size(config: dict) -> int:
    """The number of meta-parameters of the run's learner."""
    from harness.registry import create_learner

    return int(create_learner(config["learner"], **config["learner_cfg"]).num_theta)


if __name__ == "__main__":
    main()
