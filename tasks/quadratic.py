"""``quadratic``: a noisy quadratic bowl whose expected loss is known exactly.

    loss(w, xi) = mean_i 0.5 (w - c - xi_i)^T A (w - c - xi_i),   xi_i ~ N(0, noise^2 I)
    E[loss](w)  = 0.5 (w - c)^T A (w - c) + 0.5 noise^2 tr(A)

``A = Q diag(lambda) Q^T`` with eigenvalues log-spaced from ``lambda_max / condition`` to
``lambda_max`` and a random rotation Q; ``A``, ``c`` are fixed by ``problem_seed``. Gradient descent
is stable for lr < 2 / lambda_max, which makes this the task for fast tests and for the study of
exploding unrolled gradients. ``evaluate`` returns the exact expected loss for every split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from harness.errors import UsageError
from harness.registry import register_task
from tasks.base import Batch, Params, Task

_SPLIT_STREAM = {"train": 0, "valid": 1, "test": 2}


@register_task("quadratic")
class Quadratic(Task):
    """Noisy quadratic bowl in `dim` dimensions; the expected loss is computed exactly."""

    default_steps = 500
    metrics = ("loss",)

    def __init__(
        self,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
        dim: int = 10,
        condition: float = 100.0,
        lambda_max: float = 1.0,
        noise: float = 0.0,
        problem_seed: int = 0,
    ) -> None:
        super().__init__(device=device, batch_size=batch_size)
        numbers_ok = all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
            for x in (condition, lambda_max, noise)
        )
        dim_ok = isinstance(dim, int) and not isinstance(dim, bool) and dim > 0
        if not (numbers_ok and dim_ok and condition >= 1 and lambda_max > 0 and noise >= 0):
            raise UsageError(
                "quadratic: need an integer dim > 0 and finite condition >= 1, lambda_max > 0, "
                "noise >= 0; got "
                f"dim={dim}, condition={condition}, lambda_max={lambda_max}, noise={noise}"
            )
        self.dim, self.noise = dim, float(noise)
        generator = torch.Generator().manual_seed(problem_seed)
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
        eigenvalues = lambda_max * torch.logspace(
            -torch.log10(torch.tensor(float(condition))).item(), 0.0, dim, dtype=torch.float64
        )
        self.eigenvalues = eigenvalues.float().to(self.device)
        self.hessian = ((q * eigenvalues) @ q.T).float().to(self.device)
        self.centre = (
            torch.randn(dim, generator=generator, dtype=torch.float64).float().to(self.device)
        )
        self.noise_floor = 0.5 * self.noise**2 * float(eigenvalues.sum())

    def init_params(self, seed: int) -> Params:
        generator = torch.Generator().manual_seed(seed)
        return (torch.randn(self.dim, generator=generator).to(self.device),)

    def loss(self, params: Params, batch: Batch) -> torch.Tensor:
        (w,), (noise,) = params, batch
        r = w - self.centre - noise  # (batch, dim)
        return 0.5 * ((r @ self.hessian) * r).sum(dim=1).mean()

    def batches(self, split: str, seed: int) -> Iterator[Batch]:
        self.check_split(split)
        if self.noise == 0.0:
            zeros = torch.zeros(self.batch_size, self.dim, device=self.device)
            while True:
                yield (zeros,)
        generator = torch.Generator().manual_seed(seed * 3 + _SPLIT_STREAM[split])
        while True:
            sample = torch.randn(self.batch_size, self.dim, generator=generator) * self.noise
            yield (sample.to(self.device),)

    @torch.no_grad()
    def evaluate(self, params: Params, split: str) -> dict[str, float]:
        self.check_split(split)
        r = params[0] - self.centre
        return {"loss": float(0.5 * r @ self.hessian @ r) + self.noise_floor}
