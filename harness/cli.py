"""``lopt``: the command line, a thin entrance to Hydra-composed configs.

    lopt list tasks|optimizers|learners|suites [PATTERN] [plugins=MODULE,...]
    lopt bench [-m] task=NAME[,NAME...] optimizer=NAME[,NAME...] [optimizer.lr=0.01] [steps=N]
               [seeds=N] [workers=N] [out=PATH.csv] [mode=new|append|replace]
               [device=cpu|cuda] [threads=N] ...
    lopt suite name=SUITE [seeds=N] [workers=N] [out=PATH.csv] [report=true] [fresh=true] ...
    lopt report in=PATH.csv out=DIR [reference=OPTIMIZER] [target_split=train] [kind=comparison]
                [mode=new|replace]   (in=[A.csv,B.csv]: several results files as one table)
    lopt tune task=NAME optimizer=NAME[,NAME...] trials=N objective=valid_loss|train_loss
              budget_steps=S [until=trials|saturated] [sampler=tpe|random|grid|qmc]
              [pruner=median|none] [storage=URL] [search.lr=[LOW,HIGH]] ...
    lopt studies [storage=URL] [out=DIR]
    lopt meta-train task=NAME learner=metz_mlp|hparams|adam_residual|... estimator=merged|rp|es|pes
                    objective=train|valid loss=mean|log|log_mean|final outer_steps=N out=DIR
    lopt meta-train family=NAME [learner=nominal_mlp] [estimator=pes|tes|merged]
                    [objective=train|valid] [pairs=32] [out=DIR]
    lopt pathology [study=all|landscape|variance|training|truncation] [out=DIR] [quick=true]
    lopt select-snapshot run=DIR [snapshots=[0,5,10]] [seeds=5] [first_seed=200] [workers=2]
    lopt evaluate-family checkpoint=PATH [family=mlp_mix] [tasks=64] [seeds=10] [out=DIR]

Overrides are Hydra's ``key=value``. Optimizer hyperparameters are ``optimizer.NAME=VALUE``
(``optimizer.lr=0.01``); task settings are ``task.NAME=VALUE``. In ``bench``, comma lists of
``task`` and ``optimizer`` run every combination; ``-m`` (``--multirun``) also sweeps comma lists
of any other key (``-m optimizer.lr=0.001,0.01``). In ``tune``, ``optimizer.NAME=VALUE`` fixes a
hyperparameter and ``search.NAME=[LOW,HIGH]`` (or ``true``/``false``) changes the search space;
``until=saturated`` tunes until the study meets the saturation rule, ``trials`` being the cap.
``lopt bench ... tuned=true`` takes the hyperparameters from the stored tuning study
(``tuning.objective``, ``tuning.budget_steps``, ``tuning.sampler``, ``tuning.storage`` select it).
``lopt COMMAND --help`` prints the command's keys, their defaults and what each means.
Default outputs land under ``outputs/`` (git ignores it). A results file that exists is kept:
``mode=append`` adds a bench's runs to it, ``mode=replace`` replaces it (a report's folder that
holds files: ``mode=replace`` writes into it).

Exit codes: 0 success, 2 bad input (one line on stderr, nothing written), 3 a suite finished
without some of its tasks (their data is not here: the last lines say which; their earlier
results are kept), 130 interrupted (rerun the same command to resume), 1 anything else.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from harness.errors import EXIT_UNFINISHED, Unfinished, UsageError
from harness.overrides import parse_overrides
from harness.settings.validate import at_least

if TYPE_CHECKING:
    from harness.settings.tune import TuneSettings

ALWAYS_SWEPT = {"bench": ("task", "optimizer"), "tune": ("task", "optimizer")}
INCOMPLETE = 3  # the exit code of a suite that could not run some of its tasks
COMMANDS = (
    "list",
    "bench",
    "suite",
    "report",
    "tune",
    "studies",
    "meta-train",
    "pathology",
    "select-snapshot",
    "evaluate-family",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``lopt`` with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return dispatch(args)
    except UsageError as exc:
        print(f"lopt: error: {exc}", file=sys.stderr)
        return 2
    except Unfinished as exc:
        print(f"lopt: unfinished: {exc}", file=sys.stderr)
        return EXIT_UNFINISHED
    except KeyboardInterrupt as exc:
        message = getattr(exc, "message", None) or (
            "finished runs are saved: rerun the same command to resume"
        )
        prefix = "" if message.startswith("interrupted") else "interrupted; "
        print(f"lopt: {prefix}{message}", file=sys.stderr)
        return 130


def dispatch(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = args[0], args[1:]
    if command == "list":
        return list_command(rest)
    if command not in COMMANDS:
        raise UsageError(f"unknown command {command!r}; the commands are {', '.join(COMMANDS)}")
    multirun = False
    overrides = []
    show_help = False
    for arg in rest:
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("-h", "--help"):
            show_help = True
        elif arg.startswith("-"):
            raise UsageError(f"unknown option {arg!r}; options are -m/--multirun and -h/--help")
        else:
            overrides.append(arg)
    if multirun and command != "bench":
        raise UsageError(f"-m (multirun) is supported by `lopt bench`, not by `lopt {command}`")
    handlers = {
        "bench": bench_command,
        "suite": suite_command,
        "report": report_command,
        "tune": tune_command,
        "studies": studies_command,
        "meta-train": meta_train_command,
        "pathology": pathology_command,
        "select-snapshot": select_snapshot_command,
        "evaluate-family": evaluate_family_command,
    }
    return handlers[command](overrides, multirun=multirun, show_help=show_help)


# -- lopt list -------------------------------------------------------------------------------------
def list_command(args: list[str]) -> int:
    from harness.config import list_suites
    from harness.registry import LEARNERS, OPTIMIZERS, TASKS

    kinds = ("tasks", "optimizers", "learners", "suites")
    plugins = [arg for arg in args if arg.startswith("plugins=")]
    args = [arg for arg in args if not arg.startswith("plugins=")]
    if plugins:
        load_plugins(parse_overrides(plugins[-1:]))  # local plugins are listed too
    if not args or args[0] not in kinds or len(args) > 2 or "=" in "".join(args):
        raise UsageError(
            "usage: lopt list tasks|optimizers|learners|suites [PATTERN] [plugins=MODULE,...]"
        )
    kind, pattern = args[0], (args[1] if len(args) == 2 else None)
    if kind == "suites":
        import fnmatch

        for name in list_suites():
            if pattern is None or fnmatch.fnmatchcase(name, pattern):
                print(name)
        return 0
    registry = {"tasks": TASKS, "optimizers": OPTIMIZERS, "learners": LEARNERS}[kind]
    names = registry.names(pattern)
    width = max([16, *(len(name) for name in names)])
    for name in names:
        entry = registry.get(name)
        factory = entry.factory
        if kind == "tasks":
            detail = (
                f"steps={getattr(factory, 'default_steps', '?')} "
                f"pairs_with={','.join(getattr(factory, 'pairs_with', ('*',)))}"
                + "".join(
                    f" target_{t.split}_{t.metric}={t.value:g}@{t.steps}"
                    for t in getattr(factory, "targets", ())
                )
            )
        elif kind == "learners":  # the family's settings and their defaults
            detail = learner_settings(factory)
        else:
            detail = " ".join(
                f"{spec.name}={spec.default!r}" for spec in getattr(factory, "hparam_specs", ())
            )
        source = "" if entry.source == "builtin" else f"  [{entry.source}]"
        print(f"{name:<{width}} {entry.description}{source}")
        print(f"{'':<{width}} {detail or '(no hyperparameters)'}")
    return 0


def learner_settings(factory: Any) -> str:
    """``key=default ...`` of a learner family: its record when it builds with no settings,
    else its constructor's keywords (a family with a required setting, such as
    ``specialised``'s ``base``)."""
    import inspect

    try:
        return " ".join(f"{k}={v!r}" for k, v in factory().record().items())
    except UsageError:
        parameters = inspect.signature(factory).parameters.values()
        return " ".join(
            f"{p.name}={p.default!r}" for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD
        )


