"""Retune a suite's baselines until every study is saturated or at the last cap.

A *campaign* takes the tuned runs of a suite file (``harness/conf/suite/<suite>.yaml``: task,
task settings, optimizer, objective, step budget, fixed and searched hyperparameters), optionally
adds baselines the suite does not have yet (``extra``: each cloned from the suite's ``adam``
entry of the same task and objective), and tunes every study with ``until=saturated`` in rounds
of growing caps (``caps``, default 32, 48, 64, 96, 128), one study after the other, so that all
studies progress together and an interruption leaves them all about as far. A study stops at
the first trial count that meets the saturation rule; one that never does stops at the last
cap. That is the fairness ``check_fair_tuning`` asks for: the same rule and cap for every
baseline of a task, so a study saturated at 44 trials is compared with one stopped at 128
(more trials stopped paying for the first; bringing it to 128 would spend CPU-hours to change
nothing the rule can see).

Each study takes its tag and tuning seeds from the suite (the run's ``tuning.tag`` and
``tuning.seeds``); without ``tuning.seeds`` they follow the objective (1 for ``train_loss``, 2
for ``valid_loss``, from ``benchmarks/tuning_seeds.py``). ``--tag`` and ``--seeds
train_loss=2`` override them, into new studies: a study refuses a change of its seeds, so a
change of seeds needs a new tag. Pruning is off by default
(``pruner="none"``): the median pruner judges a trial by its loss part-way, and the validation
loss is not monotone in training (fast-starting learning rates overfit later), so it stopped
exactly the trials near the valid-loss optimum, and a study "saturated" only because its
promising trials never finished (docs/tuning.md has the figures). Everything is resumable: each
study is an Optuna study in ``storage``, so rerunning the same campaign continues where it
stopped; two processes running the same campaign share the trials of each study.

    python -m harness.tuning.campaign --suite paper [--tag paper] [--optimizers adam]
        [--extra adamw_cosine,nesterov] [--tasks mnist5k_cnn16] [--caps 32,48,64,96,128]
        [--seeds train_loss=2,valid_loss=2]

``kill -TERM`` (or Ctrl-C) stops it after the trial in flight, so the storage can be copied or
committed; a second signal stops it at once.

Chunks: ``--max-seconds S`` starts no trial (and no confirmation re-run) that would end more
than ``S`` seconds after the start, judged by the longest one seen so far in this run (a chunk
overruns ``S`` only when one trial outgrows that estimate); it then exits with
:data:`EXIT_UNFINISHED` (75) between trials, the storage consistent, and the same command
continues. A confirmation stores each re-run as it finishes, so a chunk shorter than a
confirmation still advances it. ``--status`` prints each study's trial count and verdict and
tunes nothing.

Evaluations: with pruning off, only the final whole-split loss enters the objective, so a
study the campaign creates evaluates at step 0 and at the end of its budget only
(``eval_every`` = the budget; the step-0 loss bounds a diverged run's penalty). The objective
values are the same as with more evaluations (an evaluation draws no random number), and a
study that already exists keeps the ``eval_every`` stored in its protocol.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from harness.errors import EXIT_UNFINISHED, UsageError
from harness.progress import Log
from harness.settings.suite import suite_entries
from harness.stopping import StopRequest
from harness.tuning.saturation import DEFAULT_RULE, study_saturation
from harness.tuning.storage import open_storage
from harness.tuning.study import (
    ATTR_TRIALS,
    count_trials,
    load_existing,
    stored_protocol,
    study_name,
    study_task,
)
from harness.tuning.tuner import TuneOutcome, TuneSettings, TuningStopped, tune
from harness.util import to_plain

SUITES = Path(__file__).resolve().parent.parent / "conf" / "suite"
DEFAULT_CAPS = (32, 48, 64, 96, 128)
DEFAULT_SEEDS = {"train_loss": 1, "valid_loss": 2}


@dataclass(frozen=True)
class StudySpec:
    """One study of a campaign: what ``lopt tune`` needs, except the trial count."""

    task: str
    optimizer: str
    objective: str
    budget_steps: int
    task_cfg: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] = field(default_factory=dict)
    tag: str = ""
    seeds: int | None = None  # tuning seeds; None: the campaign's default for the objective

    def label(self) -> str:
        """E.g. ``mnist5k_cnn16 adam valid_loss``; a family member's task as ``mlp_mix.m7``."""
        return f"{study_task(self.task, self.task_cfg)} {self.optimizer} {self.objective}"

    @classmethod
    def of_run(
        cls, task: str, optimizer: str, steps: int, task_cfg: Any, tuning: Mapping[str, Any]
    ) -> StudySpec:
        """The study behind a suite's tuned run (``tuning``: the suite's block updated by the
        run's own; a dict or an OmegaConf node)."""
        seeds = tuning.get("seeds")
        if seeds is not None and (not isinstance(seeds, int) or seeds < 1):
            raise UsageError(
                f"{task}/{optimizer}: tuning.seeds={seeds!r}; allowed: an integer >= 1 (or none: "
                "the default of the objective)"
            )
        return cls(
            task=task,
            optimizer=optimizer,
            objective=tuning.get("objective") or "valid_loss",
            budget_steps=int(tuning.get("budget_steps") or steps),
            task_cfg=to_plain(task_cfg or {}),
            fixed=to_plain(tuning.get("fixed") or {}),
            search=to_plain(tuning.get("search") or {}),
            tag=str(tuning.get("tag") or ""),
            seeds=seeds,
        )


