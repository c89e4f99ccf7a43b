"""A held-out family sample in a suite (issue 25): ``members:`` runs an entry once per member,
each member's baselines are tuned in studies of their own, and the `family` suite holds the
seven baselines on both objectives and every shipped learned optimizer on every member."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from harness import run
from harness.errors import UsageError
from harness.settings.suite import suite_entries
from harness.settings.tune import TuneSettings
from harness.tuning.campaign import suite_studies
from harness.tuning.study import study_name
from harness.tuning.tuner import tune, tuned_configuration

FAMILY_SUITE = Path(__file__).resolve().parent.parent / "harness/conf/suite/family.yaml"
HELD_OUT = [1100000, 1100001, 1100002, 1100003, 1100004]


def quiet(_message: str) -> None:
    pass


def test_a_family_members_study_is_named_by_its_member() -> None:
    name = study_name("mlp_mix", "adam", "train_loss", 1000, "tpe", "t", task_cfg={"member": 7})
    assert name == "mlp_mix.m7-adam-train_loss-1000steps-tpe-p2-t"
    # the family's default member, 0, when the settings name none
    assert study_name("conv_mix", "sgd", "valid_loss", 50, "tpe").startswith("conv_mix.m0-sgd-")
    # a task that is not a family keeps its name, whatever its settings hold
    plain = study_name("quadratic", "sgd", "valid_loss", 60, "tpe", task_cfg={"member": 3})
    assert plain == "quadratic-sgd-valid_loss-60steps-tpe-p2"
    with pytest.raises(UsageError, match=r"task\.member must be an integer"):
        study_name("mlp_mix", "sgd", "valid_loss", 60, "tpe", task_cfg={"member": "one"})


def test_two_members_are_tuned_in_two_studies_and_each_run_finds_its_own(tmp_path) -> None:
    """Before members named their studies, the second member was refused as another protocol
    of the first member's study."""
    storage = f"sqlite:///{tmp_path}/o.db"
    chosen = {}
    for member, lr in ((1100002, 0.05), (1100004, 0.002)):
        settings = TuneSettings(
            task="mlp_mix",
            optimizer="momentum",
            trials=1,
            objective="train_loss",
            budget_steps=4,
            eval_seeds=0,
            pruner="none",
            storage=storage,
            out=str(tmp_path / "out"),
            task_cfg={"member": member},
            fixed={"lr": lr},
            search={"momentum": [0.0, 0.5]},
        )
        outcome = tune(settings, log=quiet)
        assert outcome.study.startswith(f"mlp_mix.m{member}-momentum-")
        hparams, tags = tuned_configuration(
            task="mlp_mix",
            optimizer="momentum",
            objective="train_loss",
            budget_steps=4,
            storage=storage,
            task_cfg={"member": member},
        )
        chosen[member] = (hparams["lr"], tags["study"])
    assert chosen[1100002][0] == 0.05 and chosen[1100004][0] == 0.002
    assert chosen[1100002][1] != chosen[1100004][1]
    with pytest.raises(UsageError, match=r"task\.member=1100003") as caught:  # the command
        tuned_configuration(
            task="mlp_mix",
            optimizer="momentum",
            objective="train_loss",
            budget_steps=4,
            storage=storage,
            task_cfg={"member": 1100003},
        )
    # the studies that exist, each with the member that selects it
    assert "(task.member=1100002 tuning.objective=train_loss" in str(caught.value)


def _suite(*runs: dict) -> object:
    return OmegaConf.create({"name": "s", "runs": list(runs)})


def test_members_run_an_entry_once_per_member() -> None:
    entries = suite_entries(
        _suite(
            {"task": "mlp_mix", "optimizer": "adam", "members": [5, 9], "task_cfg": {"arch": 2}},
            {"task": "quadratic", "optimizer": "sgd"},
        )
    )
    assert [(e.task, e.task_cfg, e.members) for e in entries] == [
        ("mlp_mix", {"arch": 2, "member": 5}, []),
        ("mlp_mix", {"arch": 2, "member": 9}, []),
        ("quadratic", {}, []),
    ]


@pytest.mark.parametrize(
    ("run_", "message"),
    [
        ({"task": "quadratic", "members": [1]}, "members= needs a task family; allowed tasks: "),
        ({"task": "mlp_mix", "members": [1], "task_cfg": {"member": 2}}, "not both"),
        ({"task": "mlp_mix", "members": [1, 1]}, "distinct integers >= 0, got 'a repeated"),
        ({"task": "mlp_mix", "members": [-1]}, "distinct integers >= 0, got -1"),
    ],
)
def test_bad_members_are_one_line_usage_errors(run_: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        suite_entries(_suite({"optimizer": "adam", **run_}))
    assert "\n" not in str(caught.value) and "runs[0]" in str(caught.value)


def test_the_family_suite_tunes_every_baseline_on_every_held_out_member() -> None:
    specs, common = suite_studies("family")
    assert common["storage"] == "sqlite:///results/family/optuna.db"
    assert len(specs) == 7 * 2 * len(HELD_OUT)
    names = {
        study_name(s.task, s.optimizer, s.objective, s.budget_steps, "tpe", s.tag or "family",
                   task_cfg=s.task_cfg)
        for s in specs
    }  # fmt: skip
    assert len(names) == len(specs)  # one study per member, baseline and objective
    for objective in ("train_loss", "valid_loss"):
        members = sorted(s.task_cfg["member"] for s in specs if s.objective == objective)
        assert members == sorted(HELD_OUT * 7)
    # the held-out sample: the family's evaluation members, never drawn by meta-training
    from harness.meta.family.evalset import EVAL_FIRST_SEED

    assert list(range(EVAL_FIRST_SEED, EVAL_FIRST_SEED + 5)) == HELD_OUT


def test_every_learned_optimizer_of_the_family_suite_runs_on_a_held_out_member() -> None:
    """The family suite runs the lm suite's learned optimizers (every shipped one) unchanged."""
    suite = OmegaConf.load(FAMILY_SUITE)
    lm = OmegaConf.load(FAMILY_SUITE.with_name("lm.yaml"))
    learned = sorted({e.optimizer for e in suite_entries(suite) if not e.tuned})
    assert learned == sorted({e.optimizer for e in suite_entries(lm) if not e.tuned})
    for name in learned:
        result = run(
            "mlp_mix",
            name,
            task_cfg={"member": HELD_OUT[-1]},
            steps=3,
            eval_every=3,
            eval_splits=("valid",),
            warmup_steps=0,
        )
        assert result.status == "completed" and math.isfinite(result.final("valid")), name