# -- override handling ---------------------------------------------------------------------------
def load_plugins(parsed: list[Any]) -> list[str]:
    """Import the modules named by a ``plugins=`` override; returns the rewritten override."""
    from harness.resolve import load_plugins as load_modules

    for override in parsed:
        if override.key_or_group == "plugins":
            value = override.value()
            modules = [value] if isinstance(value, str) else list(value)
            load_modules(modules)  # once per process: the commands' resolve steps skip them
            return [f"plugins=[{','.join(modules)}]"]
    return []


def expand_sweeps(parsed: list[Any], command: str, multirun: bool) -> list[list[str]]:
    """The override lists of every combination of the comma lists (a single list if none).

    Not Hydra's basic sweeper: that runs through ``@hydra.main``'s launcher (a working folder
    per job under ``multirun/``, its own logging), which ``lopt`` does not use (it composes with
    the Compose API and writes one results file), and its combination step
    (``BasicSweeper.split_arguments``) is private API (``hydra._internal``) for what is one
    ``itertools.product`` here; the refusal of an un-``-m``'d comma list is ``lopt``'s own."""
    fixed: list[str] = []
    axes: list[list[str]] = []
    for override in parsed:
        key = override.key_or_group
        if key == "plugins":
            continue
        if override.is_sweep_override():
            if not (multirun or key in ALWAYS_SWEPT.get(command, ())):
                raise UsageError(
                    f"{override.input_line!r} is a comma list: add -m to sweep over it, or quote "
                    f"it ({key}='a,b') to pass one string"
                )
            prefix = override.get_key_element()
            axes.append([f"{prefix}={value}" for value in override.sweep_string_iterator()])
        else:
            fixed.append(override.input_line)
    return [fixed + list(combo) for combo in itertools.product(*axes)] if axes else [fixed]


