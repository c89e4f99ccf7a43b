"""Every benchmark the README, the docs or ``nox -s benchmarks`` names runs to its verdict
(issue 27 item 4): each is run as a script with a tiny budget, and must exit 0 (met) or 3
(``benchmarks/verdict.py``: ran and missed), never 1 (a crash) or 2 (bad arguments); a
benchmark with a target prints its ``verdict:`` line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from benchmark_modules import load_benchmark

from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent
MISSED = 3

#: script -> (tiny-budget arguments, whether it prints a verdict line). ``{tmp}`` is a folder of
#: the test's own; ``{storage}`` a study made by ``lopt tune`` for the grid cross-check.
TINY: dict[str, tuple[list[str], bool]] = {
    "lopt_step_vs_adam.py": (["--task", "quadratic", "--steps", "2", "--rounds", "1"], True),
    "lopt_torch_step_by_size.py": (
        ["--widths", "8,16", "--steps", "2", "--rounds", "1", "--checkpoint", "lopt_mnist5k_train"],
        False,
    ),
    "es_step_vs_adam.py": (["--task", "quadratic", "--unroll", "2", "--rounds", "1"], True),
    "meta_step_overhead.py": (
        [
            "--task",
            "quadratic",
            "--outer-batches",
            "5",
            "--problems",
            "2",
            "--unroll",
            "2",
            "--rounds",
            "1",
        ],
        True,
    ),
    "harness_overhead.py": (["--steps", "3", "--repeats", "1", "--warmup-steps", "1"], True),
    "tuning_grid_vs_tpe.py": (
        ["--budget-steps", "2", "--grid-points", "2", "--tpe-trials", "2"],
        False,
    ),
    "objectives_per_cpu_minute.py": (
        ["--seconds", "0.1", "--only", "es-mean", "--horizon", "100", "--out", "{tmp}/objectives"],
        False,
    ),
    "tuning_seeds.py": (
        [
            "--task",
            "quadratic",
            "--optimizer",
            "sgd",
            "--lrs",
            "0.01,0.1",
            "--seeds",
            "2",
            "--steps",
            "5",
            "--out",
            "{tmp}/seeds.csv",
        ],
        False,
    ),
    "nominal_mlp_step_vs_adam.py": (
        ["--tasks", "digits_mlp", "--steps", "2", "--rounds", "1", "--eager"],
        True,
    ),
    "nominal_mlp_batched_step.py": (
        ["--problems", "2", "--steps", "2", "--rounds", "1", "--eager"],
        False,
    ),
    "charlm_cost.py": (
        ["--rounds", "1", "--steps", "2", "--width", "16", "--layers", "1", "--context", "16"],
        False,
    ),
    "tuning_workers.py": (
        ["--workers", "2", "--trials", "4", "--steps", "5", "--out", "{tmp}/workers"],
        False,
    ),
    "tuning_trial_cost.py": (["--task", "quadratic", "--steps", "5"], False),
    "batched_throughput.py": (
        [
            "--arch-seeds",
            "7",
            "--pairs",
            "2",
            "--unroll",
            "2",
            "--rounds",
            "1",
            "--learner",
            "adam",
        ],
        True,
    ),
    "family_estimator_bias.py": (["--pairs", "8", "--truncation", "5", "--horizon", "10"], True),
    "family_heldout_vs_adam.py": (["{family_run}", "--lrs", "0.01"], False),
    "resolve_equality.py": (["compare"], True),
    "resolve_walk.py": ([], True),
    "family_estimator_comparison.py": (
        [
            "--out",
            "{tmp}/comparison",
            "--cpu-seconds",
            "1",
            "--chunk-seconds",
            "1",
            *("learner_cfg.compile=false", "pairs=2", "arch_groups=1", "truncation=5"),
            *("min_horizon=10", "max_horizon=10", "heldout_tasks=2", "eval_every=2"),
            *("--final-tasks", "3"),
        ],
        False,
    ),
    "differentiable_unroll.py": (["--rows", "2", "--steps", "2", "--rounds", "1"], False),
    "param_norms.py": (
        ["--task", "quadratic", "--steps", "4", "--every", "2", "--optimizers", "adam:lr=0.1,sgd"],
        False,
    ),
    "paired_speedup.py": (
        [
            str(ROOT / "results" / "fresh-seeds" / "mnist5k_cnn16_train.csv"),
            *("--candidate", "nominal_mlp_mlp_mix_train", "--target", "1.011e-05"),
        ],
        True,
    ),
    "tuning_grid_cross_check.py": (
        [
            "--task",
            "quadratic",
            "--optimizer",
            "sgd",
            "--objective",
            "train_loss",
            "--steps",
            "5",
            "--points",
            "2",
            "--seeds",
            "1",
            "--storage",
            "{storage}",
            "--out",
            "{tmp}/grid.csv",
        ],
        False,
    ),
}


def named_benchmarks() -> set[str]:
    """The scripts under benchmarks/ that README.md, docs/*.md or noxfile.py name."""
    texts = [ROOT / "README.md", ROOT / "noxfile.py", *sorted((ROOT / "docs").glob("*.md"))]
    found: set[str] = set()
    for path in texts:
        found |= set(re.findall(r"benchmarks/(\w+\.py)", path.read_text(encoding="utf-8")))
    scripts = {name for name in found if (ROOT / "benchmarks" / name).is_file()}
    return {name for name in scripts if "def main(" in (ROOT / "benchmarks" / name).read_text()}


def test_every_named_benchmark_has_a_tiny_run() -> None:
    assert named_benchmarks() <= set(TINY)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TINY))
def test_benchmark_runs_to_its_verdict(
    script: str, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The script's ``main(argv)``, in this process (a crash raises here, with its traceback),
    returns 0 or 3; with a target, its last line is the verdict."""
    args, has_verdict = TINY[script]
    if script == "tuning_workers.py":
        import pg_server

        if reason := pg_server.unavailable():
            pytest.skip(f"tuning_workers.py needs a PostgreSQL server: {reason}")
    monkeypatch.chdir(tmp_path)  # what a script or `lopt tune` writes by default lands here
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    if "{storage}" in args:
        tune = ["tune", "task=quadratic", "optimizer=sgd", "trials=2", "objective=train_loss"]
        assert main([*tune, "budget_steps=5", f"storage={storage}", "seeds=1"]) == 0
    family_run = tmp_path / "family_run"
    if "{family_run}" in args:  # a one-step family meta-training run to score
        tiny = ["learner_cfg.compile=false", "pairs=2", "arch_groups=1", "truncation=5"]
        tiny += ["min_horizon=10", "max_horizon=10", "heldout_tasks=2", "eval_every=0"]
        run = ["meta-train", "family=mlp_mix", *tiny, "outer_steps=1", "parallel=single"]
        assert main([*run, f"out={family_run}"]) == 0
    args = [a.replace("{tmp}", str(tmp_path)).replace("{storage}", storage) for a in args]
    args = [a.replace("{family_run}", str(family_run)) for a in args]
    module = load_benchmark(script, monkeypatch)
    capsys.readouterr()
    code = module.main(args)
    out = capsys.readouterr().out
    assert code in (0, MISSED), out[-3000:]
    if has_verdict:
        assert out.strip().splitlines()[-1].startswith(("verdict: met: ", "verdict: MISSED: "))
