"""Optuna tuning of optimizer hyperparameters: persistent, resumable, fair.

* :mod:`harness.tuning.space`: search spaces from the optimizers' declared hyperparameters.
* :mod:`harness.tuning.storage`: Optuna storages (SQLite by default, any RDB URL, journal files)
  and the lock that makes trial claiming exact between processes.
* :mod:`harness.tuning.study`: the tuning protocol, study names, recovery of interrupted trials.
* :mod:`harness.tuning.objective`: one trial: train, report, prune, average over seeds.
* :mod:`harness.tuning.tuner`: the loop (``tune``), the re-evaluation of the best configuration
  with fresh seeds, and the lookup of tuned hyperparameters for ``lopt bench tuned=true``.
* :mod:`harness.tuning.export`: trials as a tidy table, objective-against-learning-rate plots.
"""