def check_keys(parsed: list[Any], command: str) -> None:
    """Friendly one-line errors for the mistakes Hydra would report cryptically."""
    from harness.registry import OPTIMIZERS, TASKS

    hparam_names = {
        spec.name
        for name in OPTIMIZERS.names()
        for spec in getattr(OPTIMIZERS.get(name).factory, "hparam_specs", ())
    }
    own_keys = command_keys(command)
    selected: dict[str, list[str]] = {"task": [], "optimizer": []}
    for override in parsed:
        key = override.key_or_group
        if key in selected and command in ("bench", "tune"):
            values = (
                list(override.sweep_string_iterator())
                if override.is_sweep_override()
                else [str(override.value())]
            )
            registry = TASKS if key == "task" else OPTIMIZERS
            for value in values:
                registry.get(value)  # UnknownNameError with close matches
            selected[key] = values
        elif key in hparam_names and key not in own_keys:
            raise UsageError(
                f"unknown key {key!r}: optimizer hyperparameters are set as "
                f"optimizer.{key}=VALUE (one way only)"
            )
    if command not in ("bench", "tune"):
        return
    optimizers = selected["optimizer"] or ["adam"]
    for override in parsed:
        key = override.key_or_group
        if key.startswith("optimizer.") and not override.is_add():
            name = key.split(".", 1)[1]
            for optimizer in optimizers:
                specs = getattr(OPTIMIZERS.get(optimizer).factory, "hparam_specs", ())
                allowed = [spec.name for spec in specs]
                if name not in allowed:
                    raise UsageError(
                        f"{optimizer} takes no hyperparameter {name!r}."
                        f"{_did_you_mean(name, allowed)} It takes: {', '.join(allowed) or 'none'}"
                    )


def command_keys(command: str) -> set[str]:
    """The top-level keys of a command's config."""
    import dataclasses

    from harness.settings.bench import BenchConfig
    from harness.settings.meta import MetaTrainCommandConfig
    from harness.settings.report import StudiesConfig
    from harness.settings.suite import SuiteConfig
    from harness.settings.tune import TuneConfig

    schema = {
        "bench": BenchConfig,
        "suite": SuiteConfig,
        "tune": TuneConfig,
        "studies": StudiesConfig,
        "meta-train": MetaTrainCommandConfig,
    }.get(command)
    return {f.name for f in dataclasses.fields(schema)} if schema else {"in", "out"}