def suite_studies(suite: str) -> tuple[list[StudySpec], dict[str, Any]]:
    """The studies behind the tuned runs of ``suite``, and its ``tuning`` block."""
    path = SUITES / f"{suite}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SUITES.glob("*.yaml")))
        raise UsageError(f"no suite {suite!r}; known: {known}")
    suite_file = OmegaConf.load(path)
    common = dict(to_plain(suite_file.get("tuning")) or {})
    specs = []
    for entry in suite_entries(suite_file):
        if not entry.tuned:
            continue
        tuning = {**common, **entry.tuning}
        spec = StudySpec.of_run(entry.task, entry.optimizer, entry.steps, entry.task_cfg, tuning)
        if spec not in specs:
            specs.append(spec)
    return specs, common


def with_extra(specs: list[StudySpec], extra: Sequence[str]) -> list[StudySpec]:
    """``specs`` plus, for each name in ``extra``, a clone of every ``adam`` study with that
    optimizer (its own default search space; ``decay_steps`` fixed to the budget for schedules
    that have one)."""
    added = []
    for name in extra:
        for spec in specs:
            if spec.optimizer != "adam":
                continue
            fixed = {"decay_steps": spec.budget_steps} if name.endswith("_cosine") else {}
            clone = replace(spec, optimizer=name, fixed=fixed, search={})
            if clone not in specs and clone not in added:
                added.append(clone)
    return [*specs, *added]


@dataclass
class Campaign:
    """The settings every study of a campaign shares. ``tag``: None keeps each study's own;
    ``seeds``: the tuning seeds per objective of the studies that name none."""

    specs: list[StudySpec]
    tag: str | None
    storage: str
    out: str
    caps: tuple[int, ...] = DEFAULT_CAPS
    seeds: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_SEEDS))
    sampler: str = "tpe"
    pruner: str = "none"
    device: str = "cpu"
    #: evaluation interval of the studies this campaign creates (None: see the module doc)
    eval_every: int | None = None

    def study_name(self, spec: StudySpec) -> str:
        tag = spec.tag if self.tag is None else self.tag
        return study_name(
            spec.task,
            spec.optimizer,
            spec.objective,
            spec.budget_steps,
            self.sampler,
            tag,
            task_cfg=spec.task_cfg,
        )

    def existing(self, spec: StudySpec) -> Any:
        """The stored study of ``spec``, or None (nothing is created)."""
        try:
            opened = open_storage(self.storage, create=False)
        except UsageError:  # no storage file yet
            return None
        return load_existing(opened.storage, self.study_name(spec))

    def eval_every_of(self, spec: StudySpec) -> int | None:
        """The ``eval_every`` to tune ``spec`` with: an existing study's stored one; else
        :attr:`eval_every` if set; else the budget (one evaluation at the end) when pruning is
        off, and the tuner's default (a tenth of the budget) when a pruner needs the values."""
        study = self.existing(spec)
        if study is not None:
            return int(stored_protocol(study)["eval_every"])
        if self.eval_every is not None:
            return self.eval_every
        return spec.budget_steps if self.pruner == "none" else None

    def settings(self, spec: StudySpec, trials: int, until: str) -> TuneSettings:
        return TuneSettings(
            task=spec.task,
            optimizer=spec.optimizer,
            trials=trials,
            until=until,
            objective=spec.objective,
            budget_steps=spec.budget_steps,
            seeds=spec.seeds or self.seeds[spec.objective],
            eval_seeds=0,
            sampler=self.sampler,
            pruner=self.pruner,
            storage=self.storage,
            tag=spec.tag if self.tag is None else self.tag,
            out=self.out,
            task_cfg=dict(spec.task_cfg),
            fixed=dict(spec.fixed),
            search=dict(spec.search),
            device=self.device,
            eval_every=self.eval_every_of(spec),
        )


