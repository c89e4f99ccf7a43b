"""One optimizer update on the mnist5k_cnn16 parameters (19,146 in 8 tensors), per built-in.

Run with ``pytest benchmarks`` (``--benchmark-disable`` runs each once, as a smoke test).
"""

from __future__ import annotations

import pytest
import torch

from harness.registry import OPTIMIZERS, create_optimizer, create_task, list_optimizers

BUILTINS = [name for name in list_optimizers() if OPTIMIZERS.get(name).source == "builtin"]

Params = tuple[torch.Tensor, ...]


@pytest.fixture(scope="module")
def params_and_grads() -> tuple[Params, Params]:
    """mnist5k_cnn16's initial parameters and random gradients of the same shapes."""
    params = create_task("mnist5k_cnn16").init_params(0)
    generator = torch.Generator().manual_seed(0)
    grads = tuple(torch.randn(p.shape, generator=generator) * 1e-2 for p in params)
    return params, grads


@pytest.mark.parametrize("name", BUILTINS)
def test_update(benchmark, name: str, params_and_grads: tuple[Params, Params]) -> None:
    """Time ``update`` with warm state (one step already taken, so every buffer is in use)."""
    params, grads = params_and_grads
    opt = create_optimizer(name)
    state = opt.init(params)
    params, state = opt.update(grads, state, params)
    benchmark.extra_info["num_params"] = sum(p.numel() for p in params)

    new_params, new_state = benchmark(opt.update, grads, state, params)

    assert new_state["step"] == 2
    assert [p.shape for p in new_params] == [p.shape for p in params]
    assert all(torch.isfinite(p).all() for p in new_params)
