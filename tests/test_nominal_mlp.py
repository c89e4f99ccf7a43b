"""nominal_mlp: Adam at its initial theta; the compiled update equals the eager one; the batched
step equals B single updates; the step's scale behaviour; torch.optim use; checkpoints."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from harness.errors import UsageError
from harness.registry import create_learner, create_optimizer
from optimizers import nominal_kernel
from optimizers.checkpoint import load_lopt_checkpoint, save_lopt_checkpoint
from optimizers.learned import LOpt
from optimizers.nominal_mlp import NominalMLP

pytestmark = pytest.mark.usefixtures("one_thread")

#: the compiled tests' settings: both layers' code paths, a smaller graph than the default 8
#: units (compiles in a third of the time); the benchmarks compile the default
SMALL = {"lr0": 1e-2, "hidden": 3, "layers": 2}


@functools.cache
def _inductor_problem() -> str:
    """Why torch.compile (inductor) cannot run here, or "" when it can."""
    try:
        compiled = torch.compile(lambda x: x * 2.0 + 1.0, fullgraph=True)
        if not torch.equal(compiled(torch.ones(3)), torch.full((3,), 3.0)):
            return "torch.compile gave a wrong result"
    except Exception as exc:  # no C++ compiler, unsupported platform, ...
        return f"torch.compile (inductor) is unavailable here: {type(exc).__name__}: {exc}"
    return ""


def requires_inductor(test):  # type: ignore[no-untyped-def]
    """Skip ``test`` with the reason when inductor cannot compile here; mark it slow (the
    first compile of the fused update takes 20-90 s; later ones hit the process cache)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        problem = _inductor_problem()
        if problem:
            pytest.skip(problem)
        return test(*args, **kwargs)

    return pytest.mark.slow(wrapper)


def _problem(seed: int, dtype: torch.dtype = torch.float32) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Parameters of three tensors, gradients, and a non-trivial state's moments."""
    gen = torch.Generator().manual_seed(seed)
    shapes = ((7, 5), (5,), (3, 7))
    params = tuple(torch.randn(s, generator=gen, dtype=dtype) for s in shapes)
    grads = tuple(torch.randn(s, generator=gen, dtype=dtype) for s in shapes)
    n = sum(p.numel() for p in params)
    moments = torch.randn(4, n, generator=gen, dtype=dtype) * 0.3
    moments[3] = torch.rand(n, generator=gen, dtype=dtype) + 0.1  # v > 0
    return params, grads, (moments,)


