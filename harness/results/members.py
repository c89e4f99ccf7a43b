"""Family samples in results: which rows are members of a task family, and which member.

A family (``tasks.families``: ``mlp_mix``, ``conv_mix``, ...) is registered as a task whose
``task.member`` setting picks one sampled task, so a results table holds a family sample as
rows of one ``task`` (the family's name) whose ``task_cfg`` JSON differs in ``member``. The
performance profiles (:mod:`harness.results.profiles`) treat such a sample as one workload made
of many member tasks; this module tells them apart:

* :func:`family_names`: the registered families;
* :func:`split_members`: ``frame`` with ``task`` replaced, on a family's rows, by a member key
  (``"mlp_mix[1100000]"``: the family, the member seed in brackets), and the map from each
  key to its ``(workload, member)``; other tasks map to ``(task, None)``.
"""

from __future__ import annotations

import json

import pandas as pd

from harness.errors import UsageError


def family_names() -> set[str]:
    """The registered task families' names (the task plugins that take ``task.member``)."""
    from harness.registry import FAMILIES

    return set(FAMILIES.names())


def member_key(family: str, member: int) -> str:
    """The key of one member of a family sample, e.g. ``mlp_mix[1100000]``."""
    return f"{family}[{member}]"


def member_of(task_cfg: str) -> int:
    """The ``member`` seed in a family row's ``task_cfg`` JSON (``UsageError`` if it has none:
    a family's rows always record it)."""
    try:
        member = json.loads(task_cfg).get("member")
    except (TypeError, ValueError, AttributeError):
        member = None
    if isinstance(member, bool) or not isinstance(member, int):
        raise UsageError(f"a family run's task_cfg names no integer member: {task_cfg!r}")
    return member


def split_members(
    frame: pd.DataFrame, families: set[str] | None = None
) -> tuple[pd.DataFrame, dict[str, tuple[str, int | None]]]:
    """``frame`` (tidy rows with ``task`` and ``task_cfg``) with each family row's ``task``
    replaced by its member key, and ``{task or key: (workload, member or None)}`` for every
    task in the result. ``families``: the family names (default :func:`family_names`)."""
    families = family_names() if families is None else families
    out = frame.copy()
    is_member = out["task"].isin(families).to_numpy()
    keys: dict[str, tuple[str, int | None]] = {
        str(task): (str(task), None) for task in out.loc[~is_member, "task"].unique()
    }
    if is_member.any():
        pairs = out.loc[is_member, ["task", "task_cfg"]].drop_duplicates()
        by_pair = {}
        for task, cfg in pairs.itertuples(index=False):
            key = member_key(str(task), member_of(cfg))
            by_pair[(task, cfg)] = key
            keys[key] = (str(task), member_of(cfg))
        members = out.loc[is_member, ["task", "task_cfg"]]
        out.loc[is_member, "task"] = [by_pair[pair] for pair in members.itertuples(index=False)]
    return out, keys
