"""The paper's comparison: learned optimizers against the best tuned baseline, per objective.

A comparison suite (``report: comparison`` in its file) tags every run with the comparison it
belongs to (``tags.comparison``): ``train`` (baselines tuned on the training loss, against the
learned optimizer meta-trained on the training loss) or ``valid`` (tuned on, and meta-trained
on, the validation loss). A run is *learned* when its optimizer is a
:class:`~optimizers.learned.LearnedOptimizer`; every other run is a *baseline*.

For each comparison and task, the *best baseline* is the baseline with the lowest mean final
loss on the comparison's split (``train`` or ``valid``, whole-split evaluations). Then:

* ``speedup_vs_best_baseline``: the best baseline's mean timed seconds to reach its own mean
  final loss, divided by this optimizer's mean timed seconds to reach that loss (first
  evaluation at or below it; the mean over the seeds that reach it, ``fraction_reached`` says
  how many). NaN when the optimizer never reaches it. ``speedup_steps``: the same in steps.
* Final (and best) train/valid/test losses and the test accuracy, mean and std over seeds.
* ``transfer_from``: for a learned optimizer run on a task it was not meta-trained on (the
  run's ``transfer`` tag), that task; its table rows and verdicts say so.

The two targets of the paper, checked and stated with their numbers in ``summary.md``:

* speed: in the ``train`` comparison the learned optimizer's speedup is at least 1.5 (this
  project's target: it reaches the best tuned baseline's final train loss in at most 1/1.5 of
  that baseline's wall-clock, its own overhead included; the paper reports about 5);
* generalisation: in the ``valid`` comparison the learned optimizer's mean final test loss is
  below every baseline's by more than the larger of the two seed standard deviations.

:func:`build_comparison_report` writes ``summary.csv`` (one row per comparison, task and
optimizer), ``summary.md``, the performance profiles over the workloads
(:mod:`harness.results.profiles`: ``profiles.png``, ``profiles.csv``,
``time_to_workload_target.csv``), the cost of tuning (:mod:`harness.results.tuning_cost`, from
the stored studies: ``tuning_cost.png``, ``tuning_cost.csv``, ``tuning_cost_match.csv``), and
the standard report (:func:`harness.results.report.build_report`, curves included) of each
comparison into a subfolder named after it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from harness.errors import UsageError
from harness.registry import OPTIMIZERS
from harness.results.derived import final_and_best, seed_summary, speedup
from harness.results.members import split_members
from harness.results.report import (
    build_report,
    mean_std_text,
    not_reproduced,
    not_reproduced_section,
    provenance_line,
    tuning_section,
)
from harness.util import markdown_table, write_atomically, write_text_atomically

#: The comparisons, each named after the split its optimizers are tuned and meta-trained on
#: (and on whose loss it compares them).
COMPARISONS = ("train", "valid")
SPEED_TARGET = 1.5
SUMMARY_FILE = "summary.csv"
# summary.csv's per-split columns: <split>_<metric>_<suffix> (final = at the last evaluation,
# best = the best over the run's evaluations; mean and std over seeds)
STAT_SUFFIXES = {
    "final_value_mean": "mean",
    "final_value_std": "std",
    "best_value_mean": "best_mean",
    "best_value_std": "best_std",
}
MARKDOWN_FILE = "summary.md"


def tag_of(tags: str, key: str) -> str:
    """The ``key`` tag of a run's ``tags`` JSON (``""`` if none)."""
    try:
        data = json.loads(tags) if isinstance(tags, str) and tags else {}
    except ValueError:
        return ""
    return str(data.get(key, "")) if isinstance(data, dict) else ""


def comparison_of(tags: str) -> str:
    """The ``comparison`` tag of a run's ``tags`` JSON (``""`` if none)."""
    return tag_of(tags, "comparison")


def is_learned(optimizer: str) -> bool:
    """Whether ``optimizer`` is a learned optimizer (served by ``optimizers.learned``)."""
    from optimizers.learned import LearnedOptimizer

    try:
        factory = OPTIMIZERS.get(optimizer).factory
    except UsageError:
        return optimizer.startswith("lopt")
    return isinstance(factory, type) and issubclass(factory, LearnedOptimizer)