def composed(command: str, parsed: list[Any], multirun: bool) -> list[DictConfig]:
    """Check and compose the command's parsed overrides (:func:`parse_overrides`, called once
    per command): one config per combination of the swept values."""
    from harness.config import compose_config, hydra_context

    plugin_override = load_plugins(parsed)
    check_keys(parsed, command)
    combos = expand_sweeps(parsed, command, multirun)
    configs = []
    with hydra_context():
        for combo in combos:
            try:
                configs.append(compose_config(command, plugin_override + combo))
            except UsageError:
                check_key_paths(command, plugin_override + combo)  # a clearer line for a typo
                raise
    return configs


GROUPS = ("task", "optimizer", "suite", "plugins")


def check_key_paths(command: str, overrides: list[str]) -> None:
    """``UsageError`` for the first override whose key the command's config does not have,
    naming the allowed keys and the closest one (call inside :func:`hydra_context`).

    Only called once composing ``overrides`` (one combination of the swept values, as strings)
    has failed, to say why: so it parses them again."""
    from harness.config import compose_config

    parsed = parse_overrides(overrides)
    groups = [o.input_line for o in parsed if o.key_or_group in GROUPS]
    base = compose_config(command, groups)
    for override in parsed:
        if override.key_or_group in GROUPS or override.is_add() or override.is_delete():
            continue
        node: Any = base
        path = override.key_or_group.split(".")
        for depth, part in enumerate(path):
            if not isinstance(node, DictConfig):
                break
            keys = [str(k) for k in node if k != "defaults"]
            if part not in keys:
                raise UsageError(_unknown_key_message(command, path[:depth], part, keys, node))
            node = None if OmegaConf.is_missing(node, part) else node[part]


def _unknown_key_message(
    command: str, parents: list[str], key: str, keys: list[str], node: DictConfig
) -> str:
    if parents == ["task"] and "name" in keys:
        settings = sorted(k for k in keys if k != "name")
        return (
            f"task {node.name} takes no setting {key!r}.{_did_you_mean(key, settings)} It takes: "
            f"{', '.join(settings) or 'none'}"
        )
    if not parents:
        return (
            f"unknown key {key!r} for lopt {command}.{_did_you_mean(key, keys)} Its keys are: "
            f"{', '.join(sorted(keys))}"
        )
    full = ".".join([*parents, key])
    if not keys:  # a free-form mapping (tuning.fixed, ...): Hydra adds new keys with +
        return f"{'.'.join(parents)} has no key {key!r} yet: add it with +{full}=VALUE"
    shown = [".".join([*parents, k]) for k in sorted(keys)]
    return (
        f"unknown key {full!r}.{_did_you_mean(full, shown)} The keys of "
        f"{'.'.join(parents)} are: {', '.join(sorted(keys))}"
    )


def _did_you_mean(name: str, allowed: list[str]) -> str:
    """`` Did you mean: CLOSEST?`` (difflib), or nothing when no name is close."""
    import difflib

    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.5)
    return f" Did you mean: {close[0]}?" if close else ""


def _print_help(command: str) -> int:
    from harness.config import compose_config, hydra_context

    with hydra_context():
        cfg = compose_config(command, [])
    print(_usage())
    print(f"\n`lopt {command}` keys and their defaults:\n")
    print(OmegaConf.to_yaml(cfg))
    print(f"What the keys of `lopt {command}` mean:\n")
    print("\n".join(command_help(command, [str(k) for k in cfg])))
    return 0


def command_help(command: str, keys: list[str]) -> list[str]:
    """One line per key, its meaning as its settings declare it
    (:mod:`harness.settings.help`)."""
    import dataclasses

    from harness.settings import report as report_settings
    from harness.settings.bench import BenchConfig
    from harness.settings.help import dict_key_docs, help_lines, key_docs
    from harness.settings.meta import MetaTrainCommandConfig
    from harness.settings.suite import SuiteConfig
    from harness.settings.tune import TuneConfig

    schemas = {
        "bench": BenchConfig,
        "suite": SuiteConfig,
        "tune": TuneConfig,
        "studies": report_settings.StudiesConfig,
        "meta-train": MetaTrainCommandConfig,
    }
    if command == "report":
        docs = dict_key_docs(report_settings, "REPORT_DEFAULTS")
    else:
        schema = schemas[command]
        docs = key_docs(schema)
        keys = [f.name for f in dataclasses.fields(schema)]
    return help_lines(docs, keys)


def _usage() -> str:
    return (__doc__ or "").strip()


