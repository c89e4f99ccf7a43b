"""The learned optimizer: its arithmetic against method.md, the plugin, torch.optim, checkpoints."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import pytest
import torch
from test_torch_optim import TinyNet  # the torch.optim class's test model

from harness.errors import UsageError
from harness.registry import OPTIMIZERS, create_optimizer
from harness.runner import run
from optimizers.checkpoint import load_lopt_checkpoint, save_lopt_checkpoint
from optimizers.learned import (
    LearnedOptimizer,
    LOpt,
    LOptArchitecture,
    MLPLearner,
    init_theta,
    param_layout,
    unpack_theta,
)

SHAPES = [(4, 3), (3,), (2, 2, 2), (1,)]


pytestmark = pytest.mark.usefixtures("one_thread")


def random_theta(arch: LOptArchitecture, seed: int = 0, scale: float = 0.5) -> torch.Tensor:
    """Every weight and bias random (init_theta has zero biases, which would hide bugs)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(arch.num_theta, generator=generator) * scale


def tensors(seed: int, shapes=SHAPES, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(s, generator=generator, dtype=dtype) for s in shapes)


# -- the method, literally -------------------------------------------------------------------------
def reference_update(arch, theta, grads, params, moments, step):
    """method.md, one tensor and one column at a time, in float64: returns new params and the
    new accumulators (per tensor, ``(A, *shape)``)."""
    w = [x.double() for x in unpack_theta(arch, theta.double())]
    first = torch.cat([w[0], w[1]], dim=1)  # (h1, F + 11): per-parameter then time inputs
    layers = [(first, w[2])] + [(w[i], w[i + 1]) for i in range(3, len(w), 2)]
    decays = arch.decays
    times = [math.tanh(step / tau - 1.0) for tau in arch.time_scales]
    new_params, new_moments = [], []
    for g, p, acc in zip(grads, params, moments, strict=True):
        g, p = g.double().reshape(-1), p.double().reshape(-1)
        acc = acc.double().reshape(acc.shape[0], -1)
        m = [b * acc[k] + (1 - b) * g for k, b in enumerate(decays)]
        columns = [g, p, *m]
        state = list(m)
        if arch.second_moments:
            d = len(decays)
            v = [b * acc[d + k] + (1 - b) * g * g for k, b in enumerate(decays)]
            columns += v + [
                mk / torch.sqrt(vk + arch.moment_eps) for mk, vk in zip(m, v, strict=True)
            ]
            state += v
        normalised = [c / torch.sqrt((c * c).mean() + arch.rms_eps) for c in columns]
        inputs = torch.stack(normalised + [torch.full_like(g, t) for t in times], dim=1)
        h = inputs
        for index, (weight, bias) in enumerate(layers):
            h = h @ weight.T + bias
            if index < len(layers) - 1:
                h = torch.relu(h)
        d, s = h[:, 0], h[:, 1]
        new_params.append(p - arch.step_mult * d * torch.exp(arch.exp_mult * s))
        new_moments.append(torch.stack(state))
    return new_params, new_moments


@pytest.mark.parametrize("second_moments", [False, True])
def test_update_follows_the_method(second_moments: bool) -> None:
    """Three updates of the vectorised optimizer (flat features, per-tensor RMS by segment, time
    features folded into a bias) equal method.md computed column by column in float64."""
    arch = LOptArchitecture(second_moments=second_moments)
    assert arch.num_inputs == (31 if second_moments else 19)
    theta = random_theta(arch, scale=0.3)
    opt = LearnedOptimizer.from_theta(theta, arch)
    params = tensors(1)
    state = opt.init(params)
    moments = [torch.zeros(arch.num_accumulators, *p.shape) for p in params]
    ref_params = [p.double() for p in params]
    for step in range(3):
        grads = tensors(10 + step)
        params, state = opt.update(grads, state, params)
        ref_params, moments = reference_update(arch, theta, grads, ref_params, moments, step)
        for ours, ref in zip(params, ref_params, strict=True):
            torch.testing.assert_close(ours.double().reshape(-1), ref, rtol=1e-5, atol=1e-6)
    assert state["step"] == 3
    flat_moments = torch.cat([m.reshape(arch.num_accumulators, -1) for m in moments], dim=1)
    torch.testing.assert_close(state["accumulators"].double(), flat_moments, rtol=1e-5, atol=1e-6)


