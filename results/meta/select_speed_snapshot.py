"""Which snapshot of the outer-train curriculum run to ship (issue 11), and how noisy its ES was.

Trains mnist5k_cnn16 for 2,000 steps on the selection seeds 200-204 (not the paper suite's
100-104) with tuned Adam (the train-loss study of tag paper-s2) and with each snapshot of
``--run`` (``--snapshots``; 0 is the checkpoint the run started at, its ``init_from``), evaluated
on the whole splits every 100 steps, and prints per optimizer: the seeds that reach Adam's
median final training loss, the mean first step at which they do, the median and the maximum
final training loss, the median over seeds of the largest training loss after step 1,000 (late
spikes) and the mean final test loss. The rule that chose the shipped snapshot: reach the
target on all seeds, in the fewest steps. Then, from the run's ``meta_log.csv``, the ES noise
per outer step: per element of theta, the variance of the B-sample mean (``var_es / B``) over
the squared element of the estimate (``grad_norm^2 / P``); about 1 means the estimate is as
large as its own noise.

    python results/meta/select_speed_snapshot.py [--workers 2]
    python results/meta/select_speed_snapshot.py --run <run> --noise-only  # the ratio only

Runs are saved as they finish (``--out``, default ``<run>/selection.csv``); a rerun only reports.
About 35 runs of 10-15 s each on one thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.plan import RunPlan, execute
from harness.results.io import read_results
from harness.tuning.tuner import tuned_configuration


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default="results/meta/adam_residual_mnist5k_speed")
    parser.add_argument("--snapshots", default="0,5,10,15,20,25")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=None)
    parser.add_argument("--noise-only", action="store_true", help="print the ES noise ratio only")
    args = parser.parse_args()
    run = Path(args.run)
    if args.noise_only:
        print(es_noise_line(run))
        return
    config = json.loads((run / "config.json").read_text())
    adam, _ = tuned_configuration(
        task="mnist5k_cnn16",
        optimizer="adam",
        objective="train_loss",
        budget_steps=2000,
        tag="paper-s2",
        storage="sqlite:///results/paper/optuna.db",
    )
    candidates = {"tuned adam": ("adam", adam)}
    for step in (int(s) for s in args.snapshots.split(",")):
        path = config["init_from"] if step == 0 else str(run / f"lopt_step{step:06d}.pt")
        candidates[f"snapshot {step}"] = ("lopt", {"checkpoint": path})
    plans = [
        RunPlan(
            task="mnist5k_cnn16",
            optimizer=optimizer,
            seed=args.first_seed + k,
            suite="select-speed-snapshot",
            steps=2000,
            hparams=hparams,
            eval_every=100,
            log_every=2000,
            tags={"candidate": name},
        )
        for name, (optimizer, hparams) in candidates.items()
        for k in range(args.seeds)
    ]
    out = Path(args.out or run / "selection.csv")
    ids = {plan.run_id() for plan in plans}
    frame = read_results(out) if out.is_file() else None
    if frame is None or not ids <= set(frame.run_id):
        frame = execute(plans, out, progress_bars=False, workers=args.workers)
    frame = frame[frame.run_id.isin(ids)].copy()
    frame["candidate"] = frame.tags.map(lambda t: json.loads(t)["candidate"])
    print(selection_table(frame, list(candidates)).to_string(float_format=lambda v: f"{v:.3g}"))
    print(es_noise_line(run))


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


def selection_table(frame: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per candidate (see the module docstring)."""
    train = frame[(frame.split == "train") & (frame.metric == "loss")]
    test = frame[(frame.split == "test") & (frame.metric == "loss")]
    last = int(train.step.max())
    target = float(train[(train.candidate == "tuned adam") & (train.step == last)].value.median())
    rows = []
    for name in order:
        runs = train[train.candidate == name]
        reached = [
            float(run[run.value <= target].step.min()) if (run.value <= target).any() else np.nan
            for _, run in runs.groupby("seed")
        ]
        final = runs[runs.step == last].value
        rows.append(
            {
                "candidate": name,
                "target": target,
                "seeds reaching": int(np.isfinite(reached).sum()),
                "mean steps to it": np.nanmean(reached) if np.isfinite(reached).any() else np.nan,
                "final train median": final.median(),
                "final train max": final.max(),
                "late max (median)": runs[runs.step > 1000].groupby("seed").value.max().median(),
                "test loss": test[(test.candidate == name) & (test.step == last)].value.mean(),
            }
        )
    return pd.DataFrame(rows).set_index("candidate")


def theta_size(config: dict) -> int:
    """The number of meta-parameters of the run's learner."""
    from harness.registry import create_learner

    return int(create_learner(config["learner"], **config["learner_cfg"]).num_theta)


if __name__ == "__main__":
    main()
