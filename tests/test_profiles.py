"""Performance profiles (harness.results.profiles) on small synthetic inputs with known answers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness.errors import UsageError
from harness.results.profiles import (
    comparison_profiles,
    derive_target,
    profile_curve,
    profile_markdown,
    profile_score,
    ratios,
    round_up,
    workload_ratios,
    workload_times,
)
from harness.results.schema import COLUMNS
from tasks.base import TARGET_RULE, Target, Task

INF = math.inf


def known_times() -> pd.DataFrame:
    """Workloads x optimizers: C has no run on w2; nobody is slower than 4x except where noted."""
    return pd.DataFrame(
        {"A": [10.0, 20.0, INF], "B": [20.0, 10.0, 30.0], "C": [40.0, np.nan, 60.0]},
        index=pd.Index(["w1", "w2", "w3"], name="task"),
    )


def test_ratios_are_times_over_the_fastest_and_missing_runs_never_reach():
    r = ratios(known_times())
    assert r["A"].tolist() == [1.0, 2.0, INF]
    assert r["B"].tolist() == [2.0, 1.0, 1.0]
    assert r["C"].tolist() == [4.0, INF, 2.0]


def test_a_workload_nobody_reaches_counts_for_nobody():
    times = pd.DataFrame({"A": [1.0, INF], "B": [2.0, INF]}, index=["w1", "w2"])
    r = ratios(times)
    assert r.loc["w2"].tolist() == [INF, INF]
    assert profile_score(r).tolist() == pytest.approx([(3 / 3 + 0) / 2, (2 / 3 + 0) / 2])


def test_the_profile_is_the_fraction_of_workloads_within_tau():
    curve = profile_curve(ratios(known_times()), [1.0, 2.0, 3.9, 4.0])
    assert curve["A"].tolist() == pytest.approx([1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert curve["B"].tolist() == pytest.approx([2 / 3, 1, 1, 1])
    assert curve["C"].tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3])


def test_the_score_is_the_exact_normalised_area_under_the_profile():
    r = ratios(known_times())
    score = profile_score(r)
    # A: (4-1) + (4-2) + 0 over 3 workloads and tau range 3; B: 2 + 3 + 3; C: 0 + 0 + 2
    assert score.to_dict() == pytest.approx({"A": 5 / 9, "B": 8 / 9, "C": 2 / 9})
    taus = np.linspace(1.0, 4.0, 30001)
    numeric = np.trapezoid(profile_curve(r, taus).to_numpy(), taus, axis=0) / 3.0
    assert numeric == pytest.approx(score.to_numpy(), abs=1e-3)


def test_round_up_keeps_three_significant_digits_and_never_goes_down():
    assert round_up(1.0112e-05) == pytest.approx(1.02e-05)
    assert round_up(0.1375) == pytest.approx(0.138)
    assert round_up(1.0) == 1.0
    assert round_up(2.5) == 2.5
    for value in (0.0123456, 3.14159, 1234.5):
        assert value <= round_up(value) <= value * 1.01


def tidy(run_id: str, optimizer: str, seed: int, losses: list[float], split: str) -> pd.DataFrame:
    """One run's ``split`` losses at steps 0, 10, 20, ... and timed seconds 0, 1, 2, ..."""
    rows = [(10 * i, float(i), split, "loss", v) for i, v in enumerate(losses)]
    frame = pd.DataFrame(rows, columns=["step", "wall_time_s", "split", "metric", "value"])
    return frame.assign(
        run_id=run_id,
        suite="s",
        task="t",
        task_cfg="{}",
        optimizer=optimizer,
        hparams="{}",
        seed=seed,
        status="completed",
        budget_steps=10 * (len(losses) - 1),
        tags='{"comparison":"train"}',
        harness_version="0",
        schema_version=3,
        git_commit="c",
        torch_version="2",
        device="cpu",
        threads=1,
        source="bench",
    )[list(COLUMNS)]


def synthetic_workload() -> pd.DataFrame:
    losses = {
        "sgd": [[4, 1.0, 0.5], [4, 3, 1.5], [4, 2, 1.0]],  # mean final 1.0, median 1.0
        "adam": [[4, 4, 3], [4, 4, 3], [4, 4, 2]],
        "lopt": [[4, 0.9, 0.8], [4, 0.9, 0.8], [4, 4, 4]],
    }
    return pd.concat(
        [
            tidy(f"{opt}{seed}", opt, seed, values, "train")
            for opt, seeds in losses.items()
            for seed, values in enumerate(seeds)
        ],
        ignore_index=True,
    )


def is_baseline(name: str) -> bool:
    return name != "lopt"