def test_no_grad_path_reuses_buffers_with_the_same_arithmetic() -> None:
    """Under no_grad (the runner) update reuses its intermediate buffers across calls and
    computes exactly what the differentiable path computes; results never alias the buffers."""
    arch = LOptArchitecture()
    opt = LearnedOptimizer.from_theta(random_theta(arch, scale=0.3), arch)
    params = tensors(1)
    state = opt.init(params)
    for step in range(3):
        grads = tensors(20 + step)
        expected, expected_state = opt.update(grads, state, params)  # grad mode: no buffers
        with torch.no_grad():
            first, first_state = opt.update(grads, state, params)
            second, _ = opt.update(grads, state, params)  # reuses the buffers
        assert opt.learner._workspace and all(
            torch.equal(a, b) for a, b in zip(first, second, strict=True)
        )
        for a, b in zip(expected, first, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(expected_state["accumulators"], first_state["accumulators"])
        params, state = first, first_state
    with pytest.raises(ValueError, match="no_grad"):
        opt.learner.apply(opt.theta, grads, state, params, reuse_buffers=True)


def test_default_architecture_matches_the_paper() -> None:
    """19 -> 32 -> 32 -> 2, about 1.8k weights; the untrained steps are small (0.001 scale)."""
    arch = LOptArchitecture()
    assert arch.num_inputs == 19
    assert arch.theta_shapes[0] == (32, 8) and arch.theta_shapes[1] == (32, 11)
    assert arch.theta_shapes[-2] == (2, 32)
    assert arch.num_theta == 19 * 32 + 32 + 32 * 32 + 32 + 32 * 2 + 2 == 1762
    opt = create_optimizer("lopt")
    params = tensors(0)
    new, _ = opt.update(tensors(1), opt.init(params), params)
    step = max(float((a - b).abs().max()) for a, b in zip(new, params, strict=True))
    assert 0 < step < 0.05


def test_update_is_pure_and_differentiable() -> None:
    """update never modifies its inputs; gradients flow to theta, the gradients and the
    parameters (float64 gradcheck on a small architecture)."""
    arch = LOptArchitecture(hidden_sizes=(3,), step_mult=0.1, exp_mult=0.1)
    opt = LearnedOptimizer.from_theta(random_theta(arch), arch)
    params, grads = tensors(0, dtype=torch.float64), tensors(1, dtype=torch.float64)
    state = opt.init(params)
    state["accumulators"] = torch.randn_like(state["accumulators"])
    copies = [t.clone() for t in (*params, *grads, state["accumulators"])]
    opt.update(grads, state, params)
    for before, after in zip(copies, (*params, *grads, state["accumulators"]), strict=True):
        assert torch.equal(before, after)

    theta = random_theta(arch).double().requires_grad_(True)
    p = tuple(t.clone().requires_grad_(True) for t in params)
    g = tuple(t.clone().requires_grad_(True) for t in grads)

    def f(theta, *pg):
        new, st = opt.learner.apply(theta, pg[len(p) :], {**state, "step": 7}, pg[: len(p)])
        return (*new, st["accumulators"])

    assert torch.autograd.gradcheck(f, (theta, *p, *g), eps=1e-6, atol=1e-5)


def test_vmap_over_theta_equals_a_loop() -> None:
    """Under torch.func.vmap (one theta, gradient and step per example) the update equals
    separate calls: meta-training's vmap mode relies on it."""
    arch = LOptArchitecture(hidden_sizes=(8, 8))
    opt = LearnedOptimizer.from_theta(init_theta(arch), arch)
    thetas = torch.stack([random_theta(arch, seed) for seed in range(3)])
    grads = [tensors(10 + i) for i in range(3)]
    params = tensors(0)
    state = opt.init(params)
    steps = torch.tensor([0.0, 5.0, 400.0])

    def one(theta, grad, step):
        new, st = opt.learner.apply(
            theta, grad, {"step": step, "accumulators": state["accumulators"]}, params
        )
        return new, st["accumulators"]

    batched_grads = tuple(torch.stack(parts) for parts in zip(*grads, strict=True))
    new_b, acc_b = torch.func.vmap(one)(thetas, batched_grads, steps)
    for i in range(3):
        new, acc = one(thetas[i], grads[i], int(steps[i]))
        for a, b in zip(new, new_b, strict=True):
            torch.testing.assert_close(a, b[i], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(acc, acc_b[i])


# -- the plugin and torch.optim --------------------------------------------------------------------
def test_learned_is_registered_with_a_string_checkpoint_hparam_and_lopt_still_works() -> None:
    """`optimizer=learned optimizer.checkpoint=PATH`: a registered built-in with one str hparam;
    the old name `lopt` builds the same optimizer under its own name (bench rows say lopt)."""
    assert OPTIMIZERS.get("learned").factory is LearnedOptimizer
    spec = LearnedOptimizer.hparam("checkpoint")
    assert spec.type is str and spec.default == ""
    new, old = create_optimizer("learned"), create_optimizer("lopt")
    assert new.hparams == old.hparams == {"checkpoint": ""}
    assert (new.name, old.name) == ("learned", "lopt") and isinstance(old, LearnedOptimizer)
    assert "alias of learned" in OPTIMIZERS.get("lopt").description
    params, grads = tensors(0), tensors(1)
    for a, b in zip(
        new.update(grads, new.init(params), params)[0],
        old.update(grads, old.init(params), params)[0],
        strict=True,
    ):
        assert torch.equal(a, b)


def test_a_learner_with_a_fixed_theta_is_an_ordinary_optimizer() -> None:
    """opt_fn(learner, theta) has the functional contract only (no second `apply`), and its
    update is the learner's apply with that theta, for every built-in family; the paper's
    family answers to `metz_mlp` and to its old name `mlp` (recorded as typed)."""
    from harness.registry import LEARNERS, create_learner
    from optimizers.base import Optimizer
    from optimizers.learned import opt_fn
    from optimizers.metz_mlp import MetzMLP

    assert create_learner("metz_mlp").family == "metz_mlp"
    old = create_learner("mlp")
    assert old.family == "mlp" and isinstance(old, MetzMLP) and isinstance(old, MLPLearner)
    assert "alias of metz_mlp" in LEARNERS.get("mlp").description
    params, grads = tensors(0), tensors(1)
    for family in ("metz_mlp", "adam_residual", "nominal_mlp", "hparams"):
        learner = create_learner(family)
        theta = learner.init_theta(4) + 0.01 * torch.randn(learner.num_theta)
        optimizer = opt_fn(learner, theta)
        assert isinstance(optimizer, Optimizer) and not hasattr(optimizer, "apply")
        got, _ = optimizer.update(grads, optimizer.init(params), params)
        want, _ = learner.apply(theta, grads, learner.init(params), params)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


#: written by `lopt bench task=digits_mlp optimizer=lopt,lopt_mnist5k_train,
#: adam_residual_mnist5k_train steps=30 seeds=1` at commit 708c6d5, before the renames of
#: issue 26 item 5: run id and final test loss of each run
ROWS_BEFORE_THE_RENAMES = {
    "lopt": ("digits_mlp-lopt-s0-39d02d975d", 2.353976806640625),
    "lopt_mnist5k_train": ("digits_mlp-lopt_mnist5k_train-s0-38ea9a08fc", 2.0014896240234377),
    "adam_residual_mnist5k_train": (
        "digits_mlp-adam_residual_mnist5k_train-s0-7ff6e48c54",
        0.15427316284179687,
    ),
}


def test_bench_rows_of_the_shipped_learned_optimizers_are_unchanged(tmp_path: Path) -> None:
    """The old names still run and their rows say what they said before the renames (same
    optimizer column, run id and losses); `learned` computes exactly what `lopt` does."""
    import pandas as pd

    from harness.cli import main

    out = tmp_path / "rows.csv"
    names = ",".join([*ROWS_BEFORE_THE_RENAMES, "learned"])
    assert main(["bench", "task=digits_mlp", f"optimizer={names}", "steps=30", f"out={out}"]) == 0
    frame = pd.read_csv(out)
    final = frame[(frame.split == "test") & (frame.metric == "loss") & (frame.step == 30)]
    got = {row.optimizer: (row.run_id, row.value) for row in final.itertuples()}
    for name, (run_id, loss) in ROWS_BEFORE_THE_RENAMES.items():
        assert got[name][0] == run_id
        assert got[name][1] == pytest.approx(loss, rel=1e-6)
    by_name = {name: rows.value.to_numpy() for name, rows in frame.groupby("optimizer")}
    assert (by_name["learned"] == by_name["lopt"]).all()


@pytest.mark.slow
def test_torch_optim_and_functional_give_the_same_trajectory() -> None:
    """LOpt in a plain PyTorch loop (backward, step, zero_grad) and LearnedOptimizer through
    the functional contract visit the same parameters at each of 25 steps."""
    arch = LOptArchitecture(step_mult=0.01)
    theta = random_theta(arch, scale=0.2)
    generator = torch.Generator().manual_seed(3)
    data = [
        (torch.randn(16, 5, generator=generator), torch.randn(16, 1, generator=generator))
        for _ in range(25)
    ]

    model = TinyNet()
    opt = LOpt(model.parameters(), theta=theta, learner=arch)
    torch_path = []
    for x, y in data:
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        torch_path.append([p.detach().clone() for p in model.parameters()])

    functional = LearnedOptimizer.from_theta(theta, arch)
    net = TinyNet()
    names = [n for n, _ in net.named_parameters()]
    params = tuple(p.detach() for p in net.parameters())
    state = functional.init(params)
    for (x, y), expected in zip(data, torch_path, strict=True):
        p = tuple(t.requires_grad_(True) for t in params)
        out = torch.func.functional_call(net, dict(zip(names, p, strict=True)), (x,))
        grads = torch.autograd.grad(((out - y) ** 2).mean(), p)
        with torch.no_grad():
            params, state = functional.update(grads, state, p)
        for a, b in zip(params, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert opt.state[model.a.weight]["step"] == 25


def test_torch_optim_state_dict_resumes_exactly() -> None:
    """Saving LOpt's state_dict after 5 steps and loading it into a new LOpt continues as if
    uninterrupted; the accumulators are per-parameter views of one flat buffer."""
    theta = random_theta(LOptArchitecture(), scale=0.2)
    x, y = torch.randn(8, 5), torch.randn(8, 1)

    def train(model, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()

    whole = TinyNet()
    train(whole, LOpt(whole.parameters(), theta=theta), 10)

    first = TinyNet()
    opt = LOpt(first.parameters(), theta=theta)
    train(first, opt, 5)
    acc = opt.state[first.a.weight]["accumulators"]
    assert acc.shape == (6, 20) and acc.untyped_storage().data_ptr() == (
        opt.state[first.b.bias]["accumulators"].untyped_storage().data_ptr()
    )
    saved = pickle.loads(pickle.dumps((first.state_dict(), opt.state_dict())))
    second = TinyNet()
    second.load_state_dict(saved[0])
    opt2 = LOpt(second.parameters(), theta=theta)
    opt2.load_state_dict(saved[1])
    train(second, opt2, 5)
    for a, b in zip(whole.parameters(), second.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


# -- checkpoints -----------------------------------------------------------------------------------
def save(path: Path, theta=None, arch=None) -> Path:
    arch = arch or LOptArchitecture(hidden_sizes=(8,))
    theta = random_theta(arch) if theta is None else theta
    return save_lopt_checkpoint(
        path, theta, MLPLearner.of(arch), {"task": "quadratic", "outer_step": 3}
    )


def test_checkpoint_round_trip_and_plugin(tmp_path: Path) -> None:
    """A saved checkpoint loads (weights only) with its theta, architecture and provenance, and
    `lopt` with optimizer.checkpoint=PATH trains a task through the runner."""
    arch = LOptArchitecture(hidden_sizes=(8,), second_moments=True)
    theta = random_theta(arch)
    path = save(tmp_path / "ck" / "lopt.pt", theta, arch)
    loaded = load_lopt_checkpoint(path)
    assert torch.equal(loaded.theta, theta) and loaded.learner.architecture == arch
    assert loaded.family == "mlp"
    assert loaded.meta_training["task"] == "quadratic" and loaded.git_commit
    assert not list(path.parent.glob(".*tmp"))  # the atomic write left nothing behind

    opt = create_optimizer("lopt", checkpoint=str(path))
    assert torch.equal(opt.theta, theta) and opt.architecture == arch
    result = run("quadratic", "lopt", {"checkpoint": str(path)}, steps=20, warmup_steps=1)
    assert result.status == "completed" and math.isfinite(result.final("train"))


class Boom:
    """A pickle payload that would run code on load."""

    def __reduce__(self):
        return (print, ("this must never run",))


def raw_checkpoint(path: Path, theta: torch.Tensor) -> None:
    """A checkpoint file written by hand (save_lopt_checkpoint would not write a bad theta)."""
    arch = LOptArchitecture(hidden_sizes=(8,))
    payload = {
        "format": "lopt-harness/learned-optimizer",
        "format_version": 1,
        "theta": theta,
        "architecture": arch.to_dict(),
        "meta_training": {},
    }
    torch.save(payload, path)


NUM_THETA_8 = LOptArchitecture(hidden_sizes=(8,)).num_theta


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"\x00garbage" * 10), "corrupted or not a checkpoint"),
        (lambda p: torch.save({"Boom": Boom()}, p), "could run code"),
        (lambda p: torch.save({"theta": torch.zeros(3)}, p), "no format tag"),
        (lambda p: torch.save({"format": "something/else"}, p), "is not a learned-optimizer"),
        (
            lambda p: torch.save(
                {"format": "lopt-harness/learned-optimizer", "format_version": 99}, p
            ),
            "format version 99",
        ),
        (lambda p: raw_checkpoint(p, torch.zeros(7)), "theta has 7 values, its learner"),
        (lambda p: raw_checkpoint(p, torch.full((NUM_THETA_8,), math.nan)), "non-finite"),
    ],
    ids=["missing", "garbage", "code", "no-format", "other-format", "newer", "size", "nan"],
)
def test_bad_checkpoints_are_one_line_usage_errors(
    tmp_path: Path, make, message: str, capsys
) -> None:
    """Every unusable checkpoint is refused with one line naming the problem; none executes
    code (weights_only loading)."""
    path = tmp_path / "lopt.pt"
    make(path)
    with pytest.raises(UsageError) as info:
        create_optimizer("lopt", checkpoint=str(path))
    text = str(info.value)
    assert message in text and "\n" not in text
    assert "must never run" not in capsys.readouterr().out


def test_architecture_from_bad_data_is_refused() -> None:
    with pytest.raises(UsageError, match="unknown architecture field"):
        LOptArchitecture.from_dict({"hidden": [3]})
    with pytest.raises(UsageError, match="hidden_sizes"):
        LOptArchitecture.from_dict({"hidden_sizes": [0]})


def test_layout_is_cached_and_refuses_empty_tensors() -> None:
    params = tensors(0)
    assert param_layout(params) is param_layout(tensors(1))
    with pytest.raises(UsageError, match="non-empty"):
        param_layout((torch.zeros(0), torch.zeros(3)))