# -- lopt bench ------------------------------------------------------------------------------------
def bench_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    from harness.plan import RunPlan, execute
    from harness.suite import tuned_hparams

    if show_help:
        return _print_help("bench")
    parsed = parse_overrides(overrides)
    configs = composed("bench", parsed, multirun)
    plans: list[RunPlan] = []
    outs = {(cfg.out, cfg.mode) for cfg in configs}
    if len(outs) != 1:
        raise UsageError("out and mode cannot be swept: one bench writes one results file")
    check_out_file(configs[0].out, configs[0].mode)
    explicit = explicit_hparams(parsed)
    for cfg in configs:
        _check_run_settings(cfg)
        at_least("seeds", cfg.seeds, 1)
        task_cfg = {k: v for k, v in OmegaConf.to_container(cfg.task).items() if k != "name"}
        hparams = {k: v for k, v in OmegaConf.to_container(cfg.optimizer).items() if k != "name"}
        tags: dict[str, Any] = {}
        if cfg.tuned:
            if explicit:
                raise UsageError(
                    f"tuned=true takes the hyperparameters from the tuning study: drop "
                    f"optimizer.{sorted(explicit)[0]}=..."
                )
            hparams, tags = tuned_hparams(
                cfg.task.name, cfg.optimizer.name, cfg.tuning, cfg.steps, task_cfg
            )
        for seed in range(cfg.first_seed, cfg.first_seed + cfg.seeds):
            plans.append(
                RunPlan(
                    task=cfg.task.name,
                    optimizer=cfg.optimizer.name,
                    seed=seed,
                    suite=cfg.suite,
                    steps=cfg.steps,
                    hparams=hparams,
                    task_cfg=task_cfg,
                    eval_every=cfg.eval_every,
                    log_every=cfg.log_every,
                    warmup_steps=cfg.warmup_steps,
                    max_seconds=cfg.max_seconds,
                    device=cfg.device,
                    tags=tags,
                )
            )
    keep = None
    if configs[0].mode == "append" and Path(configs[0].out).exists():
        plans, keep = runs_to_append(plans, Path(configs[0].out))
        if not plans:
            return 0
    execute(
        plans,
        configs[0].out,
        resume=configs[0].resume,
        workers=configs[0].workers,
        plugin_modules=list(configs[0].plugins),
        keep=keep,
    )
    return 0


def runs_to_append(plans: list[Any], out: Path) -> tuple[list[Any], Any]:
    """``mode=append``: the resolved plans whose runs ``out`` lacks, and ``out``'s rows (kept)."""
    from harness.plan import resolve_plans
    from harness.results.io import read_results

    existing = read_results(out)
    planned = resolve_plans(plans)
    have = set(existing["run_id"])
    todo = [p for p in planned if p.run_id not in have]
    if len(todo) < len(planned):
        _log(
            f"mode=append: {len(planned) - len(todo)} of {len(planned)} runs are already in "
            f"{out}; {'nothing to run' if not todo else f'running the other {len(todo)}'}"
        )
    return todo, existing


def check_out_file(out: str, mode: str) -> None:
    """Before any work: ``out`` is a results file that can be written, and an existing one is
    refused unless ``mode`` says how to treat it (:mod:`harness.outputs`)."""
    from harness.outputs import check_existing
    from harness.results.io import check_results_target

    check_existing(out, mode)
    check_results_target(out)


def explicit_hparams(parsed: list[Any]) -> dict[str, Any]:
    """The ``optimizer.NAME=VALUE`` overrides the user gave (parsed), by NAME."""
    return {
        o.key_or_group.split(".", 1)[1]: o.value()
        for o in parsed
        if o.key_or_group.startswith("optimizer.") and not o.is_sweep_override()
    }


def _check_run_settings(cfg: DictConfig, warmup: bool = True) -> None:
    """Check the run settings (:func:`harness.settings.bench.check_run_settings`) and apply the
    thread count."""
    import torch

    from harness.settings.bench import check_run_settings

    check_run_settings(cfg, warmup=warmup)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)


