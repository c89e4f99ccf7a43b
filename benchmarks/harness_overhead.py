"""How much slower is the harness than a hand-written PyTorch loop doing the same Adam steps?

Runs, interleaved in one process, ``harness.runner.run(task, "adam", ...)`` on ``mnist5k_cnn16``
and a bare loop (``tasks.cnn16.cnn16()`` as a plain ``nn.Module``, ``torch.optim.Adam`` with the
same hyperparameters, ``F.cross_entropy``, ``loss.backward()``, ``opt.step()``,
``opt.zero_grad(set_to_none=True)``) over the same initial parameters and the same batches, and
prints the ratio harness/bare. The limit is 1.05 (``--limit``); ``main`` returns 3 when the
median of either ratio is over it, 2 when the two loops did not do the same steps.

Usage::

    python benchmarks/harness_overhead.py [--steps N] [--repeats R] [--threads T]

What is compared. Each repeat runs three things, in one of the six orders (cycled):

* ``harness``: ``run(task, "adam", {"lr": lr}, steps=N, seed=seed, eval_splits=(),
  warmup_steps=W, log_every=N)``, timed around the call; it also reports its own timed total
  ``result.train_seconds`` (the sum of its stopwatch sections: gradient + update, per step).
* ``bare prefetched``: the bare loop over a list of the N batches fetched *before* the clock
  starts; ``time.perf_counter()`` around the whole loop of N steps and nothing else.
* ``bare streaming``: the whole bare program, timed from building the model: W throw-away
  warm-up steps on a copy with a fresh ``torch.optim.Adam`` (as the harness's warm-up does), then
  ``for inputs, labels in islice(task.batches("train", seed), N)`` with the fetch in the loop.

and gives two ratios, whose medians over the repeats are the verdict (both must be <= limit):

* **timed** (the headline) = ``result.train_seconds`` / bare prefetched. Batch fetching is
  outside both timings, as the harness's timing contract says.
* **end-to-end** = wall time of the ``run()`` call / bare streaming. Both include the W warm-up
  steps, building and initialising the parameters, and fetching each of the N batches between
  steps. The harness's extras count against it: argument validation and the run id,
  ``loss.item()``, the divergence check and the stopwatch every step, and the logged row. The
  fetching is in the loop on this side because that is where the harness does it: a gather from
  a 3.5 MB training set just after a step has flushed the caches costs ~110 us here, against ~40
  us in a tight prefetch loop, so a prefetched bare loop would charge the harness ~1.5 % it does
  not add.

Fairness: the same thread count for all (``torch.set_num_threads``, default 1: with 2 threads on
this 2-core machine, any other load makes the intra-op thread pool stall, up to 100 ms/step);
one untimed verification round first (which also warms every path up); ``gc.collect()`` before
each run, outside the timings. The verification round checks that the harness and both bare
loops end on the same parameters (the harness's functional Adam and ``torch.optim.Adam`` do the
same arithmetic), and every repeat checks that all three see the same last minibatch loss, so
the loops do the same steps. Medians of the per-repeat ratios, min and max, and the ratio of the
best times are printed; ``--clock cpu`` measures ``time.process_time`` on every side instead
(the harness through an injected ``Stopwatch``), which is steadier on a busy machine.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice, permutations

import torch
import torch.nn.functional as F
from verdict import MISSED

from harness.registry import create_optimizer, create_task
from harness.results.schema import SPLIT_TRAIN_BATCH
from harness.runner import DEFAULT_WARMUP_STEPS, run
from harness.timing import Stopwatch, device_sync
from tasks.base import Batch, Params, Task
from tasks.cnn16 import cnn16

TASK = "mnist5k_cnn16"
LIMIT = 1.05
SAME_PARAMS_TOL = 1e-4
STEPS = 150
REPEATS = 24


@dataclass
class Timing:
    """One run of one side, in seconds: its loop of N steps (``timed``) and the whole call
    (``end_to_end``); NaN where that side does not measure it."""

    timed: float
    end_to_end: float
    last_loss: float


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=f"Harness overhead: harness.runner.run vs a bare PyTorch loop on {TASK}."
    )
    parser.add_argument("--steps", type=int, default=STEPS, help=f"steps per run ({STEPS})")
    parser.add_argument(
        "--repeats", type=int, default=REPEATS, help=f"interleaved rounds ({REPEATS})"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads for every side (default 1: the steadiest on a shared machine)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=DEFAULT_WARMUP_STEPS,
        help=f"warm-up steps in each harness and bare-streaming run ({DEFAULT_WARMUP_STEPS})",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--foreach",
        action="store_true",
        help="torch.optim.Adam(foreach=True) for the bare loop (default: torch's own choice, "
        "which is the for-loop implementation on the CPU)",
    )
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: time.perf_counter, the harness's own clock (default); cpu: time.process_time "
        "for both sides (the harness through an injected Stopwatch), steadier on a busy machine",
    )
    parser.add_argument("--limit", type=float, default=LIMIT, help=f"default {LIMIT}")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive")
    if args.warmup_steps < 0:
        parser.error("--warmup-steps must be >= 0")
    return args


class Bench:
    """The harness and the two bare loops, set up once with the same task, seed and batches."""

    def __init__(self, task: Task, args: argparse.Namespace) -> None:
        self.task = task
        self.steps = args.steps
        self.seed = args.seed
        self.warmup_steps = args.warmup_steps
        self.hparams = {"lr": args.lr}
        h = create_optimizer("adam", **self.hparams).hparams  # the harness's resolved defaults
        self.torch_adam_kwargs: dict[str, object] = {
            "lr": h["lr"],
            "betas": (h["beta1"], h["beta2"]),
            "eps": h["eps"],
            "weight_decay": h["weight_decay"],
        }
        if args.foreach:
            self.torch_adam_kwargs["foreach"] = True
        self.init = task.init_params(self.seed)
        self.clock = time.process_time if args.clock == "cpu" else time.perf_counter
        sync = device_sync(task.device)
        self.sync: Callable[[], None] = sync if sync is not None else (lambda: None)

    def _clock(self) -> float:
        self.sync()
        return self.clock()

    def _stopwatch(self) -> Stopwatch | None:
        """None (the runner's default, perf_counter) for wall time; process_time for cpu."""
        if self.clock is time.perf_counter:
            return None
        return Stopwatch(clock=self.clock, sync=device_sync(self.task.device))

    # -- the harness -------------------------------------------------------------------------
    def harness(self) -> Timing:
        start = self._clock()
        result = run(
            self.task,
            "adam",
            dict(self.hparams),
            steps=self.steps,
            seed=self.seed,
            eval_splits=(),
            warmup_steps=self.warmup_steps,
            log_every=self.steps,
            stopwatch=self._stopwatch(),
        )
        end = self._clock()
        if result.steps_done != self.steps:
            raise RuntimeError(f"harness run stopped early: {result.status}")
        return Timing(result.train_seconds, end - start, result.final(SPLIT_TRAIN_BATCH))

    def harness_final_params(self) -> Params:
        """An untimed harness run whose Adam records the parameters it returns."""
        optimizer = create_optimizer("adam", **self.hparams)
        update = optimizer.update
        last: list[Params] = []

        def recording_update(grads, state, params):  # type: ignore[no-untyped-def]
            new_params, new_state = update(grads, state, params)
            last[:] = [new_params]
            return new_params, new_state

        optimizer.update = recording_update  # type: ignore[method-assign]
        run(
            self.task,
            optimizer,
            None,
            steps=self.steps,
            seed=self.seed,
            eval_splits=(),
            warmup_steps=0,
            log_every=self.steps,
        )
        return last[0]

    # -- the bare loop -----------------------------------------------------------------------
    def _model(self) -> torch.nn.Module:
        model = cnn16().to(self.task.device)
        with torch.no_grad():
            for p, value in zip(model.parameters(), self.init, strict=True):
                p.copy_(value)
        return model

    def _train(
        self, model: torch.nn.Module, opt: torch.optim.Optimizer, batches: Iterable[Batch]
    ) -> torch.Tensor:
        loss = None
        for inputs, labels in batches:
            loss = F.cross_entropy(model(inputs), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        assert loss is not None
        return loss

    def bare_prefetched(self) -> tuple[Timing, torch.nn.Module]:
        """The bare loop over a list of the N batches fetched before the clock starts."""
        model = self._model()
        opt = torch.optim.Adam(model.parameters(), **self.torch_adam_kwargs)
        batches = list(islice(self.task.batches("train", self.seed), self.steps))
        start = self._clock()
        loss = self._train(model, opt, batches)
        seconds = self._clock() - start
        return Timing(seconds, math.nan, loss.item()), model

    def bare_streaming(self) -> tuple[Timing, torch.nn.Module]:
        """The whole bare program, timed from building the model: ``warmup_steps`` throw-away
        steps on a copy (as the harness does), then N steps fetching each batch in the loop."""
        start = self._clock()
        model = self._model()
        opt = torch.optim.Adam(model.parameters(), **self.torch_adam_kwargs)
        if self.warmup_steps:
            spare = copy.deepcopy(model)
            spare_opt = torch.optim.Adam(spare.parameters(), **self.torch_adam_kwargs)
            self._train(
                spare, spare_opt, islice(self.task.batches("train", self.seed), self.warmup_steps)
            )
        loss = self._train(model, opt, islice(self.task.batches("train", self.seed), self.steps))
        seconds = self._clock() - start
        return Timing(math.nan, seconds, loss.item()), model


def _median_min_max(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


SIDES = ("harness", "bare prefetched", "bare streaming")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    task = create_task(TASK, device=args.device)
    bench = Bench(task, args)
    n = args.steps
    impl = "foreach=True" if args.foreach else "torch's default (the for-loop one on the CPU)"
    print(
        f"{TASK} on {task.device}, batch {task.batch_size}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, steps {n}, repeats {args.repeats}, "
        f"warm-up steps {args.warmup_steps}, lr {args.lr}, clock {args.clock}; "
        f"bare loop: torch.optim.Adam, {impl}"
    )

    # Verification, untimed; it also warms up every path.
    harness_params = bench.harness_final_params()
    max_diff = 0.0
    for bare in (bench.bare_prefetched, bench.bare_streaming):
        _, model = bare()
        max_diff = max(
            max_diff,
            *(
                float((a - b.detach()).abs().max())
                for a, b in zip(harness_params, model.parameters(), strict=True)
            ),
        )
    same = max_diff <= SAME_PARAMS_TOL
    print(
        f"final parameters after {n} steps: max |harness - bare| = {max_diff:.3g} "
        f"({'the same steps' if same else 'DIFFERENT'}; tolerance {SAME_PARAMS_TOL:g})"
    )
    bench.harness()

    run_side = {
        "harness": bench.harness,
        "bare prefetched": lambda: bench.bare_prefetched()[0],
        "bare streaming": lambda: bench.bare_streaming()[0],
    }
    orders = list(permutations(SIDES))
    timed: list[float] = []
    end_to_end: list[float] = []
    loss_diff: list[float] = []
    ms: dict[str, list[float]] = {
        "harness timed": [],
        "bare timed": [],
        "harness e2e": [],
        "bare e2e": [],
    }
    for r in range(args.repeats):
        order = orders[r % len(orders)]
        results: dict[str, Timing] = {}
        for side in order:
            gc.collect()
            results[side] = run_side[side]()
        h, b, s = (results[side] for side in SIDES)
        timed.append(h.timed / b.timed)
        end_to_end.append(h.end_to_end / s.end_to_end)
        loss_diff.append(max(abs(h.last_loss - b.last_loss), abs(h.last_loss - s.last_loss)))
        for key, seconds in (
            ("harness timed", h.timed),
            ("bare timed", b.timed),
            ("harness e2e", h.end_to_end),
            ("bare e2e", s.end_to_end),
        ):
            ms[key].append(1e3 * seconds / n)
        print(
            f"  repeat {r + 1:2d} ({' > '.join(side.split()[-1] for side in order)}): ms/step "
            f"timed {ms['harness timed'][-1]:.3f} vs {ms['bare timed'][-1]:.3f} = {timed[-1]:.3f}"
            f", end-to-end {ms['harness e2e'][-1]:.3f} vs {ms['bare e2e'][-1]:.3f}"
            f" = {end_to_end[-1]:.3f}",
            flush=True,
        )

    print(f"ms/step over the {args.repeats} repeats (end-to-end ones: the whole call / N):")
    for key, values in ms.items():
        print(f"  {key:14s} median {_median_min_max(values)}")
    print(f"harness/bare timed       median {_median_min_max(timed)}")
    print(f"harness/bare end-to-end  median {_median_min_max(end_to_end)}")
    best = min(ms["harness timed"]) / min(ms["bare timed"])
    best_e2e = min(ms["harness e2e"]) / min(ms["bare e2e"])
    print(f"best-of-{args.repeats} (min / min): timed {best:.3f}, end-to-end {best_e2e:.3f}")
    print(f"max |last minibatch loss, harness - bare| over the repeats: {max(loss_diff):.3g}")
    if max(loss_diff) > SAME_PARAMS_TOL:
        same = False
    t_med, e_med = statistics.median(timed), statistics.median(end_to_end)
    ok = t_med <= args.limit and e_med <= args.limit
    verdict = "OK" if ok else "OVER"
    if not same:
        verdict = "INVALID: the two loops did not do the same steps"
    print(
        f"harness/bare = {t_med:.2f} (timed), {e_med:.2f} (end-to-end): "
        f"{verdict} (limit {args.limit:g})"
    )
    if not same:
        return 2
    print(f"verdict: {'met' if ok else 'MISSED'}: harness/bare against {args.limit:g}")
    return 0 if ok else MISSED


if __name__ == "__main__":
    sys.exit(main())
