"""The built-in optimizers: trajectories against torch.optim, purity, autograd, hyperparameters."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from harness.errors import UsageError
from harness.registry import OPTIMIZERS, create_optimizer, list_optimizers
from optimizers.base import Optimizer, TorchOptimizer, learning_rate
from optimizers.torch_optim import LOpt, TorchLearnedOptimizer

STEPS = 20
BUILTINS = (
    "adam",
    "adam_cosine",
    "adamw",
    "adamw_cosine",
    "momentum",
    "nesterov",
    "rmsprop",
    "sgd",
)
#: built-ins without a learning rate: the learned optimizer (its theta comes from a checkpoint)
LEARNED = ("learned", "lopt")  # lopt: the old name of learned


def cosine_factor(decay_steps: int, warmup_steps: int, final_fraction: float):
    """The LambdaLR factor of a linear warm-up then a cosine decay to ``final_fraction``."""

    def factor(t: int) -> float:
        if t < warmup_steps:
            return (t + 1) / warmup_steps
        p = min(1.0, (t - warmup_steps) / (decay_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * (1 + math.cos(math.pi * p)) / 2

    return factor


class TorchAdamCosine(torch.optim.Adam):
    """torch.optim.Adam stepped by a LambdaLR cosine schedule with linear warm-up, written out
    here independently of optimizers/adam.py."""

    def __init__(self, params, *, decay_steps, warmup_steps, final_fraction, **kwargs):
        super().__init__(params, **kwargs)

        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self, cosine_factor(decay_steps, warmup_steps, final_fraction)
        )

    def step(self, closure=None):
        loss = super().step(closure)
        self.schedule.step()
        return loss


class TorchAdamWCosine(torch.optim.AdamW):
    """torch.optim.AdamW stepped by the LambdaLR schedule of TorchAdamCosine."""

    def __init__(self, params, *, decay_steps, warmup_steps, final_fraction, **kwargs):
        super().__init__(params, **kwargs)

        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self, cosine_factor(decay_steps, warmup_steps, final_fraction)
        )

    def step(self, closure=None):
        loss = super().step(closure)
        self.schedule.step()
        return loss


# (harness name, harness hparams, torch.optim class, torch kwargs): the same optimizer twice.
CASES: dict[str, tuple[str, dict[str, Any], type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": ("sgd", {"lr": 0.05}, torch.optim.SGD, {"lr": 0.05}),
    "sgd_wd": (
        "sgd",
        {"lr": 0.05, "weight_decay": 0.01},
        torch.optim.SGD,
        {"lr": 0.05, "weight_decay": 0.01},
    ),
    "momentum": (
        "momentum",
        {"lr": 0.02, "momentum": 0.9},
        torch.optim.SGD,
        {"lr": 0.02, "momentum": 0.9},
    ),
    "momentum_nesterov": (
        "momentum",
        {"lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
        torch.optim.SGD,
        {"lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
    ),
    "adam": (
        "adam",
        {"lr": 0.01, "beta1": 0.8, "beta2": 0.95},
        torch.optim.Adam,
        {"lr": 0.01, "betas": (0.8, 0.95)},
    ),
    "adam_wd": (
        "adam",
        {"lr": 0.01, "weight_decay": 0.1},
        torch.optim.Adam,
        {"lr": 0.01, "weight_decay": 0.1},
    ),
    "adam_cosine": (
        "adam_cosine",
        {"lr": 0.02, "decay_steps": 14, "warmup": 3, "final_fraction": 0.1},
        TorchAdamCosine,
        {"lr": 0.02, "decay_steps": 14, "warmup_steps": 3, "final_fraction": 0.1},
    ),
    "adamw_cosine": (
        "adamw_cosine",
        {"lr": 0.02, "weight_decay": 0.5, "decay_steps": 14, "warmup": 3, "final_fraction": 0.1},
        TorchAdamWCosine,
        {
            "lr": 0.02,
            "weight_decay": 0.5,
            "decay_steps": 14,
            "warmup_steps": 3,
            "final_fraction": 0.1,
        },
    ),
    "nesterov": (
        "nesterov",
        {"lr": 0.02, "momentum": 0.8, "weight_decay": 0.01},
        torch.optim.SGD,
        {"lr": 0.02, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01},
    ),
    "adamw": (
        "adamw",
        {"lr": 0.01, "weight_decay": 0.1, "eps": 1e-6},
        torch.optim.AdamW,
        {"lr": 0.01, "weight_decay": 0.1, "eps": 1e-6},
    ),
    "rmsprop": ("rmsprop", {"lr": 0.01}, torch.optim.RMSprop, {"lr": 0.01}),
    # the untrained learned optimizer against its own torch.optim form
    "learned": ("learned", {}, TorchLearnedOptimizer, {"checkpoint": "untrained"}),
    "lopt": ("lopt", {}, LOpt, {"checkpoint": "untrained"}),  # the old names
    "rmsprop_centered": (
        "rmsprop",
        {"lr": 0.01, "centered": True, "alpha": 0.9},
        torch.optim.RMSprop,
        {"lr": 0.01, "centered": True, "alpha": 0.9},
    ),
    "rmsprop_momentum": (
        "rmsprop",
        {"lr": 0.005, "momentum": 0.9},
        torch.optim.RMSprop,
        {"lr": 0.005, "momentum": 0.9},
    ),
    "rmsprop_centered_momentum_wd": (
        "rmsprop",
        {"lr": 0.005, "momentum": 0.5, "centered": True, "weight_decay": 0.01},
        torch.optim.RMSprop,
        {"lr": 0.005, "momentum": 0.5, "centered": True, "weight_decay": 0.01},
    ),
}


# -- a small multi-tensor problem -------------------------------------------------------------
def mlp_params(seed: int = 0) -> tuple[torch.Tensor, ...]:
    """An MLP 5-7-3's weights and biases (four tensors, four shapes), float32."""
    g = torch.Generator().manual_seed(seed)
    shapes = ((7, 5), (7,), (3, 7), (3,))
    return tuple(torch.randn(shape, generator=g) * 0.5 for shape in shapes)