def _trained_theta(learner: NominalMLP, seed: int, rows: int | None = None) -> torch.Tensor:
    """A theta away from Adam: every block random (the schedule and the last layer too)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (learner.num_theta,) if rows is None else (rows, learner.num_theta)
    return learner.init_theta(seed) + 0.3 * torch.randn(shape, generator=gen)


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


# -- Adam at the initial theta ---------------------------------------------------------------------
def test_lopt_in_a_plain_torch_loop_is_torch_adam_at_the_initial_theta() -> None:
    """LOpt (torch.optim) with the initial theta follows torch.optim.Adam for 30 steps; with
    another theta it still trains (the loss falls) and keeps its moments per parameter."""
    torch.manual_seed(0)
    data, target = torch.randn(64, 6), torch.randn(64, 1)

    def mlp() -> torch.nn.Sequential:
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    model, reference = mlp(), mlp()
    reference.load_state_dict(model.state_dict())
    learner = create_learner("nominal_mlp", lr0=1e-2, horizon=30, compile=False)
    ours = LOpt(model.parameters(), theta=learner.init_theta(0), learner=learner)
    adam = torch.optim.Adam(reference.parameters(), lr=1e-2)
    for _ in range(30):
        for net, opt in ((model, ours), (reference, adam)):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(data), target).backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert ours.state[model[0].weight]["moments"].shape == (4, 48)

    other = mlp()
    theta = learner.init_theta(1)
    theta[-learner.settings.hidden :] = 0.05  # a small learned term
    opt = LOpt(other.parameters(), theta=theta, learner=learner)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(other(data), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


# -- compiled == eager, batched == single ----------------------------------------------------------
@requires_inductor
def test_the_compiled_update_equals_the_eager_one() -> None:
    """A theta away from Adam, a non-trivial state, several steps: fused (compiled) and eager
    agree to 1e-6, for one problem and for a batch; a new parameter count does not recompile."""
    eager = create_learner("nominal_mlp", **SMALL, horizon=20, compile=False)
    fused = create_learner("nominal_mlp", **SMALL, horizon=20, compile=True)
    theta = _trained_theta(eager, 3)
    for seed in (0, 1):  # the second has other sizes: the same compiled code
        params, grads, (moments,) = _problem(seed)
        if seed == 1:
            params, grads = params[:2], grads[:2]
            moments = moments[:, : sum(p.numel() for p in params)]
        states = [{"step": 4, "moments": moments}, {"step": 4, "moments": moments}]
        news = [params, params]
        with torch.no_grad():
            for _ in range(3):
                for i, learner in enumerate((eager, fused)):
                    news[i], states[i] = learner.apply(theta, grads, states[i], news[i])
        for a, b in zip(news[0], news[1], strict=True):
            _close(a, b)
        _close(states[0]["moments"], states[1]["moments"])
    assert any(v is not None for v in nominal_kernel._COMPILED.values())  # it did compile


def _batched_vs_single(compile: bool) -> None:
    """B = 3 problems at staggered steps and horizons, each its own theta row: batched_step
    equals three single apply calls to 1e-6; its inputs are untouched."""
    base = create_learner("nominal_mlp", **SMALL, compile=compile)
    thetas = _trained_theta(base, 7, rows=3)
    steps, horizons = torch.tensor([0, 5, 40]), torch.tensor([10, 50, 100])
    problems = [_problem(seed) for seed in range(3)]
    segments = tuple(p.numel() for p in problems[0][0])
    w = torch.stack([torch.cat([p.reshape(-1) for p in params]) for params, _, _ in problems])
    g = torch.stack([torch.cat([x.reshape(-1) for x in grads]) for _, grads, _ in problems])
    moments = torch.stack([m for _, _, (m,) in problems])
    moments[0] = 0.0  # the first problem starts
    copies = [t.clone() for t in (thetas, w, g, moments)]
    with torch.no_grad():
        new_w, new_state = base.batched_step(
            thetas, w, g, {"moments": moments}, steps, horizons, segments
        )
    for original, copy in zip((thetas, w, g, moments), copies, strict=True):
        assert torch.equal(original, copy)
    for b, (params, grads, _) in enumerate(problems):
        single = create_learner("nominal_mlp", **SMALL, horizon=int(horizons[b]), compile=compile)
        state = {"step": int(steps[b]), "moments": moments[b]}
        with torch.no_grad():
            new_params, new_single = single.apply(thetas[b], grads, state, params)
        _close(new_w[b], torch.cat([p.reshape(-1) for p in new_params]))
        _close(new_state["moments"][b], new_single["moments"])


def test_the_batched_step_equals_single_updates_eager() -> None:
    _batched_vs_single(compile=False)


@requires_inductor
def test_the_batched_step_equals_single_updates_compiled() -> None:
    _batched_vs_single(compile=True)


def test_batched_init_and_bad_shapes() -> None:
    learner = create_learner("nominal_mlp", compile=False)
    state = learner.batched_init(torch.zeros(4, 30))
    assert state["moments"].shape == (4, 4, 30) and not state["moments"].any()
    theta = learner.init_theta(0).expand(4, -1)
    step = torch.zeros(4, dtype=torch.long)
    with pytest.raises(UsageError, match="batched_step needs theta"):
        learner.batched_step(
            theta, torch.zeros(4, 30), torch.zeros(4, 30), state, step, step + 10, (10, 10)
        )


# -- scale -----------------------------------------------------------------------------------------
def test_the_step_is_scale_free() -> None:
    """What holds exactly (Adam's eps, here 1e-30, and the RMS floor 1e-12 aside): (1) the
    gradients (and the moments) times c: the same step; (2) weights times s, gradients over s,
    lr0 times s (a reparametrised task): s times the step. For any theta (here far from Adam)."""
    kwargs = {"horizon": 30, "eps": 1e-30, "compile": False}
    learner = create_learner("nominal_mlp", lr0=1e-2, **kwargs)
    theta = _trained_theta(learner, 11).double()
    params, grads, (moments,) = _problem(4, torch.float64)
    grads = tuple(g.sign() * (g.abs() + 0.1) for g in grads)  # away from 0 (eps negligible)
    state = {"step": 6, "moments": moments}
    new, _ = learner.apply(theta, grads, state, params)
    step = [n - p for n, p in zip(new, params, strict=True)]

    def rescaled(m: torch.Tensor, c: float) -> torch.Tensor:
        return torch.cat([m[:3] * c, m[3:] * c * c])

    for c in (1e-3, 1e3):
        scaled_state = {"step": 6, "moments": rescaled(moments, c)}
        again, _ = learner.apply(theta, tuple(g * c for g in grads), scaled_state, params)
        for a, b in zip(again, new, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    for s in (1e-2, 1e2):
        other = create_learner("nominal_mlp", lr0=1e-2 * s, **kwargs)
        scaled_state = {"step": 6, "moments": rescaled(moments, 1.0 / s)}
        moved, _ = other.apply(
            theta,
            tuple(g / s for g in grads),
            scaled_state,
            tuple(p * s for p in params),
        )
        for m, p, d in zip(moved, params, step, strict=True):
            torch.testing.assert_close(m - p * s, d * s, rtol=1e-7, atol=1e-12 * s)


# -- the eager path's contract ---------------------------------------------------------------------
def test_the_eager_update_is_differentiable_and_vmap_equals_a_loop() -> None:
    learner = create_learner("nominal_mlp", hidden=3, horizon=10)
    params, grads, (moments,) = _problem(2, torch.float64)
    state = {"step": 4, "moments": moments}
    theta = _trained_theta(learner, 1).double()

    def first(t: torch.Tensor) -> torch.Tensor:
        return learner.apply(t, grads, state, params)[0][0].sum()

    assert torch.autograd.gradcheck(first, (theta.clone().requires_grad_(True),))
    thetas = _trained_theta(learner, 2, rows=3).double()
    batched = torch.func.vmap(lambda t: learner.apply(t, grads, state, params)[0][0])(thetas)
    for i in range(3):
        _close(batched[i], learner.apply(thetas[i], grads, state, params)[0][0])


def test_a_failed_compile_falls_back_to_eager_with_one_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    learner = create_learner("nominal_mlp", compile=True)
    params, grads, (moments,) = _problem(0)
    theta = _trained_theta(learner, 0)
    state = {"step": 1, "moments": moments}

    def broken(*args: torch.Tensor) -> None:
        raise RuntimeError("no C++ compiler\nmore detail")

    # one problem: the 7 tensors of fused_update, a float step
    key = (learner.spec, torch.float32, "cpu", 1, 7, torch.float32)
    monkeypatch.setitem(nominal_kernel._COMPILED, key, broken)
    with torch.no_grad(), pytest.warns(UserWarning, match="torch.compile failed .*no C"):
        new, _ = learner.apply(theta, grads, state, params)
    assert nominal_kernel._COMPILED[key] is None  # later calls go straight to eager
    reference = create_learner("nominal_mlp", compile=False)
    with torch.no_grad():
        expected, _ = reference.apply(theta, grads, state, params)
    for a, b in zip(new, expected, strict=True):
        assert torch.equal(a, b)
    monkeypatch.setenv(nominal_kernel.COMPILE_ENV, "0")
    assert not create_learner("nominal_mlp")._fused_allowed(theta, params[0])


def test_bad_settings_are_one_line_usage_errors() -> None:
    for settings, words in (
        ({"hidden": 0}, "hidden must be an integer from 1 to 32"),
        ({"layers": 3}, "layers must be 1 or 2"),
        ({"decays": [0.5]}, "decays must be two momentum decays"),
        ({"lr0": -1.0}, "lr0 must be a number > 0"),
        ({"compile": "yes"}, "compile must be true or false"),
        ({"width": 3}, "nominal_mlp: "),
    ):
        with pytest.raises(UsageError, match=words) as caught:
            create_learner("nominal_mlp", **settings)
        assert "\n" not in str(caught.value)


# -- checkpoints and meta-training -----------------------------------------------------------------
def test_a_checkpoint_round_trip_serves_the_same_optimizer(tmp_path: Path) -> None:
    learner = create_learner("nominal_mlp", lr0=2e-3, horizon=300, hidden=4, layers=1)
    theta = _trained_theta(learner, 5)
    path = save_lopt_checkpoint(tmp_path / "nominal.pt", theta, learner, {"note": "test"})
    loaded = load_lopt_checkpoint(path)
    assert loaded.family == "nominal_mlp" and loaded.learner.record() == learner.record()
    assert torch.equal(loaded.theta, theta)
    served = create_optimizer("lopt", checkpoint=str(path))
    params, grads, (moments,) = _problem(1)
    state = {"step": 3, "moments": moments}
    with torch.no_grad():
        expected, _ = learner.apply(theta, grads, state, params)
        got, _ = served.update(grads, state, params)
    for a, b in zip(got, expected, strict=True):
        _close(a, b)
    assert served.learning_rate(1) == pytest.approx(learner.learning_rate(theta, 1))
