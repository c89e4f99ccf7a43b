"""N ``lopt tune`` workers sharing one study on a PostgreSQL server, against one worker.

Both runs tune the same cheap study (SGD's learning rate on the quadratic, ``--steps`` steps a
trial, ``--trials`` trials) in a fresh database of one server, side by side in this run, and
print for each: the wall-clock from starting the worker processes to the last one's exit, when
the first trial started and the last one ended (from the trials' timestamps in the storage),
the sum of the trial durations, how many trials each worker ran, and whether the study holds
exactly ``--trials`` counted trials with no configuration repeated. The ratio says what the
workers cost or gain on this machine; it is not a target (on a machine with fewer cores than
workers, the workers' start-up dominates cheap trials).

    python benchmarks/tuning_workers.py [--workers 8] [--trials 64] [--steps 100]
        [--storage postgresql://USER@HOST/DB]   # default: a throwaway server (tests/pg_server.py)

With ``--storage``, the two runs use the databases ``DB_n<workers>`` and ``DB_n1`` of that
server, which must exist and be empty; the default starts Debian's PostgreSQL on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from harness.tuning.storage import open_storage  # noqa: E402
from harness.tuning.study import count_trials, load_existing, study_name  # noqa: E402


def run(url: str, workers: int, trials: int, steps: int, out: Path) -> dict[str, object]:
    """Start ``workers`` workers on ``url``; what they did (see the module docstring)."""
    command = [
        sys.executable, "-m", "harness.cli", "tune", "task=quadratic", "optimizer=sgd",
        "eval_seeds=0", "pruner=none", "search.lr=[1e-5,1.0]", f"budget_steps={steps}",
        f"trials={trials}", f"storage={url}", f"out={out}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.time()
    processes = [
        subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        for _ in range(workers)
    ]
    for process in processes:
        _, err = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"a worker failed: {err.decode()[-1000:]}")
    wall = time.time() - started
    name = study_name("quadratic", "sgd", "valid_loss", steps, "tpe")
    study = load_existing(open_storage(url, create=False).storage, name)
    counted = count_trials(study).counted
    begins = [t.datetime_start.timestamp() for t in counted]
    ends = [t.datetime_complete.timestamp() for t in counted]
    lrs = [t.params["lr"] for t in counted]
    return {
        "wall_s": wall,
        "first_start_s": min(begins) - started,
        "last_end_s": max(ends) - started,
        "trial_s": sum(e - b for b, e in zip(begins, ends, strict=True)),
        "counted": len(counted),
        "repeated": len(lrs) - len(set(lrs)),
        "per_worker": sorted(Counter(t.user_attrs["worker"] for t in counted).values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--trials", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--storage", default="")
    parser.add_argument("--out", default="/tmp/lopt_tuning_workers")
    args = parser.parse_args(argv)
    server = None
    if not args.storage:
        import pg_server

        reason = pg_server.unavailable()
        if reason:
            print(f"not measured: {reason}", file=sys.stderr)
            return 1
        server = pg_server.Server().start()
    try:
        results = {}
        for n in (args.workers, 1):
            url = f"{args.storage}_n{n}" if args.storage else server.database(f"n{n}")
            results[n] = run(url, n, args.trials, args.steps, Path(args.out) / f"n{n}")
            figures = results[n]
            print(
                f"{n} worker(s): {figures['counted']} trials counted, {figures['repeated']} "
                f"repeated, per worker {figures['per_worker']}; {figures['wall_s']:.1f} s wall "
                f"(first trial at {figures['first_start_s']:.1f} s, last done at "
                f"{figures['last_end_s']:.1f} s, trials {figures['trial_s']:.1f} s in all)",
                flush=True,
            )
    finally:
        if server is not None:
            server.stop()
    ratio = results[args.workers]["wall_s"] / results[1]["wall_s"]
    print(
        f"{args.workers} workers / 1 worker, wall-clock: {ratio:.2f}x "
        f"({os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
