"""Sessions: ``nox -s paper`` (the main job: the paper's comparison into results/paper/),
``dev`` (a ``.venv/`` with the package installed editable: ``lopt`` on the PATH once it is
activated), ``tests`` (the test suite), ``lint``, ``suite`` (the small suite at default
hyperparameters), ``pathology`` (the pathology study), ``lm`` (the language-model workload),
``family`` (a held-out family sample as a workload), ``benchmarks`` (speed checks that print
ratios).

torch is installed first, from ``$LOPT_TORCH`` (default ``torch==2.13.0``, the CPU build on the
machines this project runs on). Elsewhere pick the build for your platform, for example
``LOPT_TORCH="torch --index-url https://download.pytorch.org/whl/cu124"`` for CUDA 12.4 or
``LOPT_TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"`` for a CPU-only
machine that would otherwise download a CUDA build. The project's own dependency (torch>=2.2) is
then already satisfied, so pip never swaps the build.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]

TORCH = os.environ.get("LOPT_TORCH", "torch==2.13.0")


def install(session: nox.Session, extras: str = "") -> None:
    session.install(*shlex.split(TORCH))
    session.install("-e", f".[{extras}]" if extras else ".")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (everything; CI runs this): a few minutes of pytest on a 2-core machine,
    more under load (docs/development.md), plus installing. ``nox -s tests -- -m "not slow"`` is
    the fast subset for development."""
    install(session, "dev,postgres")  # postgres: the driver of the PostgreSQL tuning tests
    session.run("pytest", "-q", *session.posargs)


@nox.session(venv_backend="none")
def dev(session: nox.Session) -> None:
    """A development environment you keep: ``.venv/`` (gitignored) with torch from
    ``$LOPT_TORCH`` and this package installed editable with its dev extras, so ``lopt`` is on
    the PATH once it is activated (``source .venv/bin/activate``; on Windows
    ``.venv\\Scripts\\activate``). Rerunning it updates the same ``.venv``."""
    venv = Path(".venv")
    if not (venv / "pyvenv.cfg").is_file():
        session.run(sys.executable, "-m", "venv", str(venv))
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = str(bin_dir / "python")
    session.run(python, "-m", "pip", "install", *shlex.split(TORCH))
    session.run(python, "-m", "pip", "install", "-e", ".[dev]")
    activate = bin_dir / "activate"
    session.log(f"ready: activate it with `source {activate}`, then `lopt --help`")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def suite(session: nox.Session) -> None:
    """The main job: run the small suite into results/small/ (CSV, summary tables, plots)."""
    install(session)
    session.run("lopt", "suite", "name=small", *session.posargs)


@nox.session
def paper(session: nox.Session) -> None:
    """The paper's comparison into results/paper/ (shipped checkpoints and stored studies; two
    1-thread worker processes). ``nox -s paper -- fresh=true`` redoes tuning and
    meta-training."""
    install(session)
    session.run("lopt", "suite", "name=paper", "workers=2", *session.posargs)


#: the suites whose results one comparison report profiles together (results/workloads/)
WORKLOAD_RESULTS = (
    "results/paper/results.csv",
    "results/lm/results.csv",
    "results/family/results.csv",
)


def workload_suite(session: nox.Session, name: str) -> None:
    """Tune suite ``name``'s baselines until saturated (resumable), run it with two 1-thread
    worker processes, then write the comparison report over every workload suite whose results
    exist into results/workloads/ (one performance profile)."""
    install(session)
    session.run("python", "-m", "harness.tuning.campaign", "--suite", name)
    session.run("lopt", "suite", f"name={name}", "workers=2", *session.posargs)
    present = ",".join(path for path in WORKLOAD_RESULTS if Path(path).is_file())
    session.run(
        "lopt",
        "report",
        f"in=[{present}]",
        "out=results/workloads",
        "kind=comparison",
        "mode=replace",
    )


@nox.session
def lm(session: nox.Session) -> None:
    """The language-model workload into results/lm/: its 14 baseline studies (docs/workloads.md
    has the CPU-hours), its suite, then the report over every workload (results/workloads/)."""
    workload_suite(session, "lm")


@nox.session
def family(session: nox.Session) -> None:
    """A held-out sample of the mlp_mix family (5 members) into results/family/: its 70
    baseline studies, its suite, then the report over every workload (results/workloads/)."""
    workload_suite(session, "family")


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Optimizer-update microbenchmarks, the harness-vs-bare-loop overhead ratio, TPE against a
    dense grid for Adam's learning rate, and the learned optimizers' costs. Each script exits 0
    when its target is met and 3 (``benchmarks/verdict.py``) when it ran and missed it; a miss
    of the learned optimizers' cost targets, which this 2-core CPU misses, does not fail the
    session; a crash (1) or bad arguments (2) always does."""
    install(session, "dev")
    ran = [0, 3]  # met, or ran to the end and missed (the verdict line says which)
    session.run("pytest", "benchmarks", "-q", "--benchmark-columns=min,median,mean,stddev,rounds")
    # targets this project meets: a miss (3) fails the session, as a crash does
    session.run("python", "benchmarks/harness_overhead.py", *session.posargs)
    session.run("python", "benchmarks/tuning_grid_vs_tpe.py")
    # These print a verdict against targets this 2-core CPU misses (docs/meta-training.md).
    session.run("python", "benchmarks/lopt_step_vs_adam.py", success_codes=ran)
    session.run(
        "python",
        "benchmarks/lopt_step_vs_adam.py",
        "--learner",
        "adam_residual",
        "--threads",
        "1",
        success_codes=ran,
    )
    # ES/PES inner step against an Adam step; the paper's learner misses 1.5x per side
    session.run("python", "benchmarks/es_step_vs_adam.py", success_codes=ran)
    for k in ("1", "5"):
        session.run(
            "python",
            "benchmarks/meta_step_overhead.py",
            "--outer-batches",
            k,
            success_codes=ran,
        )
    # the batched engine against the per-problem loop (docs/batched-engine.md)
    session.run("python", "benchmarks/batched_throughput.py", success_codes=ran)
    # nominal_mlp's step against Adam's, and its batched step (docs/nominal-mlp.md)
    session.run("python", "benchmarks/nominal_mlp_step_vs_adam.py", success_codes=ran)
    session.run("python", "benchmarks/nominal_mlp_batched_step.py")
    # PES against whole-run ES on a family (docs/meta-training-families.md)
    session.run("python", "benchmarks/family_estimator_bias.py", success_codes=ran)


@nox.session
def pathology(session: nox.Session) -> None:
    """The pathology study (landscape, estimator variance, outer training, truncation bias)
    into results/pathology/ (tidy CSVs, PNGs, summary.md); about 10 minutes on one core."""
    install(session)
    session.run("lopt", "pathology", "out=results/pathology", *session.posargs)
