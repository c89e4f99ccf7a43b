"""The batched inner-loop engine (issue 24): B problems of one architecture, each with its own
initialisation, data order and rescaling, advanced as one set of batched tensor operations.

* :mod:`~harness.meta.batched.problems`: :class:`ProblemBatch` (init, minibatch loss and
  gradient, whole-split losses, resets) and :func:`problem_batches` (grouping by architecture);
* :mod:`~harness.meta.batched.mlp`: hand-batched MLP forward and closed-form backward;
* :mod:`~harness.meta.batched.functional`: the ``vmap`` backend (any architecture);
* :mod:`~harness.meta.batched.learners`: the :class:`BatchedLearner` protocol and
  :class:`BatchedAdam`;
* :mod:`~harness.meta.batched.unroll`: :func:`unroll`;
* :mod:`~harness.meta.batched.memory`: large blocks kept in glibc's heap (no page faults for
  each step's outputs).
* :mod:`~harness.meta.batched.differentiable`: :func:`unroll_with_graph`, the same unroll with
  the autograd graph kept (the reparameterisation gradient of the merged estimator).

The task families it runs are :mod:`tasks.families`; docs/batched-engine.md has the design and
the throughput measurements (benchmarks/batched_throughput.py).
"""

from harness.meta.batched.learners import BatchedAdam, BatchedLearner
from harness.meta.batched.problems import DataOrder, ProblemBatch, problem_batches
from harness.meta.batched.unroll import unroll

__all__ = [
    "BatchedAdam",
    "BatchedLearner",
    "DataOrder",
    "ProblemBatch",
    "problem_batches",
    "unroll",
]
