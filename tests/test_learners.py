"""Learner families and outer objectives: a plugin family trains and is served from its
checkpoint (the example of docs/extending.md), shipped names work wherever a checkpoint is
accepted, and the outer loss evaluates exactly the steps and data its objective says."""

from __future__ import annotations

import math
import shlex
import sys
from itertools import islice
from pathlib import Path

import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.errors import UsageError
from harness.meta import meta_train
from harness.meta.truncation import LOSS_CLIP, InnerProblems, OuterObjective
from harness.registry import LEARNERS, create_learner, create_optimizer, create_task
from harness.runner import make_train_step
from optimizers.base import Learner
from optimizers.checkpoint import load_lopt_checkpoint, resolve_checkpoint, shipped_names
from optimizers.learned import LOpt, MLPLearner, opt_fn
from optimizers.learned_hparams import LearnedHParams, encode_theta
from tasks.quadratic import Quadratic

sys.path.insert(0, str(Path(__file__).parent))
from readme_blocks import EXTENDING, examples

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_builtin_families_follow_the_contract() -> None:
    """The built-in families are registered (the paper's also under its old name, mlp),
    satisfy the Learner contract, and rebuild from their record."""
    names = ("metz_mlp", "mlp", "hparams", "adam_residual", "nominal_mlp")
    assert set(names) <= set(LEARNERS.names())
    for name in names:
        family = LEARNERS.get(name).factory
        learner = family()
        assert isinstance(learner, Learner) and learner.family == name
        again = family(**learner.record())
        assert again.record() == learner.record() and again.num_theta == learner.num_theta
        assert learner.init_theta(3).shape == (learner.num_theta,)