def mlp_loss(params: tuple[torch.Tensor, ...], step: int) -> torch.Tensor:
    """Mean squared error on a minibatch fixed by ``step``: the gradients change every step."""
    g = torch.Generator().manual_seed(1000 + step)
    w1, b1, w2, b2 = params
    x = torch.randn(8, 5, generator=g).to(w1.dtype)
    y = torch.randn(8, 3, generator=g).to(w1.dtype)
    return ((torch.tanh(x @ w1.T + b1) @ w2.T + b2 - y) ** 2).mean()


def grads_at(params: tuple[torch.Tensor, ...], step: int) -> tuple[torch.Tensor, ...]:
    leaves = tuple(p.detach().requires_grad_(True) for p in params)
    return torch.autograd.grad(mlp_loss(leaves, step), leaves)


def torch_trajectory(
    optimizer_class: type[torch.optim.Optimizer], kwargs: dict[str, Any]
) -> list[tuple[torch.Tensor, ...]]:
    """The parameters after each of ``STEPS`` steps of a torch.optim optimizer."""
    params = [p.clone().requires_grad_(True) for p in mlp_params()]
    opt = optimizer_class(params, **kwargs)
    trajectory = []
    for step in range(STEPS):
        opt.zero_grad()
        mlp_loss(tuple(params), step).backward()
        opt.step()
        trajectory.append(tuple(p.detach().clone() for p in params))
    return trajectory


def harness_trajectory(opt: Optimizer) -> list[tuple[torch.Tensor, ...]]:
    """The parameters after each of ``STEPS`` steps of a harness optimizer."""
    params = mlp_params()
    state = opt.init(params)
    assert state["step"] == 0
    trajectory = []
    for step in range(STEPS):
        params, state = opt.update(grads_at(params, step), state, params)
        assert state["step"] == step + 1
        trajectory.append(tuple(p.detach().clone() for p in params))
    return trajectory


def assert_same_trajectory(
    ours: list[tuple[torch.Tensor, ...]], theirs: list[tuple[torch.Tensor, ...]]
) -> None:
    start = mlp_params()
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert x.dtype == y.dtype == torch.float32
            torch.testing.assert_close(
                x, y, atol=1e-6, rtol=0, msg=lambda m, s=step, i=i: f"step {s}, tensor {i}: {m}"
            )
    # The problem is not degenerate: every tensor moved.
    assert all(not torch.equal(p, q) for p, q in zip(start, ours[-1], strict=True))


