"""LOpt as a drop-in torch.optim optimizer (issue 27 item 3): lr, weight_decay, parameter groups,
every torch.optim.lr_scheduler, state_dict round trips, no silent untrained default."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from harness.errors import UsageError
from harness.registry import create_learner
from optimizers.learned import LearnedOptimizer, LOptArchitecture
from optimizers.torch_optim import LOpt

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(5, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


X, Y = torch.randn(8, 5, generator=torch.Generator().manual_seed(1)), torch.ones(8, 1)


def loss_of(model: nn.Module) -> torch.Tensor:
    dtype = model.a.weight.dtype
    return ((model(X.to(dtype)) - Y.to(dtype)) ** 2).mean()


def learner_and_theta(family: str) -> tuple[Any, torch.Tensor]:
    """A learner of ``family`` and a theta whose steps are not tiny (random for the MLP)."""
    if family == "mlp":
        arch = LOptArchitecture(step_mult=0.01)
        theta = torch.randn(arch.num_theta, generator=torch.Generator().manual_seed(0)) * 0.3
        return arch, theta
    learner = create_learner(family)
    return learner, learner.init_theta(0)


def one_step(opt: torch.optim.Optimizer, model: nn.Module) -> list[torch.Tensor]:
    """The parameters' changes in one ``step``."""
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    loss_of(model).backward()
    opt.step()
    return [p.detach() - b for p, b in zip(model.parameters(), before, strict=True)]


@pytest.mark.parametrize("family", ["mlp", "adam_residual"])
def test_lr_and_weight_decay_scale_the_learned_step(family: str) -> None:
    """``lr`` multiplies the learned step and ``weight_decay`` is decoupled:
    ``w + lr * ((w' - w) - wd * w)``, with ``w' - w`` the step at lr=1 (for any family)."""
    learner, theta = learner_and_theta(family)
    reference, model = TinyNet(), TinyNet()
    w0 = [p.detach().clone() for p in model.parameters()]
    plain = one_step(LOpt(reference.parameters(), theta=theta, learner=learner), reference)
    lr, decay = 0.3, 0.05
    opt = LOpt(model.parameters(), lr=lr, weight_decay=decay, theta=theta, learner=learner)
    changed = one_step(opt, model)
    for got, step, w in zip(changed, plain, w0, strict=True):
        assert step.abs().max() > 1e-4  # the learned step is not nothing
        torch.testing.assert_close(got, lr * (step - decay * w), rtol=1e-5, atol=1e-7)


def test_parameter_groups_lr_is_honoured() -> None:
    """Groups with lr 1e-6 and 10 move their parameters by 1e-6 and 10 times the lr=1 step (the
    issue's report: they were identical). In float64, so that a 1e-6 step is not rounded off."""
    learner, theta = learner_and_theta("mlp")
    reference, model = TinyNet().double(), TinyNet().double()
    plain = one_step(LOpt(reference.parameters(), theta=theta, learner=learner), reference)
    groups = [
        {"params": model.a.parameters(), "lr": 1e-6},
        {"params": model.b.parameters(), "lr": 10.0, "weight_decay": 0.0},
    ]
    changed = one_step(LOpt(groups, theta=theta, learner=learner), model)
    for got, step, scale in zip(changed, plain, (1e-6, 1e-6, 10.0, 10.0), strict=True):
        torch.testing.assert_close(got, scale * step, rtol=1e-6, atol=1e-12)


SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer], Any]] = {
    "LambdaLR": lambda o: lr_scheduler.LambdaLR(o, lambda e: 0.9**e),
    "MultiplicativeLR": lambda o: lr_scheduler.MultiplicativeLR(o, lambda e: 0.9),
    "StepLR": lambda o: lr_scheduler.StepLR(o, 2),
    "MultiStepLR": lambda o: lr_scheduler.MultiStepLR(o, [1, 3]),
    "ConstantLR": lambda o: lr_scheduler.ConstantLR(o, factor=0.5, total_iters=2),
    "LinearLR": lambda o: lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=4),
    "ExponentialLR": lambda o: lr_scheduler.ExponentialLR(o, 0.8),
    "PolynomialLR": lambda o: lr_scheduler.PolynomialLR(o, total_iters=5),
    "CosineAnnealingLR": lambda o: lr_scheduler.CosineAnnealingLR(o, 5),
    "CosineAnnealingWarmRestarts": lambda o: lr_scheduler.CosineAnnealingWarmRestarts(o, 3),
    "CyclicLR": lambda o: lr_scheduler.CyclicLR(o, 0.1, 1.0, 2, cycle_momentum=False),
    "OneCycleLR": lambda o: lr_scheduler.OneCycleLR(o, 1.0, total_steps=10, cycle_momentum=False),
    "SequentialLR": lambda o: lr_scheduler.SequentialLR(
        o, [lr_scheduler.ConstantLR(o, 0.5, 2), lr_scheduler.ExponentialLR(o, 0.9)], [2]
    ),
    "ChainedScheduler": lambda o: lr_scheduler.ChainedScheduler(
        [lr_scheduler.ConstantLR(o, 0.5, 2), lr_scheduler.ExponentialLR(o, 0.9)]
    ),
    "ReduceLROnPlateau": lambda o: lr_scheduler.ReduceLROnPlateau(o, patience=0, factor=0.5),
}