@pytest.mark.parametrize(
    ("family", "learner_cfg"),
    [
        pytest.param("adam_residual", {}, marks=pytest.mark.slow),
        ("nominal_mlp", {"compile": False}),  # the eager update
    ],
)
def test_at_its_initial_theta_the_family_is_adam_for_100_steps(
    family: str, learner_cfg: dict
) -> None:
    """100 training steps of digits_mlp with the learner at its initial theta (opt_fn): the
    same parameters as `adam` at lr0, to 1e-6; its learned schedule's rate is lr0."""
    task = create_task("digits_mlp")
    learner = create_learner(family, lr0=3e-3, horizon=100, **learner_cfg)
    ours = opt_fn(learner, learner.init_theta(5))
    adam = create_optimizer("adam", lr=3e-3)
    params = task.init_params(0)
    mine, theirs = (params, ours.init(params)), (params, adam.init(params))
    steps = make_train_step(task, ours), make_train_step(task, adam)
    for batch in islice(task.batches("train", 0), 100):
        mine = steps[0](*mine, batch)[:2]
        theirs = steps[1](*theirs, batch)[:2]
    for a, b in zip(mine[0], theirs[0], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert learner.learning_rate(learner.init_theta(5), 40) == pytest.approx(3e-3)


@pytest.mark.parametrize(
    ("family", "learner_cfg", "estimator", "outer_steps"),
    [
        ("adam_residual", {"lr0": 0.05, "horizon": 40}, "pes", 6),
        ("nominal_mlp", {"lr0": 0.05, "horizon": 40, "compile": False}, "es", 3),
    ],
)
def test_a_meta_trained_family_is_served_from_its_checkpoint(
    tmp_path: Path,
    family: str,
    learner_cfg: dict,
    estimator: str,
    outer_steps: int,
) -> None:
    """Meta-training on the quadratic moves theta off its start; the checkpoint records the
    family and its settings, and `learned`, its old name `lopt` and the torch.optim class all
    serve it."""
    path = meta_train(
        task="quadratic",
        learner=family,
        learner_cfg=learner_cfg,
        estimator=estimator,
        problems=4,
        horizon=40,
        schedule="constant",
        unroll_length=8,
        outer_steps=outer_steps,
        parallel="loop",
        progress=False,
        eval_every=0,
        out=str(tmp_path / "meta"),
    )
    loaded = load_lopt_checkpoint(path)
    assert loaded.family == family and loaded.learner.record()["lr0"] == 0.05
    start = create_learner(family, lr0=0.05, horizon=40).init_theta(0)
    assert not torch.equal(loaded.theta, start)
    for name in ("learned", "lopt"):
        served = create_optimizer(name, checkpoint=str(path))
        assert served.learner.family == family and torch.equal(served.theta, loaded.theta)
    model = torch.nn.Linear(3, 1)
    opt = LOpt(model.parameters(), checkpoint=str(path))
    before = model.weight.detach().clone()
    model(torch.randn(5, 3)).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(before, model.weight) and "moments" in opt.state[model.weight]


@pytest.mark.slow
def test_the_documented_learner_plugin_trains_and_is_served_from_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """docs/extending.md's local learner family: `lopt list learners` shows it, `lopt meta-train`
    trains it and ends with a summary line, its checkpoint records the family, and
    `lopt bench optimizer=learned optimizer.checkpoint=...` evaluates it; with a theta in memory
    `opt_fn` makes it an optimizer (the page's printed result)."""
    blocks = examples(EXTENDING.read_text())
    (tmp_path / "my_learner.py").write_text(blocks["my_learner.py"])
    monkeypatch.chdir(tmp_path)
    assert main(["list", "learners", "plugins=my_learner"]) == 0
    assert "sign_sgd" in capsys.readouterr().out
    commands = [line for line in blocks["learner-commands"].splitlines() if line.strip()]
    assert main(shlex.split(commands[0])[1:]) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert "meta/sign/lopt.safetensors: 20 outer steps" in summary and "CPU-hours" in summary
    assert (tmp_path / "meta/sign/meta_curves.png").is_file()  # the convergence report
    loaded = load_lopt_checkpoint(tmp_path / "meta/sign/lopt.pt")
    assert loaded.family == "sign_sgd" and loaded.theta.shape == (1,)
    assert loaded.theta[0] != math.log(0.01)  # meta-training moved it
    assert main(shlex.split(commands[1])[1:]) == 0
    frame = pd.read_csv(tmp_path / "sign.csv")
    assert set(frame.status) == {"completed"} and set(frame.optimizer) == {"learned"}
    capsys.readouterr()
    exec(compile(blocks["opt-fn"], "opt-fn", "exec"), {})
    printed = blocks["opt-fn"].rsplit("# ", 1)[1].strip()  # what the page says it prints
    assert capsys.readouterr().out.strip() == printed == "tensor([0.9000, 1.1000, 1.0000]) 1"


@pytest.mark.slow
def test_shipped_names_work_wherever_a_checkpoint_is_accepted() -> None:
    """`LOpt(..., checkpoint=NAME)`, `optimizer.checkpoint=NAME` and the loader take a shipped
    name; an unknown one is a one-line error naming the shipped ones."""
    name = shipped_names()[0]
    assert resolve_checkpoint(name).name == f"{name}.safetensors"
    model = torch.nn.Linear(3, 2)
    opt = LOpt(model.parameters(), checkpoint=name)
    model(torch.randn(4, 3)).pow(2).mean().backward()
    opt.step()
    served = create_optimizer("lopt", checkpoint=name)
    assert torch.equal(served.theta, create_optimizer(name).theta)
    with pytest.raises(UsageError) as info:
        LOpt(model.parameters(), checkpoint="lopt_nonexistent")
    assert name in str(info.value) and "\n" not in str(info.value)


def test_a_corrupt_trainer_state_says_what_to_do(tmp_path: Path) -> None:
    """A damaged trainer_state.pt: one line naming the file and resume=false."""
    from harness.meta import meta_train

    settings = {"task": "quadratic", "problems": 2, "horizon": 10, "outer_steps": 2}
    settings |= {"parallel": "loop", "progress": False, "eval_every": 0, "out": str(tmp_path)}
    meta_train(**settings)
    state = tmp_path / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(UsageError) as info:
        meta_train(**{**settings, "outer_steps": 3})
    text = str(info.value)
    assert "trainer_state.pt" in text and "resume=false" in text and "\n" not in text


# -- outer objectives ------------------------------------------------------------------------------
def quadratic_problems(**objective) -> InnerProblems:
    task = Quadratic(dim=3, condition=5.0, noise=0.5, batch_size=2)
    return InnerProblems(
        task,
        LearnedHParams(learn_momentum=False),
        num_problems=2,
        horizon=10,
        outer_batches=1,
        objective="train",
        seed=0,
        **objective,
    )


def test_evaluated_steps() -> None:
    """every=k counts back from the truncation's last step; start=s drops the steps up to s;
    final only at the horizon."""
    every = OuterObjective(every=3)
    assert every.evaluated(0, 7, 100) == [True, False, False, True, False, False, True]
    late = OuterObjective(every=3, start=4)  # only after steps later than 4
    assert late.evaluated(0, 7, 100) == [False] * 6 + [True]
    assert late.evaluated(3, 7, 100) == [False, False, False, True, False, False, True]
    assert late.evaluated(0, 3, 100) == [False] * 3
    final = OuterObjective(loss="final")
    assert final.evaluated(6, 4, 10) == [False, False, False, True]
    assert final.evaluated(2, 4, 10) == [False] * 4
    with pytest.raises(ValueError):
        OuterObjective(split="valid", data="inner")


def manual_outer(problems: InnerProblems, theta, state, data, value) -> float:
    """The outer loss computed step by step: ``value`` of the loss after each evaluated step,
    on its outer batch (fresh) or on the next inner batch (inner)."""
    task, learner = problems.task, problems.learner
    params, opt_state = state.params, state.optimizer_state()
    values = []
    for j in range(data.length):
        p = tuple(x.detach().requires_grad_(True) for x in params)
        grads = torch.autograd.grad(task.loss(p, data.inner[j]).clamp(max=LOSS_CLIP), p)
        with torch.no_grad():
            params, opt_state = learner.apply(theta, grads, opt_state, p)
            if data.evaluate[j]:
                if problems.outer.data == "inner":
                    batch = data.inner[j + 1]
                else:
                    batch = tuple(x[0] for x in data.outer[j])
                values.append(value(task.loss(params, batch).clamp(max=LOSS_CLIP)))
    return sum(values) / max(1, len(values))


@pytest.mark.parametrize(
    "objective",
    [
        {},
        {"loss": "log"},
        {"outer_every": 2},
        {"outer_data": "inner"},
        {"outer_data": "inner", "outer_every": 3, "loss": "log"},
        {"loss": "log_mean", "outer_every": 2},
        {"loss": "log", "outer_every": 2, "outer_from": 3},
    ],
    ids=["mean", "log", "every2", "inner", "inner-every3-log", "log_mean-every2", "log-from3"],
)
def test_the_outer_loss_is_what_the_objective_says(objective: dict) -> None:
    problems = quadratic_problems(**objective)
    theta = encode_theta(0.2, learn_momentum=False)
    state = problems.fresh_state(0, 0)
    data = problems.data(0, state, 7)
    value = (lambda x: math.log(max(float(x), 1e-8))) if objective.get("loss") == "log" else float
    expected = manual_outer(problems, theta, state, data, value)
    if objective.get("loss") == "log_mean":  # the log of the mean, not the mean of the logs
        expected = math.log(expected)
    loss, final = problems.unroll(theta, state, data, grad_mode="none")
    assert math.isclose(float(loss), expected, rel_tol=1e-6)
    assert final.step == 7
    if objective.get("outer_data") == "inner":
        assert len(data.inner) == 8 and data.outer == [None] * 7


def test_final_loss_has_a_gradient_only_in_the_last_truncation() -> None:
    """loss=final: a truncation that does not end the inner run has no outer loss (0, no
    gradient); the one that ends it has the loss after the last step."""
    problems = quadratic_problems(loss="final")
    theta = encode_theta(0.2, learn_momentum=False).requires_grad_(True)
    early = problems.fresh_state(0, 0)
    loss, _ = problems.unroll(theta, early, problems.data(0, early, 4), grad_mode="second")
    assert float(loss) == 0.0 and not loss.requires_grad
    late = problems.fresh_state(0, 0, step=6)
    loss, _ = problems.unroll(theta, late, problems.data(0, late, 4), grad_mode="second")
    assert float(loss.detach()) > 0 and loss.requires_grad


def test_the_log_objectives_see_small_losses_and_log_mean_is_not_fooled_by_spikes() -> None:
    """Both log objectives are scale-free: halving every loss shifts them by log 2, whatever
    their size, where the mean objective barely moves for losses near 1e-5. A trajectory that
    spikes between 1e-8 and 1e-2 scores like a steady 1e-5 under `log`, like its mean under
    `log_mean`."""

    def score(kind: str, losses: list[float]) -> float:
        objective = OuterObjective(loss=kind)
        values = [objective.value(torch.tensor([x])) for x in losses]
        return float(objective.finish(sum(values) / len(values)))

    for kind in ("log", "log_mean"):
        shift = score(kind, [2e-5, 2e-5]) - score(kind, [1e-5, 1e-5])
        assert math.isclose(shift, math.log(2), rel_tol=1e-5)
    assert score("mean", [2e-5]) - score("mean", [1e-5]) < 2e-5
    spiky, steady = [1e-8, 1e-2], [1e-5, 1e-5]
    assert math.isclose(score("log", spiky), score("log", steady), rel_tol=1e-5)
    assert score("log_mean", spiky) > score("log_mean", steady) + 5


def test_mlp_learner_of_an_architecture() -> None:
    learner = MLPLearner.of()
    assert learner.num_theta == 1762 and learner.record()["hidden_sizes"] == [32, 32]


def test_the_config_names_every_estimator_and_objective() -> None:
    """The configuration's choices (kept free of torch imports) are the implementations'."""
    from harness.meta import truncation
    from harness.meta.estimators import ESTIMATORS
    from harness.settings import meta as config

    assert tuple(ESTIMATORS) == config.ESTIMATORS
    assert truncation.LOSS_KINDS == config.LOSSES and truncation.OUTER_DATA == config.OUTER_DATA


def test_the_momentum_start_of_the_paper_learner_is_normalised_momentum() -> None:
    """`mlp` with start=momentum: the first update is 0.001 * m_0.9 / rms(m_0.9) per tensor
    (m_0.9 = 0.1 g from zero accumulators), whatever the rest of the random MLP; it is
    recorded, so a checkpoint rebuilds it."""
    learner = MLPLearner(start="momentum")
    theta = learner.init_theta(3)
    params = (torch.randn(5, 4), torch.randn(7))
    grads = (torch.randn(5, 4), torch.randn(7))
    new, _ = learner.apply(theta, grads, learner.init(params), params)
    for p, g, n in zip(params, grads, new, strict=True):
        m = 0.1 * g
        expected = p - 1e-3 * m / torch.sqrt((m * m).mean() + 1e-5)
        torch.testing.assert_close(n, expected, rtol=1e-5, atol=1e-7)
    assert learner.record()["start"] == "momentum"
    assert "start" not in MLPLearner().record()  # the paper's start: older checkpoints match
    with pytest.raises(UsageError, match="start must be one of random, momentum"):
        MLPLearner(start="adam")
