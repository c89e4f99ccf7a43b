"""Task families (issue 24): plugins that sample task configurations from seeds.

* :mod:`~tasks.families.base`: :class:`FamilyTask` (one sampled configuration, with its
  ``group_key``), :class:`Family` (the plugin base), :func:`sample_tasks`, :func:`sample_group`,
  :func:`group_tasks`;
* :mod:`~tasks.families.member`: a :class:`FamilyTask` as an ordinary task
  (:func:`build_task`) and :func:`register_family` (family + task plugin ``task=NAME``);
* :mod:`~tasks.families.datasets`: the offline datasets they draw from;
* built-in families: ``mlp_mix``, ``mlp_mix_fmnist`` (:mod:`~tasks.families.mlp_mix`) and
  ``conv_mix`` (:mod:`~tasks.families.conv_mix`).

A package adds a family with ``@register_family("name")`` on a :class:`Family` subclass (which
registers the task plugin too), in a module named by an entry point of the group
``lopt_harness.families``.
"""

from tasks.families import conv_mix, mlp_mix  # noqa: F401  (registration side effect)
from tasks.families.base import (
    HELD_OUT_SEEDS,
    Family,
    FamilyTask,
    create_family,
    group_tasks,
    sample_group,
    sample_tasks,
)
from tasks.families.member import SampledTask, build_task, register_family

__all__ = [
    "HELD_OUT_SEEDS",
    "Family",
    "FamilyTask",
    "SampledTask",
    "build_task",
    "create_family",
    "group_tasks",
    "register_family",
    "sample_group",
    "sample_tasks",
]
