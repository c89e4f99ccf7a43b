"""The defaults of the run settings, written once.

The runner's keyword defaults, :class:`harness.plan.RunPlan`'s fields, the ``lopt bench`` and
``lopt suite`` configs (:mod:`harness.settings`) and :class:`harness.suite.SuiteRun` all read
them from here, so a run gets the same settings whichever entrance it comes through. (A suite
file's ``log_every`` is the suite's own choice; the tuner's trials use their own budgets.)
"""

from __future__ import annotations

#: Untimed throw-away training steps before a run (see :mod:`harness.runner`).
WARMUP_STEPS = 2
#: Steps between the logged minibatch losses.
LOG_EVERY = 10
#: A run diverges when its minibatch loss exceeds this times max(1, the first minibatch loss).
DIVERGENCE_FACTOR = 100.0