# -- lopt suite ------------------------------------------------------------------------------------
def suite_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    from harness.config import list_suites
    from harness.results.io import check_results_target
    from harness.suite import SuiteRun, run_suite

    # `name=X` selects the suite file: it is the `suite` config group.
    rewritten = []
    for override in overrides:
        if override.startswith("name="):
            name = override.split("=", 1)[1]
            if name not in list_suites():
                raise UsageError(
                    f"unknown suite {name!r}; the suites are: {', '.join(list_suites())}"
                )
            rewritten.append(f"suite={name}")
        else:
            rewritten.append(override)
    if show_help:
        return _print_help("suite")
    (cfg,) = composed("suite", parse_overrides(rewritten), multirun=False)
    _check_run_settings(cfg)
    seeds = cfg.seeds if cfg.seeds is not None else cfg.suite.seeds
    at_least("seeds", seeds, 1)
    at_least("max_seconds", cfg.max_seconds, 0, strict=True)
    settings = SuiteRun(
        suite=cfg.suite,
        seeds=seeds,
        device=cfg.device,
        warmup_steps=cfg.warmup_steps,
        out=Path(cfg.out) if cfg.out else None,
        report=cfg.report,
        reference=cfg.reference,
        resume=cfg.resume,
        reuse=cfg.reuse,
        fresh=cfg.fresh,
        workers=cfg.workers,
        plugin_modules=list(cfg.plugins),
        max_seconds=cfg.max_seconds,
    )
    check_results_target(settings.results_path)  # before any work (the suite updates it)
    outcome = run_suite(settings, log=_log)
    if not outcome.complete:
        tasks = ", ".join(item.task for item in outcome.skipped)
        print(
            f"lopt: incomplete: {tasks} not rerun (see above); the results file keeps what "
            "it could not reproduce; exit code 3",
            file=sys.stderr,
        )
        return INCOMPLETE
    return 0


# -- lopt report -----------------------------------------------------------------------------------
def report_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    from harness.outputs import check_existing_folder, check_writable
    from harness.results.io import read_many_results
    from harness.results.report import build_report
    from harness.settings.report import check_report, report_inputs

    if show_help:
        return _print_help("report")
    (cfg,) = composed("report", parse_overrides(overrides), multirun=False)
    check_report(cfg)
    check_existing_folder(str(cfg.out), str(cfg.mode))
    check_writable(str(cfg.out))  # before any work
    inputs = report_inputs(cfg)
    frame = read_many_results(inputs)
    if cfg.kind == "comparison":
        from harness.results.comparison import build_comparison_report

        # the tuned runs' studies: each results file's neighbouring optuna.db, where there is one
        studies = dict.fromkeys(Path(path).parent / "optuna.db" for path in inputs)
        storages = [f"sqlite:///{db}" for db in studies if db.is_file()]
        written = build_comparison_report(frame, Path(str(cfg.out)), storage=storages or None)
    else:
        written = build_report(
            frame, Path(str(cfg.out)), reference=cfg.reference, target_split=cfg.target_split
        )
    for path in written:
        print(path)
    return 0


# -- lopt tune -------------------------------------------------------------------------------------
def tune_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    from harness.tuning.tuner import tune
    from harness.util import to_plain

    if show_help:
        code = _print_help("tune")
        print("until: trials  # or saturated: stop once the saturation rule holds (trials: cap)")
        return code
    search = {}
    rest = []
    until = "trials"
    for override in parse_overrides(overrides):
        if override.key_or_group == "until":
            if override.is_sweep_override() or not isinstance(override.value(), str):
                raise UsageError(f"{override.input_line!r}: until takes trials or saturated")
            until = str(override.value())
        elif override.key_or_group.startswith("search."):
            if override.is_sweep_override():
                raise UsageError(
                    f"{override.input_line!r}: a range is written search.NAME=[LOW,HIGH]"
                )
            search[override.key_or_group.split(".", 1)[1]] = override.value()
        else:
            rest.append(override)
    explicit = explicit_hparams(rest)
    lines = [o.input_line for o in rest]
    for cfg in composed("tune", rest, multirun=False):
        _check_run_settings(cfg, warmup=False)
        task_cfg = {k: v for k, v in OmegaConf.to_container(cfg.task).items() if k != "name"}
        explicit_task_cfg = {
            k: v for k, v in task_cfg.items() if any(o.startswith(f"task.{k}=") for o in lines)
        }
        settings = tune_settings(
            cfg,
            until=until,
            task_cfg=explicit_task_cfg,
            fixed=dict(explicit),
            search={k: to_plain(v) for k, v in search.items()},
        )
        outcome = tune(settings, log=_log)
        if outcome.best_hparams is not None:
            _log(
                f"{outcome.study}: best trial {outcome.best_number}, {cfg.objective} "
                f"{outcome.best_value:.5g}, hparams {outcome.best_hparams}"
            )
        if outcome.saturation is not None:
            _log(f"{outcome.study}: {outcome.saturation.verdict}")
    return 0


