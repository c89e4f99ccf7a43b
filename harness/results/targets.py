"""The targets :data:`tasks.base.TARGET_RULE` derives from a comparison's results, beside the
tasks' declared ones (how the paper tasks' targets were set, and how to check them)::

    python -m harness.results.targets results/paper/results.csv
"""

from __future__ import annotations

import argparse
import math

import pandas as pd

from harness.registry import TASKS
from harness.results.comparison import is_baseline, split_comparisons
from harness.results.derived import final_and_best
from harness.results.io import read_results
from harness.results.profiles import derive_target


def derived_targets(frame: pd.DataFrame) -> pd.DataFrame:
    """Per comparison and task of a comparison's results: the target :func:`derive_target`
    gives and the task's declared one (NaN if none)."""
    rows = []
    for comparison, sub in split_comparisons(frame).items():
        for task, runs in final_and_best(sub).groupby("task", sort=True):
            declared = TASKS.get(str(task)).factory.target_for(comparison)
            rows.append(
                {
                    "comparison": comparison,
                    "task": task,
                    "derived": derive_target(runs, comparison, is_baseline),
                    "declared": math.nan if declared is None else declared.value,
                }
            )
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    """``python -m harness.results.targets RESULTS.csv``: the targets the rule derives from a
    comparison's results, beside the tasks' declared ones."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", help="a comparison suite's results.csv")
    args = parser.parse_args(argv)
    print(derived_targets(read_results(args.results)).to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