def test_the_derived_target_is_the_best_baselines_median_final_loss():
    from harness.results.derived import final_and_best

    runs = final_and_best(synthetic_workload())
    assert derive_target(runs, "train", is_baseline) == 1.0
    assert math.isnan(derive_target(runs[runs["optimizer"] == "lopt"], "train", is_baseline))


def test_time_to_target_is_the_median_over_seeds_with_misses_infinite():
    times = workload_times(synthetic_workload(), "train", is_baseline)
    got = times.set_index("optimizer")
    assert got.loc["sgd", "seconds"] == 2.0  # seeds: 1 s, never, 2 s
    assert got.loc["lopt", "seconds"] == 1.0  # 1 s, 1 s, never
    assert got.loc["adam", "seconds"] == INF
    assert got.loc["sgd", "reached"] == pytest.approx(2 / 3)
    assert set(got["target"]) == {1.0}
    assert set(got["target_source"]) == {"derived from these runs"}


def test_a_declared_target_and_its_step_budget_are_used(monkeypatch: pytest.MonkeyPatch):
    from harness import registry

    class Declared(Task):
        targets = (Target(split="train", value=0.9, steps=10),)

    entry = registry.RegistryEntry(name="t", factory=Declared, source="test")
    real_get = registry.TASKS.get
    monkeypatch.setattr(registry.TASKS, "get", lambda n: entry if n == "t" else real_get(n))
    got = workload_times(synthetic_workload(), "train", is_baseline).set_index("optimizer")
    assert got.loc["lopt", "seconds"] == 1.0  # 0.9 at step 10, within the budget
    assert got.loc["sgd", "seconds"] == INF  # reaches 0.9 only at step 20 (once), past it
    assert set(got["target_source"]) == {"declared"}


def test_the_paper_tasks_and_the_lm_declare_their_targets_by_the_rule():
    from harness.registry import TASKS

    for name in ("mnist5k_cnn16", "fmnist_cnn16", "charlm_transformer"):
        task = TASKS.get(name).factory
        for split in ("train", "valid"):
            target = task.target_for(split)
            assert target is not None and target.steps == task.default_steps
            assert TARGET_RULE in target.rule


@pytest.mark.slow
@pytest.mark.parametrize(("suite", "workloads"), [("paper", 4), ("lm", 2)])
def test_the_declared_targets_are_the_rule_applied_to_the_committed_results(suite, workloads):
    from harness.results.io import read_results
    from harness.results.targets import derived_targets

    path = Path(__file__).resolve().parent.parent / "results" / suite / "results.csv"
    table = derived_targets(read_results(path))
    assert len(table) == workloads
    assert table["derived"].tolist() == pytest.approx(table["declared"].tolist(), rel=1e-12)


# -- a family sample as one workload -----------------------------------------------------------
def member_runs(member: int, losses: dict[str, list[float]]) -> pd.DataFrame:
    """One seed per optimizer on member ``member`` of the registered family ``mlp_mix``."""
    return pd.concat(
        [
            tidy(f"{opt}-m{member}", opt, 0, values, "train").assign(
                task="mlp_mix", task_cfg=f'{{"member":{member},"split_seed":0}}'
            )
            for opt, values in losses.items()
        ],
        ignore_index=True,
    )


def family_and_task() -> pd.DataFrame:
    """Three members (targets 1.0 each, by the rule) and the fixed task ``t``.

    Seconds to target (member 1, 2, 3): sgd 2, never, 1; adam never, 3, never; lopt 1, never,
    2; so the members' ratios are sgd (2, inf, 1), adam (inf, 1, inf), lopt (1, inf, 2), each
    member a third of the family's workload. On ``t``: sgd 2, adam inf, lopt 1.
    """
    flat = [4.0] * 5
    members = [
        member_runs(
            1, {"sgd": [4, 2, 1, 1, 1], "adam": [4, 3, 2, 1.5, 1.2], "lopt": [4, 1, 0.5, 0.5, 0.5]}
        ),
        member_runs(2, {"sgd": [4, 3, 2, 2, 2], "adam": [4, 4, 3, 1, 1], "lopt": flat}),
        member_runs(3, {"sgd": [4, 1, 1, 1, 1], "adam": flat, "lopt": [4, 4, 1, 1, 1]}),
    ]
    return pd.concat([*members, synthetic_workload()], ignore_index=True)


def test_a_family_sample_is_one_workload_timed_per_member():
    times = workload_times(family_and_task(), "train", is_baseline)
    members = times[times["workload"] == "mlp_mix"]
    assert sorted(members["task"].unique()) == ["mlp_mix[1]", "mlp_mix[2]", "mlp_mix[3]"]
    assert set(members["member"]) == {1, 2, 3}
    assert set(members["target"]) == {1.0}
    assert set(members["target_source"]) == {"derived per member from these runs"}
    got = members.set_index(["member", "optimizer"])["seconds"]
    assert [got[(m, "sgd")] for m in (1, 2, 3)] == [2.0, INF, 1.0]
    ratio, weight = workload_ratios(times)
    assert ratio.index.tolist() == ["mlp_mix[1]", "mlp_mix[2]", "mlp_mix[3]", "t"]
    assert weight.tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 1.0])
    assert ratio["sgd"].tolist() == [2.0, INF, 1.0, 2.0]
    assert ratio["adam"].tolist() == [INF, 1.0, INF, INF]
    assert ratio["lopt"].tolist() == [1.0, INF, 2.0, 1.0]


