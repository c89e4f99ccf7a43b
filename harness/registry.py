"""Plugin registry for tasks and optimizers (in the style of timm's model registry).

Plugins are found, not wired by hand:

* built-ins register themselves with :func:`register_task` / :func:`register_optimizer` when the
  ``tasks`` and ``optimizers`` packages are imported (lazily, on the first lookup);
* third-party packages declare Python entry points in the groups ``lopt_harness.tasks`` and
  ``lopt_harness.optimizers``. The entry point's name is the registered name; its value is either
  the plugin class itself or any object whose import runs a ``register_*`` decorator;
* local modules can be imported with :func:`load_plugin_modules` (the CLI's ``plugins=`` option).

Lookups of unknown names raise :class:`~harness.errors.UnknownNameError` with one line that names
the closest matches and the command that lists everything.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import inspect
import typing
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, TypeVar

from harness.errors import RegistrationError, UnknownNameError, UsageError

T = TypeVar("T")

TASK_ENTRY_POINT_GROUP = "lopt_harness.tasks"
OPTIMIZER_ENTRY_POINT_GROUP = "lopt_harness.optimizers"
LEARNER_ENTRY_POINT_GROUP = "lopt_harness.learners"


@dataclass(frozen=True)
class RegistryEntry:
    """One registered plugin.

    Attributes:
        name: the name users type (``task=NAME``, ``optimizer=NAME``).
        factory: the class (or callable) that builds the plugin from keyword arguments.
        source: where it came from: ``"builtin"``, ``"entry point <value>"`` or a module name.
    """

    name: str
    factory: Callable[..., Any]
    source: str

    @property
    def description(self) -> str:
        """The first line of the factory's docstring."""
        doc = inspect.getdoc(self.factory) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry:
    """A name -> factory table for one kind of plugin (``task`` or ``optimizer``)."""

    def __init__(self, kind: str, entry_point_group: str, builtin_package: str) -> None:
        self.kind = kind
        self.entry_point_group = entry_point_group
        self.builtin_package = builtin_package
        self._entries: dict[str, RegistryEntry] = {}
        self._loaded = False
        self._loading = False

    # -- registration -------------------------------------------------------------------------
    def register(self, name: str, *, source: str | None = None) -> Callable[[T], T]:
        """Decorator: register ``factory`` under ``name`` (letters, digits, ``_`` and ``-``)."""
        if not isinstance(name, str) or not name or not all(c.isalnum() or c in "_-" for c in name):
            raise RegistrationError(
                f"invalid {self.kind} name {name!r}: use letters, digits, '_' and '-'"
            )

        def decorator(factory: T) -> T:
            module = getattr(factory, "__module__", "") or ""
            origin = source or (
                "builtin" if module.split(".")[0] == self.builtin_package else module
            )
            previous = self._entries.get(name)
            if previous is not None and not _same_object(previous.factory, factory):
                raise RegistrationError(
                    f"{self.kind} name {name!r} is registered twice: by {previous.source} "
                    f"and by {origin}"
                )
            if isinstance(factory, type):
                factory.name = name  # type: ignore[attr-defined]
            self._entries[name] = RegistryEntry(name=name, factory=factory, source=origin)
            return factory

        return decorator

    def alias(self, alias: str, target: Any) -> Any:
        """Register ``alias`` as another name of the class ``target`` (an old name kept working).

        The alias is a subclass of ``target`` that differs only in its registered name, so
        everything that records the name a user typed (a bench row's ``optimizer`` column, a
        checkpoint's ``family``) records the alias when the alias was typed, as before the
        rename. Returns the subclass. Its description says which name it stands for.
        """
        entry = next((e for e in self._entries.values() if e.factory is target), None)
        if entry is None or not isinstance(target, type):
            raise RegistrationError(f"{self.kind} alias {alias!r}: register its target first")
        first = (inspect.getdoc(target) or "").strip().splitlines()
        doc = f"{first[0] if first else target.__name__} (alias of {entry.name})"
        subclass = type(
            target.__name__,
            (target,),
            {
                "__doc__": doc,
                "__module__": target.__module__,
                "__qualname__": f"{target.__qualname__}.alias_{alias}",
                "alias_of": entry.name,
            },
        )
        return self.register(alias, source=entry.source)(subclass)

    def canonical(self, name: str) -> str:
        """The name that ``name`` is an alias of (:meth:`alias`), else ``name`` itself: two
        names of one plugin have the same canonical name."""
        entry = self._entries.get(name)
        return getattr(entry.factory, "alias_of", name) if entry is not None else name

    # -- lookup -------------------------------------------------------------------------------
    def get(self, name: str) -> RegistryEntry:
        """The entry registered as ``name``; an unknown name raises ``UnknownNameError``."""
        self._ensure_loaded()
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownNameError(self.unknown_name_message(name))
        return entry

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted registered names, filtered by a shell-style wildcard ``pattern`` if given."""
        self._ensure_loaded()
        names = sorted(self._entries)
        if pattern:
            names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        return names

    def unknown_name_message(self, name: str) -> str:
        self._ensure_loaded()
        close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return (
            f"unknown {self.kind} {name!r}.{hint} "
            f"Run `lopt list {self.kind}s` to see all {len(self._entries)}."
        )

    # -- discovery ----------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            importlib.import_module(self.builtin_package)
            for ep in entry_points(group=self.entry_point_group):
                self._load_entry_point(ep)
            self._loaded = True
        finally:
            self._loading = False

    def _load_entry_point(self, ep: Any) -> None:
        before = set(self._entries)
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break every other one
            warnings.warn(
                f"skipping {self.kind} plugin {ep.name!r} ({ep.value}): "
                f"import failed: {type(exc).__name__}: {exc}",
                stacklevel=2,
            )
            return
        if ep.name in self._entries and (ep.name not in before or not callable(obj)):
            return  # importing it ran a register_* decorator
        if callable(obj):  # registers it, or raises RegistrationError on a clash of names
            self.register(ep.name, source=f"entry point {ep.value}")(obj)
        else:
            warnings.warn(
                f"{self.kind} plugin {ep.name!r} ({ep.value}) registered nothing: point the "
                "entry point at the plugin class or at a module that uses a register_* decorator",
                stacklevel=2,
            )


def _same_object(a: Any, b: Any) -> bool:
    """True when ``a`` and ``b`` are the same plugin (also after a module is imported twice)."""
    if a is b:
        return True
    return getattr(a, "__module__", None) == getattr(b, "__module__", None) and getattr(
        a, "__qualname__", None
    ) == getattr(b, "__qualname__", None)


TASKS = Registry("task", TASK_ENTRY_POINT_GROUP, "tasks")
OPTIMIZERS = Registry("optimizer", OPTIMIZER_ENTRY_POINT_GROUP, "optimizers")
#: learned-optimizer families (:class:`optimizers.base.MetaLearnable`): what meta-training trains
LEARNERS = Registry("learner", LEARNER_ENTRY_POINT_GROUP, "optimizers")


def register_task(name: str) -> Callable[[T], T]:
    """Class decorator: make a :class:`tasks.base.Task` subclass available as ``task=name``."""
    return TASKS.register(name)


def register_optimizer(name: str) -> Callable[[T], T]:
    """Class decorator: make a :class:`optimizers.base.Optimizer` subclass available as
    ``optimizer=name``."""
    return OPTIMIZERS.register(name)


def register_learner(name: str) -> Callable[[T], T]:
    """Class decorator: make a :class:`optimizers.base.Learner` family available as
    ``learner=name`` in ``lopt meta-train`` (and to checkpoints that record it); sets the class's
    ``family``."""
    register = LEARNERS.register(name)

    def decorator(factory: T) -> T:
        factory.family = name  # type: ignore[attr-defined]
        return register(factory)

    return decorator


def optimizer_alias(alias: str, target: type[T]) -> type[T]:
    """Keep ``alias`` (an old name) working as ``optimizer=alias``: a subclass of ``target``
    registered as ``alias`` (:meth:`Registry.alias`); returns it."""
    return OPTIMIZERS.alias(alias, target)


def learner_alias(alias: str, target: type[T]) -> type[T]:
    """Keep ``alias`` (an old name) working as ``learner=alias`` and in the checkpoints that
    record it: a subclass of ``target`` whose ``family`` is ``alias``; returns it."""
    subclass = LEARNERS.alias(alias, target)
    subclass.family = alias
    return subclass


def create_learner(name: str, **settings: Any) -> Any:
    """Build the learner family registered as ``name`` with its ``settings`` (a bad setting is
    a one-line ``UsageError``)."""
    factory = LEARNERS.get(name).factory
    try:
        return factory(**settings)
    except TypeError as exc:
        allowed = [p for p in inspect.signature(factory).parameters if p not in ("self",)]
        raise UsageError(
            f"learner {name} takes the settings {', '.join(allowed) or 'none'}; got "
            f"{', '.join(sorted(settings)) or 'none'} ({exc})"
        ) from exc


def list_tasks(pattern: str | None = None) -> list[str]:
    """Registered task names matching the wildcard ``pattern`` (all if None)."""
    return TASKS.names(pattern)


def list_optimizers(pattern: str | None = None) -> list[str]:
    """Registered optimizer names matching the wildcard ``pattern`` (all if None)."""
    return OPTIMIZERS.names(pattern)


def task_arguments(factory: Any) -> list[tuple[str, Any, Any]]:
    """``(name, type, default)`` of each configuration keyword of a task class or factory.

    ``device`` is left out (it is a run setting, not part of the task's definition); the type is
    ``int``, ``float``, ``bool`` or ``str`` when annotated so, else ``typing.Any``.
    """
    init = factory.__init__ if isinstance(factory, type) else factory
    try:
        hints = typing.get_type_hints(init)
    except Exception:  # unresolvable annotations: fall back to untyped
        hints = {}
    arguments = []
    for param in inspect.signature(init).parameters.values():
        if param.name in ("self", "device") or param.default is inspect.Parameter.empty:
            continue
        if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        annotation = hints.get(param.name, Any)
        arguments.append(
            (
                param.name,
                annotation if annotation in (int, float, bool, str) else Any,
                param.default,
            )
        )
    return arguments


def create_task(name: str, **cfg: Any) -> Any:
    """Build the task registered as ``name`` with its configuration ``cfg``
    (for example ``device="cuda"``, ``batch_size=64``); an unknown setting is a ``UsageError``."""
    factory = TASKS.get(name).factory
    allowed = ["device", *(arg for arg, _, _ in task_arguments(factory))]
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise UsageError(
            f"task {name} takes no setting {unknown[0]!r}; it takes: {', '.join(allowed)}"
        )
    return factory(**cfg)


def create_optimizer(name: str, **hparams: Any) -> Any:
    """Build the optimizer registered as ``name`` with hyperparameters ``hparams``; the ones not
    given take the optimizer's declared defaults."""
    return OPTIMIZERS.get(name).factory(**hparams)


def load_plugin_modules(modules: Iterable[str]) -> None:
    """Import local plugin modules by name (their ``register_*`` decorators run on import).

    The current directory is searched first: ``plugins=my_optimizer`` finds ``./my_optimizer.py``.
    """
    import sys
    from pathlib import Path

    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UsageError(
                f"cannot import plugin module {module!r}: {exc}; give a module name importable "
                "from the current directory or the installed packages"
            ) from exc


# -- task families (issue 24): samplers of task configurations, each also a task plugin ----------
FAMILY_ENTRY_POINT_GROUP = "lopt_harness.families"
#: task families (:class:`tasks.families.base.Family`), registered with
#: :func:`tasks.families.register_family`, which also registers each family as a task plugin
FAMILIES = Registry("family", FAMILY_ENTRY_POINT_GROUP, "tasks")


def list_families(pattern: str | None = None) -> list[str]:
    """Registered task-family names matching the wildcard ``pattern`` (all if None)."""
    return FAMILIES.names(pattern)