def tune_settings(cfg: DictConfig, **given: Any) -> TuneSettings:
    """The :class:`~harness.settings.tune.TuneSettings` of a composed ``lopt tune`` config: the
    task and optimizer groups' names, every other field the two share by name (so a key is
    added to ``TuneConfig`` and ``TuneSettings`` and reaches the tuner without a copy written
    here), then ``given`` (what the command line says outside the config: ``until``,
    ``task_cfg``, ``fixed``, ``search``)."""
    import dataclasses

    from harness.settings.tune import TuneSettings

    names = {f.name for f in dataclasses.fields(TuneSettings)} - {"task", "optimizer", *given}
    shared = {name: cfg[name] for name in sorted(names) if name in cfg}
    return TuneSettings(task=cfg.task.name, optimizer=cfg.optimizer.name, **shared, **given)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def studies_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    from harness.outputs import check_writable
    from harness.tuning.export import (
        plot_best_so_far,
        plot_objective_vs_lr,
        saturation_markdown,
        saturation_table,
        write_trials,
    )
    from harness.tuning.tuner import load_studies, studies_frame
    from harness.util import write_text_atomically

    if show_help:
        return _print_help("studies")
    (cfg,) = composed("studies", parse_overrides(overrides), multirun=False)
    check_writable(cfg.out)
    frame = studies_frame(cfg.storage)
    studies = load_studies(cfg.storage)
    out = Path(cfg.out)
    table = saturation_table(studies)
    written = [
        write_trials(frame, out / "trials.csv"),
        write_trials(table, out / "saturation.csv"),
        write_text_atomically(out / "saturation.md", saturation_markdown(table)),
    ]
    written += [
        plot_best_so_far(study, None, out / study.study_name / "best_so_far.png")
        for study in studies
    ]
    if "param_lr" in frame.columns:
        keys = ["task", "objective", "budget_steps"]
        for (task, objective, budget), group in frame.groupby(keys, sort=True):
            name = f"lr_{task}_{objective}_{budget}steps.png"
            title = f"{task}: {objective} after {budget} steps"
            written.append(plot_objective_vs_lr(group, out / name, title=title))
    for path in written:
        print(path)
    return 0


# -- lopt meta-train -------------------------------------------------------------------------------
def meta_train_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    from harness.meta.command import meta_train, summary_line
    from harness.meta.report import build_meta_report

    parsed = parse_overrides(overrides)
    if any(o.key_or_group == "family" for o in parsed):  # task families, the batched engine
        from harness.meta.family.command import family_command

        return family_command(parsed, show_help=show_help)
    if show_help:
        return _print_help("meta-train")
    (cfg,) = composed("meta-train", parsed, multirun=False)
    path = meta_train(cfg)  # the task group node becomes task + task_cfg
    build_meta_report(path.parent)  # meta_curves.png, meta_summary.md: converged yet?
    print(summary_line(path.parent))
    return 0


def pathology_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    from harness.pathology.command import pathology_command as run

    return run(overrides, multirun=multirun, show_help=show_help)


def select_snapshot_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    from harness.meta.selection import select_snapshot_command as run

    return run(overrides, multirun=multirun, show_help=show_help)


# -- lopt evaluate-family -------------------------------------------------------------------------
def evaluate_family_command(overrides: list[str], *, multirun: bool, show_help: bool) -> int:
    """``lopt evaluate-family checkpoint=PATH ...``: a family-trained learned optimizer on
    held-out family tasks against tuned Adam (:mod:`harness.meta.family.evaluate`)."""
    from harness.meta.family.evaluate import family_evaluate_command

    return family_evaluate_command(parse_overrides(overrides), show_help=show_help)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
