"""``lopt select-snapshot`` (harness.meta.selection) on a tiny quadratic run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.cli import main
from harness.errors import UsageError
from harness.meta import meta_train
from harness.meta.selection import chosen, select_snapshot, speed_table

RUN = {
    "task": "quadratic",
    "estimator": "es",
    "problems": 2,
    "horizon": 40,
    "unroll_length": 10,
    "schedule": "constant",
    "parallel": "loop",
    "threads": 1,
    "progress": False,
    "eval_every": 0,
    "checkpoint_every": 1,
}
TINY = {"seeds": 2, "steps": 40, "eval_every": 10, "tuned": False, "workers": 1}


def test_selection_runs_the_snapshots_reports_from_its_table_and_says_how_to_recreate_them(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    meta_train(**RUN, outer_steps=2, out=str(run))
    report = select_snapshot(run=str(run), snapshots=[0, 1, 2], **TINY)
    lines = report.splitlines()
    assert lines[0].split()[:2] == ["target", "seeds"]  # the speed table of a train run
    assert [line.split()[0:2] for line in lines[2:6]] == [
        ["tuned", "adam"],
        ["snapshot", "0"],
        ["snapshot", "1"],
        ["snapshot", "2"],
    ]
    assert lines[-2].startswith("chosen by the rule: snapshot ")
    assert lines[-1].startswith("ES noise over signal per element, 2 outer steps")
    saved = pd.read_csv(run / "selection.csv")
    assert saved.run_id.nunique() == 4 * 2 and set(saved.seed) == {200, 201}
    assert (run / "lopt_step000000.safetensors").is_file()  # the start, written once
    # the snapshots are gone (as in results/): a rerun reports from the saved runs alone
    for path in run.glob("lopt_step*.safetensors"):
        path.unlink()
    assert select_snapshot(run=str(run), snapshots=[0, 1, 2], **TINY) == report
    # without them and without the saved runs it says how to recreate them, in one line
    (run / "selection.csv").unlink()
    with pytest.raises(UsageError) as info:
        select_snapshot(run=str(run), snapshots=[1], **TINY)
    message = str(info.value)
    assert "\n" not in message and "lopt_step000001.safetensors' does not exist" in message
    assert "lopt meta-train task=quadratic" in message and "checkpoint_every=1" in message
    assert f"out={run}" in message and "estimator=es" in message


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "needs run=DIR"),
        (["run=RUN", "snapshots=[1,1]"], "must not repeat"),
        (["run=RUN", "snapshots=[-1]"], "snapshots must be an integer >= 0"),
        (["run=RUN", "seeds=0"], "seeds must be >= 1"),
        (["run=RUN", "bogus=1"], "takes no option 'bogus'"),
        (["run=RUN", "seeds=1,2"], "one key=value"),
        (["run=NOWHERE"], "not a meta-training run"),
    ],
)
def test_bad_settings_are_one_line_errors_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], fragment: str
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text('{"objective": "train", "task": "quadratic"}')
    args = [a.replace("RUN", str(run)).replace("NOWHERE", str(tmp_path / "no")) for a in args]
    assert main(["select-snapshot", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def test_the_speed_rule_ships_the_fastest_snapshot_that_reaches_the_target_on_every_seed() -> None:
    """Train losses by hand: the baseline ends at 1.0 (the target); snapshot 1 reaches it on
    both seeds at steps 20 and 40, snapshot 2 on both at step 10 but one seed only at 30;
    snapshot 3 never does and has the lowest final median among those that do not."""
    curves = {
        "tuned adam": ([3.0, 2.0, 1.5, 1.0], [3.0, 2.0, 1.5, 1.0]),
        "snapshot 1": ([3.0, 0.9, 0.8, 0.7], [3.0, 2.0, 2.0, 0.9]),
        "snapshot 2": ([0.5, 0.5, 0.5, 0.5], [2.0, 2.0, 0.9, 0.9]),
        "snapshot 3": ([1.1, 1.1, 1.1, 1.1], [1.2, 1.2, 1.2, 1.2]),
    }
    rows = []
    for candidate, seeds in curves.items():
        for seed, values in enumerate(seeds):
            for k, value in enumerate(values):
                for split in ("train", "test"):
                    rows.append((candidate, seed, 10 * (k + 1), split, "loss", value))
    frame = pd.DataFrame(rows, columns=["candidate", "seed", "step", "split", "metric", "value"])
    table = speed_table(frame, list(curves), late_after=20)
    assert table.loc["snapshot 1", "seeds reaching"] == 2
    assert table.loc["snapshot 1", "mean steps to it"] == 30.0
    assert table.loc["snapshot 2", "mean steps to it"] == 20.0
    assert np.isnan(table.loc["snapshot 3", "mean steps to it"])
    assert chosen(table.drop(index="tuned adam"), "train", seeds=2) == "snapshot 2"
    assert chosen(table.loc[["snapshot 3"]], "train", seeds=2) == "snapshot 3"