# -- trajectories -----------------------------------------------------------------------------
@pytest.mark.parametrize("case", list(CASES))
def test_trajectory_matches_torch_optim(case: str) -> None:
    """Each built-in follows its torch.optim counterpart to 1e-6 at every one of 20 steps,
    on four float32 tensors of different shapes, and counts its steps in state["step"]."""
    name, hparams, torch_class, torch_kwargs = CASES[case]
    ours = harness_trajectory(create_optimizer(name, **hparams))
    assert_same_trajectory(ours, torch_trajectory(torch_class, torch_kwargs))


def test_every_builtin_has_a_trajectory_case() -> None:
    """The trajectory cases above cover every built-in optimizer (a new one needs a case)."""
    builtins = {
        n
        for n in list_optimizers()
        if OPTIMIZERS.get(n).source == "builtin"
        and not getattr(OPTIMIZERS.get(n).factory, "pretrained_checkpoint", None)
    }  # shipped checkpoints are lopt with a fixed theta: tests/test_pretrained.py covers them
    assert builtins == set(BUILTINS) | set(LEARNED)
    assert {case[0] for case in CASES.values()} == builtins


def test_torch_optimizer_wrap_matches_adagrad() -> None:
    """TorchOptimizer.wrap(Adagrad) follows torch.optim.Adagrad and counts steps."""
    adagrad = TorchOptimizer.wrap(torch.optim.Adagrad, learning_rate(0.01))
    assert issubclass(adagrad, TorchOptimizer)
    assert adagrad.pure is False
    opt = adagrad()
    assert opt.hparams == {"lr": 0.01}
    ours = harness_trajectory(opt)
    assert_same_trajectory(ours, torch_trajectory(torch.optim.Adagrad, {"lr": 0.01}))


def test_torch_optimizer_wrap_leaves_initial_params_alone() -> None:
    """The adapter works on its own copies: the params given to ``init`` are not modified."""
    opt = TorchOptimizer.wrap(torch.optim.Adagrad, learning_rate(0.1))()
    params = mlp_params()
    before = tuple(p.clone() for p in params)
    state = opt.init(params)
    new_params, _ = opt.update(grads_at(params, 0), state, params)
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
    assert not any(torch.equal(p, q) for p, q in zip(new_params, before, strict=True))


# -- purity -----------------------------------------------------------------------------------
def _flat_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _flat_tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _flat_tensors(v)]
    return []


@pytest.mark.parametrize("case", list(CASES))
def test_update_is_pure(case: str) -> None:
    """``update`` of a built-in leaves its grads, state and params unchanged (three steps in,
    so every state buffer is non-zero), and repeating it gives the same result."""
    name, hparams, _, _ = CASES[case]
    opt = create_optimizer(name, **hparams)
    assert opt.pure is True
    params = mlp_params()
    state = opt.init(params)
    for step in range(3):
        params, state = opt.update(grads_at(params, step), state, params)
    grads = grads_at(params, 3)
    inputs = (grads, state, params)
    snapshot = [t.clone() for t in _flat_tensors(inputs)]
    state_keys, step_before = set(state), state["step"]

    first, first_state = opt.update(grads, state, params)
    second, _ = opt.update(grads, state, params)

    assert all(torch.equal(t, s) for t, s in zip(_flat_tensors(inputs), snapshot, strict=True))
    assert set(state) == state_keys and state["step"] == step_before
    assert first_state["step"] == step_before + 1
    assert set(first_state) == state_keys
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert not any(p is q for p, q in zip(first, params, strict=True))


