"""Optuna tuning of optimizer hyperparameters: persistent, resumable, fair.

* :mod:`harness.tuning.space`: search spaces from the optimizers' declared hyperparameters.
* :mod:`harness.tuning.storage`: Optuna storages (SQLite by default, PostgreSQL for several
  machines, any RDB URL, journal files), the lock that makes trial claiming exact between
  workers, and the heartbeats that find trials whose worker was lost.
* :mod:`harness.tuning.sampler`: the samplers, seeded per trial so no start repeats another's
  proposals.
* :mod:`harness.tuning.study`: the tuning protocol, study names, recovery of interrupted trials.
* :mod:`harness.tuning.objective`: one trial: train, report, prune, average over seeds.
* :mod:`harness.tuning.tuner`: the loop (``tune``), the re-evaluation of the best configuration
  with fresh seeds, and the lookup of tuned hyperparameters for ``lopt bench tuned=true``.
* :mod:`harness.tuning.export`: trials as a tidy table, objective-against-learning-rate plots.
"""
