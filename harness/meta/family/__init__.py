"""Meta-training on task families with the batched engine (issue 24): the second way into
``lopt meta-train`` (``family=NAME``), beside the per-problem loop of :mod:`harness.meta`.

One job per module:

* :mod:`~harness.meta.family.problems`: the one place the batched engine and the task families
  are touched (rows of inner problems, grouped by architecture; the outer loss);
* :mod:`~harness.meta.family.pairs`: antithetic pairs, their horizons, resets, staggering and
  truncations (the TruncatedStep);
* :mod:`~harness.meta.family.estimators`: PES, truncated ES and the paper's merged estimator
  (and whole-run ES, the reference);
* :mod:`~harness.meta.family.meters`: split-half cosine, signal-to-noise ratio, their controls;
* :mod:`~harness.meta.family.heldout`: the fixed held-out set that judges theta;
* :mod:`~harness.meta.family.trainer`: the outer loop, state files, log, progress, resume;
* :mod:`~harness.meta.family.command`: ``meta_train_family(cfg)`` and the torchrun entry.

docs/meta-training-families.md describes the estimators, the meters and how to run it.
"""