def test_the_profile_counts_the_family_sample_once():
    frame = family_and_task()
    times, profile = comparison_profiles({"train": frame}, is_baseline)
    got = profile.set_index("optimizer")
    assert set(got["workloads"]) == {2}
    assert got["ran_on"].to_dict() == {"lopt": 2, "sgd": 2, "adam": 2}
    # Per member (4 - ratio) / 3, averaged over the family's members, then over 2 workloads:
    # lopt (1 + 0 + 2/3) / 3 and 1 on t; sgd (2/3 + 0 + 1) / 3 and 2/3; adam (0 + 1 + 0) / 3.
    assert got["score"].to_dict() == pytest.approx(
        {"lopt": (5 / 9 + 1) / 2, "sgd": (5 / 9 + 2 / 3) / 2, "adam": (1 / 3) / 2}
    )
    # rho(1): lopt is fastest on member 1 and on t, adam on member 2, sgd on member 3.
    assert got["rho_1"].to_dict() == pytest.approx({"lopt": 2 / 3, "sgd": 1 / 6, "adam": 1 / 6})
    assert got["rho_2"].to_dict() == pytest.approx({"lopt": 5 / 6, "sgd": 5 / 6, "adam": 1 / 6})
    lines = "\n".join(profile_markdown(times, profile))
    assert "mlp_mix (family sample)" in lines and "one per member (3 members)" in lines
    # A member without an optimizer's run is a miss there: without lopt on member 1, its
    # ratio there is inf, and sgd is now the fastest on member 1.
    dropped = frame[frame["run_id"] != "lopt-m1"]
    ratio, _ = workload_ratios(workload_times(dropped, "train", is_baseline))
    assert ratio.loc["mlp_mix[1]", "lopt"] == INF
    assert ratio.loc["mlp_mix[1]", "sgd"] == 1.0


def test_a_weighted_profile_is_the_profile_of_the_rows_repeated_by_weight():
    """Weights 1/2, 1/2, 1 are the unweighted profile of the rows w1, w2, w3, w3."""
    r = ratios(known_times())
    weight = pd.Series([0.5, 0.5, 1.0], index=r.index)
    repeated = pd.concat([r, r.loc[["w3"]]])
    taus = [1.0, 1.5, 2.0, 3.0, 4.0]
    assert profile_curve(r, taus, weight).to_numpy() == pytest.approx(
        profile_curve(repeated, taus).to_numpy()
    )
    assert profile_score(r, weight).to_numpy() == pytest.approx(profile_score(repeated).to_numpy())


def test_a_family_row_without_a_member_is_refused():
    frame = member_runs(1, {"sgd": [4, 1]}).assign(task_cfg="{}")
    with pytest.raises(UsageError, match="names no integer member"):
        workload_times(frame, "train", is_baseline)


@pytest.mark.slow
def test_the_comparison_report_profiles_a_real_family_sample_as_one_workload(tmp_path):
    """Real runs on two members of mlp_mix's evaluation sample: the profile counts one
    workload; the per-task sections see each member as a task of its own."""
    from harness import run
    from harness.results.comparison import build_comparison_report

    frames = []
    for member in (1_100_000, 1_100_001):
        for optimizer in ("adam", "sgd", "adam_residual_mnist5k_train"):
            for seed in (0, 1):
                result = run(
                    "mlp_mix",
                    optimizer,
                    {},
                    steps=60,
                    seed=seed,
                    eval_every=20,
                    log_every=20,
                    task_cfg={"member": member},
                    tags={"comparison": "train"},
                )
                frames.append(result.frame())
    build_comparison_report(pd.concat(frames, ignore_index=True), tmp_path)
    profile = pd.read_csv(tmp_path / "profiles.csv")
    assert set(profile["workloads"]) == {1} and len(profile) == 3
    times = pd.read_csv(tmp_path / "time_to_workload_target.csv")
    assert set(times["workload"]) == {"mlp_mix"}
    assert set(times["task"]) == {"mlp_mix[1100000]", "mlp_mix[1100001]"}
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary["task"]) == {"mlp_mix[1100000]", "mlp_mix[1100001]"}
    assert "mlp_mix (family sample)" in (tmp_path / "summary.md").read_text()