# -- autograd through update ------------------------------------------------------------------
def test_sgd_jacobian_wrt_old_params_is_analytical() -> None:
    """Autograd through sgd's update: with g = A w (computed in the graph), the Jacobian of
    w' = w - lr (g + wd w) with respect to w is I - lr (A + wd I)."""
    lr, wd, dim = 0.1, 0.05, 4
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(dim, dim, generator=gen)
    hessian = m @ m.T + torch.eye(dim)
    opt = create_optimizer("sgd", lr=lr, weight_decay=wd)
    w = torch.randn(dim, generator=gen, requires_grad=True)
    (g,) = torch.autograd.grad(0.5 * w @ hessian @ w, (w,), create_graph=True)
    (new_w,), _ = opt.update((g,), opt.init((w,)), (w,))
    rows = [torch.autograd.grad(new_w[i], w, retain_graph=True)[0] for i in range(dim)]
    expected = torch.eye(dim) - lr * (hessian + wd * torch.eye(dim))
    torch.testing.assert_close(torch.stack(rows), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_gradcheck_through_update(case: str) -> None:
    """For every built-in, autograd's derivative of the new params with respect to the old ones
    (gradients depending on the params, state from two earlier steps) matches finite
    differences in float64."""
    name, hparams, _, _ = CASES[case]
    opt = create_optimizer(name, **hparams)
    params = tuple(p.double() for p in mlp_params())
    state = opt.init(params)
    for step in range(2):
        params, state = opt.update(grads_at(params, step), state, params)

    def step_fn(*old: torch.Tensor) -> tuple[torch.Tensor, ...]:
        grads = torch.autograd.grad(mlp_loss(old, 2), old, create_graph=True)
        new, _ = opt.update(grads, state, old)
        return new

    inputs = tuple(p.detach().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(step_fn, inputs, atol=1e-5, rtol=1e-4)


# -- hyperparameter declarations and validation -----------------------------------------------
@pytest.mark.parametrize("name", BUILTINS)
def test_lr_declared_log_uniform(name: str) -> None:
    """Every built-in declares lr > 0, tuned, searched log-uniformly in [1e-5, 1]."""
    cls = OPTIMIZERS.get(name).factory
    lr = cls.hparam("lr")
    assert lr.tune is True
    high = 10.0 if name == "sgd" else 1.0  # plain SGD's best rate can exceed 1
    assert lr.search_space() == {"type": "float", "low": 1e-5, "high": high, "log": True}
    with pytest.raises(UsageError):
        lr.validate(0.0, name)


@pytest.mark.parametrize("name", BUILTINS)
def test_defaults_and_search_bounds_validate(name: str) -> None:
    """Defaults validate (so ``create_optimizer(name)`` works) and so do the ends of every
    search range, so a tuner never proposes an invalid value."""
    cls = OPTIMIZERS.get(name).factory
    opt = create_optimizer(name)
    assert opt.hparams == cls.defaults()
    assert [spec.name for spec in cls.hparam_specs] == list(opt.hparams)
    for spec in cls.hparam_specs:
        assert spec.validate(spec.default, name) == spec.default
        assert type(spec.validate(spec.default, name)) is spec.type
        if spec.type is not bool:
            assert spec.low is not None and spec.high is not None and spec.low < spec.high
            spec.validate(spec.low, name)
            spec.validate(spec.high, name)


@pytest.mark.parametrize(
    ("name", "hparams", "expected"),
    [
        ("sgd", {"lr": -0.1}, ["sgd", "lr", "> 0", "-0.1"]),
        ("adam", {"beta1": 1.0}, ["adam", "beta1", ">= 0 and < 1", "1.0"]),
        ("rmsprop", {"alpha": True}, ["rmsprop", "alpha", "number", "True"]),
        ("momentum", {"nesterov": 1}, ["momentum", "nesterov", "true or false"]),
        ("adamw", {"lr": float("nan")}, ["adamw", "lr", "finite"]),
        ("sgd", {"betas": (0.9, 0.99)}, ["sgd", "betas", "lr, weight_decay"]),
        ("adam", {"lr": "0.1"}, ["adam", "lr", "number"]),
    ],
)
def test_invalid_hparams_raise_one_line_usage_error(
    name: str, hparams: dict[str, Any], expected: list[str]
) -> None:
    """A bad hyperparameter fails at construction with one line naming the optimizer, the
    hyperparameter and what is allowed."""
    with pytest.raises(UsageError) as info:
        create_optimizer(name, **hparams)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(name)
    for fragment in expected:
        assert fragment in message


def test_int_given_to_float_is_converted() -> None:
    """An int for a float hyperparameter is accepted and stored as a float."""
    opt = create_optimizer("sgd", lr=1)
    assert opt.hparams["lr"] == 1.0 and type(opt.hparams["lr"]) is float


def test_wrapped_optimizer_validates_too() -> None:
    """The adapter validates its declared hyperparameters like any optimizer."""
    adagrad = TorchOptimizer.wrap(torch.optim.Adagrad, learning_rate(0.01))
    with pytest.raises(UsageError, match=r"^Adagrad: lr must be > 0"):
        adagrad(lr=-1.0)
    with pytest.raises(UsageError, match="takes no hyperparameter 'momentum'; it takes: lr"):
        adagrad(momentum=0.9)