def caps_up_to(cap: int) -> tuple[int, ...]:
    """The rounds of a campaign whose hard cap is ``cap``: the default caps below it, then it."""
    return (*(c for c in DEFAULT_CAPS if c < cap), cap)


def parse_seeds(text: str) -> dict[str, int]:
    """``"train_loss=2,valid_loss=3"`` -> ``{"train_loss": 2, "valid_loss": 3}`` (``""``: none)."""
    seeds = {}
    for item in (part for part in text.split(",") if part):
        objective, _, count = item.partition("=")
        if objective not in DEFAULT_SEEDS or not count.isdigit() or int(count) < 1:
            raise UsageError(
                f"--seeds: bad item {item!r}; allowed: OBJECTIVE=N with N >= 1 and OBJECTIVE "
                f"one of {', '.join(DEFAULT_SEEDS)}"
            )
        seeds[objective] = int(count)
    return seeds


class TimeBudget:
    """A stop rule for chunks of ``max_seconds``: asked before each trial (and each
    confirmation re-run), it says stop when the time since it was made plus the longest interval
    between two consecutive questions within one study (about one trial) would pass
    ``max_seconds``. ``new_study()`` marks the start of a study (the interval across two studies
    holds the first study's finishing, not a trial). ``clock``: seconds, monotonic."""

    def __init__(self, max_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not max_seconds > 0:
            raise UsageError(f"--max-seconds must be > 0, got {max_seconds!r}")
        self.max_seconds = max_seconds
        self.clock = clock
        self.start = clock()
        self.last: float | None = None
        self.longest = 0.0
        self.used = False

    def new_study(self) -> None:
        self.last = None

    def __call__(self) -> bool:
        now = self.clock()
        if self.last is not None:
            self.longest = max(self.longest, now - self.last)
        self.last = now
        self.used = now - self.start + self.longest > self.max_seconds
        return self.used


def run_campaign(
    campaign: Campaign,
    log: Log = print,
    stop: Callable[[], bool] | None = None,
    budget: TimeBudget | None = None,
) -> list[TuneOutcome]:
    """Tune every study of ``campaign`` (see the module docstring); the last outcome of each,
    in the order of ``campaign.specs``. ``stop``: as in :func:`tune` (raises
    :class:`TuningStopped` between two trials); ``budget``: a second stop rule, told when each
    study starts."""
    if not campaign.caps or min(campaign.caps) < DEFAULT_RULE.min_trials:
        raise UsageError(f"caps must be >= {DEFAULT_RULE.min_trials} (the saturation minimum)")
    specs = campaign.specs

    def asked() -> bool:
        return bool((stop is not None and stop()) or (budget is not None and budget()))

    outcomes: dict[int, TuneOutcome] = {}
    started = time.monotonic()
    for cap in sorted(campaign.caps):
        for i, spec in enumerate(specs):
            elapsed = time.monotonic() - started
            log(
                f"== [{i + 1}/{len(specs)}, {elapsed / 60:.1f} min] {spec.label()}: until "
                f"saturated, at most {cap} trials"
            )
            if budget is not None:
                budget.new_study()
            outcomes[i] = tune(campaign.settings(spec, cap, "saturated"), log=log, stop=asked)
    return [outcomes[i] for i in range(len(specs))]


def campaign_status(campaign: Campaign) -> list[str]:
    """One line per study of ``campaign``: its name, counted trials, trials asked for, the
    saturation verdict so far, then (once a trial finished) the best objective value with its
    hyperparameters and the finished trials' mean wall-clock from the storage's start and end
    times (\"not started\" when the study does not exist). Writes nothing."""
    lines = []
    for spec in campaign.specs:
        name = campaign.study_name(spec)
        study = campaign.existing(spec)
        if study is None:
            lines.append(f"{name}: not started")
            continue
        trials = count_trials(study).counted
        asked = int(study.user_attrs.get(ATTR_TRIALS, 0))
        verdict = study_saturation(study, len(trials)).verdict if trials else "no trial yet"
        lines.append(f"{name}: {len(trials)} trials (asked {asked}); {verdict}{_facts(trials)}")
    return lines


def _facts(trials: Sequence[Any]) -> str:
    """``; best V at NAME=X, ...; mean trial S s`` over the finished ``trials`` ('' if none)."""
    valued = [t for t in trials if t.value is not None and math.isfinite(t.value)]
    if not valued:
        return ""
    best = min(valued, key=lambda t: t.value)
    params = ", ".join(f"{key}={value:.3g}" for key, value in sorted(best.params.items()))
    timed = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in valued
        if t.datetime_start is not None and t.datetime_complete is not None
    ]
    mean = f"; mean trial {sum(timed) / len(timed):.0f} s" if timed else ""
    return f"; best {best.value:.5g} at {params or 'its defaults'}{mean}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="paper")
    parser.add_argument("--tag", default=None, help="default: each run's tuning.tag")
    parser.add_argument("--storage", default=None, help="default: the suite's tuning.storage")
    parser.add_argument(
        "--out", default=None, help="default: next to a SQLite storage, tuning/; results/tuning"
    )
    parser.add_argument("--optimizers", default="", help="only these (comma list)")
    parser.add_argument("--tasks", default="", help="only these (comma list)")
    parser.add_argument("--objectives", default="", help="only these (comma list)")
    parser.add_argument("--extra", default="", help="baselines to add, cloned from adam's")
    parser.add_argument("--caps", default=",".join(map(str, DEFAULT_CAPS)))
    parser.add_argument("--pruner", default="none", choices=("none", "median"))
    parser.add_argument(
        "--seeds", default="", help="tuning seeds per objective: OBJ=N,... (default: the suite's)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help=f"stop between trials before this many seconds are up (exit {EXIT_UNFINISHED})",
    )
    parser.add_argument(
        "--status", action="store_true", help="print each study's trials and verdict; tune nothing"
    )
    args = parser.parse_args(argv)
    budget = None
    try:
        specs, common = suite_studies(args.suite)
        specs = with_extra(specs, [n for n in args.extra.split(",") if n])
        for key, wanted in (
            ("optimizer", args.optimizers),
            ("task", args.tasks),
            ("objective", args.objectives),
        ):
            names = {n for n in wanted.split(",") if n}
            if names:
                specs = [spec for spec in specs if getattr(spec, key) in names]
        if not specs:
            raise UsageError("no study is left after the selection")
        storage = args.storage or common.get("storage")
        if not storage:
            raise UsageError(f"suite {args.suite!r} names no tuning.storage: give --storage")
        out = args.out or (
            str(Path(storage.removeprefix("sqlite:///")).parent / "tuning")
            if storage.startswith("sqlite:///")
            else "results/tuning"  # a server's URL names no folder
        )
        caps = tuple(int(c) for c in args.caps.split(","))
        seeds = parse_seeds(args.seeds)
        specs = [
            replace(spec, seeds=seeds[spec.objective]) if spec.objective in seeds else spec
            for spec in specs
        ]
        campaign = Campaign(
            specs=specs,
            tag=args.tag,
            storage=storage,
            out=out,
            caps=caps,
            pruner=args.pruner,
            seeds=dict(DEFAULT_SEEDS),
        )
        if args.status:
            print("\n".join(campaign_status(campaign)))
            return 0
        budget = None if args.max_seconds is None else TimeBudget(args.max_seconds)
        with StopRequest("the trial in flight") as stop:
            outcomes = run_campaign(
                campaign,
                log=lambda m: print(m, file=sys.stderr, flush=True),
                stop=stop,
                budget=budget,
            )
    except UsageError as exc:
        print(f"campaign: error: {exc}", file=sys.stderr)
        return 2
    except TuningStopped as exc:
        if budget is not None and budget.used:
            print(
                f"{exc}: --max-seconds {args.max_seconds:g} used (the longest trial took "
                f"{budget.longest:.0f} s); rerun the same command to continue",
                file=sys.stderr,
            )
            return EXIT_UNFINISHED
        print(f"{exc}: rerun the same command to continue", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    for outcome in outcomes:
        print(f"{outcome.study}: {outcome.counted} trials, {outcome.saturation.verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