def test_every_lr_scheduler_is_listed() -> None:
    """SCHEDULERS covers every scheduler class torch.optim.lr_scheduler exports."""
    exported = {
        name
        for name in lr_scheduler.__all__
        if isinstance(getattr(lr_scheduler, name), type) and name != "LRScheduler"
    }
    assert exported <= set(SCHEDULERS)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_lr_schedulers_drive_the_step(name: str) -> None:
    """Each scheduler sets LOpt's lr as it sets SGD's (lr=1), and each step is that lr times the
    learned step of an lr=1 LOpt from the same state."""
    learner, theta = learner_and_theta("mlp")
    model, sgd_model = TinyNet().double(), TinyNet()
    opt = LOpt(model.parameters(), theta=theta, learner=learner)
    sgd = torch.optim.SGD(sgd_model.parameters(), lr=1.0)
    schedule, sgd_schedule = SCHEDULERS[name](opt), SCHEDULERS[name](sgd)
    for _ in range(6):
        lr = opt.param_groups[0]["lr"]
        assert lr == pytest.approx(sgd.param_groups[0]["lr"])
        shadow, shadow_opt = copy.deepcopy((model, opt))
        shadow_opt.param_groups[0]["lr"] = 1.0
        shadow_opt.functional = opt.functional
        plain = one_step(shadow_opt, shadow)
        changed = one_step(opt, model)
        for got, step in zip(changed, plain, strict=True):
            torch.testing.assert_close(got, lr * step, rtol=1e-6, atol=1e-12)
        sgd.step()
        metric = 1.0  # a loss that never improves: ReduceLROnPlateau lowers the lr
        is_plateau = isinstance(schedule, lr_scheduler.ReduceLROnPlateau)
        for s in (schedule, sgd_schedule):
            s.step(metric) if is_plateau else s.step()


def test_state_dict_round_trip_with_groups_and_a_scheduler() -> None:
    """Saving LOpt's and its scheduler's state after 3 steps and loading them into new objects
    continues exactly as uninterrupted, groups' lr and weight_decay included."""
    learner, theta = learner_and_theta("mlp")

    def make(model: TinyNet) -> tuple[LOpt, Any]:
        groups = [
            {"params": model.a.parameters(), "weight_decay": 0.01},
            {"params": model.b.parameters(), "lr": 0.5},
        ]
        opt = LOpt(groups, theta=theta, learner=learner)
        return opt, lr_scheduler.StepLR(opt, 2, gamma=0.5)

    def train(model: TinyNet, opt: LOpt, schedule: Any, steps: int) -> None:
        for _ in range(steps):
            one_step(opt, model)
            schedule.step()

    whole = TinyNet()
    train(whole, *make(whole), 7)
    first = TinyNet()
    opt, schedule = make(first)
    train(first, opt, schedule, 3)
    saved = pickle.loads(
        pickle.dumps((first.state_dict(), opt.state_dict(), schedule.state_dict()))
    )
    second = TinyNet()
    second.load_state_dict(saved[0])
    opt2, schedule2 = make(second)
    opt2.param_groups[1]["lr"] = 123.0  # overwritten by the loaded state
    opt2.load_state_dict(saved[1])
    schedule2.load_state_dict(saved[2])
    assert opt2.param_groups[1]["lr"] == opt.param_groups[1]["lr"]
    train(second, opt2, schedule2, 4)
    for a, b in zip(whole.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_no_silent_untrained_default() -> None:
    """``LOpt(params)`` is refused with one line naming the ways to say what to load;
    ``checkpoint="untrained"`` is the untrained paper optimizer, as the harness's ``lopt``."""
    model = TinyNet()
    with pytest.raises(UsageError, match="checkpoint=PATH") as info:
        LOpt(model.parameters())
    assert "\n" not in str(info.value) and "'untrained'" in str(info.value)
    opt = LOpt(model.parameters(), checkpoint="untrained")
    assert torch.equal(opt.functional.theta, LearnedOptimizer().theta)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": -1.0}, "lr must be a finite number >= 0"),
        ({"lr": float("nan")}, "lr must be"),
        ({"weight_decay": -0.1}, "weight_decay must be"),
        ({"lr": "1e-3"}, "lr must be"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(UsageError, match=match):
        LOpt(TinyNet().parameters(), checkpoint="untrained", **kwargs)
    with pytest.raises(UsageError, match="parameter group 0"):
        LOpt([{"params": TinyNet().parameters(), **kwargs}], checkpoint="untrained")


def test_old_import_path_and_shipped_checkpoint() -> None:
    """``from optimizers.learned import LOpt`` is this class; a shipped name loads."""
    from optimizers.learned import LOpt as old

    assert old is LOpt
    model = TinyNet()
    opt = LOpt(model.parameters(), "adam_residual_mnist5k_train", lr=1e-3)
    changed = one_step(opt, model)
    assert all(torch.isfinite(c).all() for c in changed)
    assert opt.functional.learner.family == "adam_residual"