def split_comparisons(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The rows of each comparison; ``UsageError`` for a run without a known comparison tag."""
    labels = frame["tags"].map(comparison_of)
    unknown = sorted(set(labels) - set(COMPARISONS))
    if unknown:
        raise UsageError(
            f"runs tagged with comparison {unknown[0]!r}: a comparison report needs every run "
            f"tagged comparison: {' or '.join(COMPARISONS)} (tags in the suite file)"
        )
    return {name: frame[labels == name] for name in sorted(set(labels))}


def best_baselines(runs: pd.DataFrame, split: str) -> dict[str, str]:
    """Per task, the baseline with the lowest mean final ``split`` loss.

    ``runs``: :func:`~harness.results.derived.final_and_best` of the comparison's rows."""
    finals = runs[(runs["split"] == split) & (runs["metric"] == "loss")]
    finals = finals[~finals["optimizer"].map(is_learned)]
    best = {}
    for task, rows in finals.groupby("task", sort=True):
        means = rows.groupby("optimizer")["final_value"].mean()
        if means.dropna().empty:
            raise UsageError(f"task {task!r} has no baseline with a finite final {split} loss")
        best[str(task)] = str(means.dropna().idxmin())
    for task in sorted(set(runs["task"]) - set(best)):
        raise UsageError(f"task {task!r} has no baseline runs to compare against")
    return best


def comparison_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per comparison, task and optimizer (see the module docstring)."""
    rows = []
    for comparison, sub in split_comparisons(frame).items():
        split = comparison
        runs = final_and_best(sub)
        best = best_baselines(runs, split)
        finals = seed_summary(runs, ("final_value", "best_value"))
        speeds = pd.concat(
            [speedup(sub[sub["task"] == task], ref, split=split) for task, ref in best.items()]
        )
        for (task, optimizer), speed in speeds.groupby(["task", "optimizer"], sort=True):
            speed = speed.iloc[0]
            tags = sub[(sub["task"] == task) & (sub["optimizer"] == optimizer)]["tags"].iloc[0]
            row = {
                "comparison": comparison,
                "task": task,
                "optimizer": optimizer,
                "role": "learned" if is_learned(optimizer) else "baseline",
                # the task a learned optimizer was meta-trained on, when not this one
                "transfer_from": tag_of(tags, "transfer"),
                "best_baseline": best[task],
                "target_split": split,
                "target_loss": speed["target"],
                "speedup_vs_best_baseline": speed["speedup_seconds"],
                "speedup_steps": speed["speedup_steps"],
                "seconds_to_target": speed["mean_seconds_to_target"],
                "steps_to_target": speed["mean_steps_to_target"],
                "fraction_reached": speed["fraction_reached"],
                "n_seeds": int(speed["n_seeds"]),
            }
            mine = finals[(finals["task"] == task) & (finals["optimizer"] == optimizer)]
            for (split_name, metric), values in mine.groupby(["split", "metric"]):
                for stat, kind in STAT_SUFFIXES.items():
                    row[f"{split_name}_{metric}_{kind}"] = float(values[stat].iloc[0])
            rows.append(row)
    table = pd.DataFrame(rows)
    kept = not_reproduced(frame)
    if kept:  # a suite kept these tasks' rows from an earlier run (harness.suite)
        table["not_reproduced"] = table["task"].map(
            lambda t: f"kept from {kept[t]}" if t in kept else ""
        )
    leading = [
        "comparison",
        "task",
        "optimizer",
        "role",
        "speedup_vs_best_baseline",
        "test_loss_mean",
        "test_loss_std",
    ]
    return table[leading + [c for c in table.columns if c not in leading]]


def transfer_text(row: Mapping) -> str:
    """``", transfer from TASK"`` for a learned optimizer run on a task it was not meta-trained
    on (the run's ``transfer`` tag), else ``""``."""
    source = row.get("transfer_from")
    return f", transfer from {source}" if isinstance(source, str) and source else ""


def verdicts(summary: pd.DataFrame) -> list[str]:
    """One line per learned optimizer and target, saying whether it is met, with the numbers."""
    lines = []
    for _, row in summary[summary["role"] == "learned"].iterrows():
        where = f"{row['task']}, {row['optimizer']}" + transfer_text(row)
        if isinstance(row.get("not_reproduced"), str) and row["not_reproduced"]:
            where += ", NOT rerun: kept from an earlier run"
        if row["comparison"] == "train":
            value = row["speedup_vs_best_baseline"]
            met = bool(value >= SPEED_TARGET) if not math.isnan(value) else False
            shown = f"{value:.2f}x" if not math.isnan(value) else "never reached"
            lines.append(
                f"Speed ({where}): {'met' if met else 'NOT met'}: reaching the best tuned "
                f"baseline's ({row['best_baseline']}) final train loss {row['target_loss']:.4g}: "
                f"{shown} against the target of {SPEED_TARGET:g}x."
            )
        else:
            others = summary[
                (summary["comparison"] == "valid")
                & (summary["task"] == row["task"])
                & (summary["role"] == "baseline")
            ]
            margins = [
                (
                    other["optimizer"],
                    other["test_loss_mean"] - row["test_loss_mean"],
                    max(row["test_loss_std"], other["test_loss_std"]),
                )
                for _, other in others.iterrows()
            ]
            met = all(margin > spread for _, margin, spread in margins)
            losing = [m for m in margins if m[1] <= 0]
            worst = (
                min(losing, key=lambda m: m[1])
                if losing
                else min(margins, key=lambda m: m[1] - m[2])
            )
            name, margin, spread = worst
            relation = (
                f"its test loss is {margin:.4g} below that of {name}, the hardest baseline to beat "
                f"(needs more than {spread:.2g})"
                if margin > 0
                else f"{name}'s mean test loss is {-margin:.4g} lower"
            )
            lines.append(
                f"Generalisation ({where}): {'met' if met else 'NOT met'}: mean test loss "
                f"{mean_std_text(row['test_loss_mean'], row['test_loss_std'])}; {relation}."
            )
    return lines


def build_comparison_report(
    frame: pd.DataFrame,
    out_dir: str | Path,
    skipped: Mapping[str, str] | None = None,
    storage: str | Sequence[str] | None = None,
) -> list[Path]:
    """Write the comparison report into ``out_dir`` (see the module docstring).

    ``skipped``: tasks the suite could not run, with the reason; they and the rows it kept from
    an earlier run (``summary.csv``'s ``not_reproduced`` column, present only then) are listed
    at the top of ``summary.md``. ``storage``: the Optuna storage of the tuned runs' studies, or
    several (a study is read from the first that has it; a report spanning suites has one per
    suite), default ``out_dir/optuna.db`` when it exists; without one the tuning cost is left
    out."""
    out_dir = Path(out_dir)
    written, sections = extra_sections(split_comparisons(frame), out_dir, storage)
    # Beyond the profiles (which count a family sample as one workload), each member of a
    # family sample is a task of its own: its seeds are not pooled with other members'.
    frame, _ = split_members(frame)
    comparisons = split_comparisons(frame)
    summary = comparison_summary(frame)
    for comparison, sub in comparisons.items():
        rows = summary[summary["comparison"] == comparison]
        best = dict(zip(rows["task"], rows["best_baseline"], strict=True))
        written += build_report(
            sub,
            out_dir / comparison,
            reference=best,
            target_split=comparison,
            skipped=skipped,
        )
    written.append(
        write_atomically(out_dir / SUMMARY_FILE, lambda tmp: summary.to_csv(tmp, index=False))
    )
    text = summary_markdown(frame, summary, comparisons, skipped or {}, sections)
    written.append(write_text_atomically(out_dir / MARKDOWN_FILE, text))
    return written


def is_baseline(optimizer: str) -> bool:
    """Whether ``optimizer`` is a hand-designed baseline (not a learned optimizer)."""
    return not is_learned(optimizer)


def extra_sections(
    comparisons: dict[str, pd.DataFrame], out_dir: Path, storage: str | Sequence[str] | None
) -> tuple[list[Path], list[str]]:
    """Write the performance profiles and the tuning cost (see the module docstring) into
    ``out_dir``; returns the files written and their markdown sections."""
    from harness.results.profiles import comparison_profiles, plot_profiles, profile_markdown
    from harness.results.tuning_cost import (
        plot_tuning_cost,
        tuning_cost,
        tuning_cost_markdown,
    )

    times, profile = comparison_profiles(comparisons, is_baseline)
    written = [
        write_atomically(
            out_dir / "time_to_workload_target.csv", lambda tmp: times.to_csv(tmp, index=False)
        ),
        write_atomically(out_dir / "profiles.csv", lambda tmp: profile.to_csv(tmp, index=False)),
        plot_profiles(times, out_dir / "profiles.png"),
    ]
    lines = profile_markdown(times, profile)
    if storage is None and (out_dir / "optuna.db").is_file():
        storage = f"sqlite:///{out_dir / 'optuna.db'}"
    if storage is None:
        return written, [*lines, "## Tuning cost", "", "No tuning storage given.", ""]
    per_member = {name: split_members(rows)[0] for name, rows in comparisons.items()}
    curves, matches = tuning_cost(per_member, storage, is_baseline)
    written += [
        write_atomically(out_dir / "tuning_cost.csv", lambda tmp: curves.to_csv(tmp, index=False)),
        write_atomically(
            out_dir / "tuning_cost_match.csv", lambda tmp: matches.to_csv(tmp, index=False)
        ),
    ]
    if not curves.empty:
        written.append(plot_tuning_cost(curves, matches, out_dir / "tuning_cost.png"))
    return written, lines + tuning_cost_markdown(curves, matches)


def summary_markdown(
    frame: pd.DataFrame,
    summary: pd.DataFrame,
    comparisons: dict[str, pd.DataFrame],
    skipped: Mapping[str, str] | None = None,
    sections: list[str] | None = None,
) -> str:
    lines = ["# Learned optimizers against tuned baselines", ""]
    lines += [f"Provenance: {provenance_line(frame)}", ""]
    lines += not_reproduced_section(frame, skipped or {})
    kept = not_reproduced(frame)
    lines += ["## Targets (speed: at least 1.5x, this project's; the paper reports about 5x)", ""]
    lines += [f"- {line}" for line in verdicts(summary)] or ["- no learned optimizer in the runs"]
    lines.append("")
    lines += sections or []
    lines += tuning_section(frame)
    header = [
        "optimizer",
        "seeds",
        "train loss",
        "valid loss",
        "test loss",
        "best train loss",
        "best valid loss",
        "best test loss",
        "test accuracy",
        "reached",
        "steps to target",
        "seconds to target",
        "speedup",
    ]
    for comparison in comparisons:
        split = comparison
        for task, rows in summary[summary["comparison"] == comparison].groupby("task"):
            best = rows["best_baseline"].iloc[0]
            target = rows["target_loss"].iloc[0]
            lines += [
                f"## {task}: tuned and meta-trained on the {split} loss"
                + (" (NOT rerun: kept from an earlier run)" if task in kept else ""),
                "",
                f"Target: the best tuned baseline ({best})'s mean final {split} loss, "
                f"{target:.4g}. Losses: final (at the last evaluation) and best over the "
                "run's evaluations, mean ± std over seeds, whole-split evaluations. Speedup: "
                "the best baseline's mean timed seconds to reach the target over this row's.",
                "",
            ]
            body = []
            for _, row in rows.sort_values(["role", "optimizer"]).iterrows():
                name = row["optimizer"] + (
                    f" (learned{transfer_text(row)})" if row["role"] == "learned" else ""
                )
                body.append(
                    [
                        name,
                        str(row["n_seeds"]),
                        *(
                            mean_std_text(
                                row.get(f"{s}_loss_mean", math.nan),
                                row.get(f"{s}_loss_std", math.nan),
                            )
                            for s in ("train", "valid", "test")
                        ),
                        *(
                            mean_std_text(
                                row.get(f"{s}_loss_best_mean", math.nan),
                                row.get(f"{s}_loss_best_std", math.nan),
                            )
                            for s in ("train", "valid", "test")
                        ),
                        mean_std_text(
                            row.get("test_accuracy_mean", math.nan),
                            row.get("test_accuracy_std", math.nan),
                        ),
                        f"{row['fraction_reached']:.0%}",
                        _maybe(row["steps_to_target"], "{:.0f}"),
                        _maybe(row["seconds_to_target"], "{:.3g}"),
                        _maybe(row["speedup_vs_best_baseline"], "{:.2f}x"),
                    ]
                )
            lines += [markdown_table(header, body, ["left"] + ["right"] * (len(header) - 1)), ""]
            lines += [f"Curves and tables: [{comparison}/summary.md]({comparison}/summary.md)", ""]
    return "\n".join(lines)


def _maybe(value: float, fmt: str) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else (fmt.format(value))
    )
