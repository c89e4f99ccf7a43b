"""Meta-training of learned optimizers (Metz et al., ICML 2019, and beyond), the second entrance.

``meta_train(cfg) -> Path`` (:mod:`harness.meta.command`) trains the theta of a learner family
(:class:`optimizers.base.Learner`, registered with ``register_learner``) and ends in a
checkpoint that the optimizer registry serves as ``optimizer=lopt optimizer.checkpoint=PATH``.
One job per module, in the style of learned_optimization:

* :mod:`harness.settings.meta` (every command's settings live in :mod:`harness.settings`):
  :class:`MetaTrainConfig`, every option, its default and its check (values only; names become
  objects in :mod:`harness.resolve`, once);
* :mod:`~harness.meta.truncation`: inner problems, their persistent state, truncated unrolls,
  resets, unroll-length schedules and outer objectives (the TruncatedStep);
* :mod:`~harness.meta.estimators`: ES, rp, the inverse-variance merge and PES as
  ``GradientEstimator`` objects over ``SampleSums`` (the GradientEstimator);
* :mod:`~harness.meta.trainer`: the outer loop: Adam on theta, clipping, held-out evaluation,
  logging, checkpoints, resume (the GradientLearner);
* :mod:`~harness.meta.world`: the ranks the trainer sees (one process, or a torch.distributed
  process group);
* :mod:`~harness.meta.distributed`: torch.distributed workers (torchrun; gloo or NCCL);
* :mod:`~harness.meta.checkpoint`: the trainer's state file (the learned-optimizer checkpoints
  are :mod:`optimizers.checkpoint`'s);
* :mod:`~harness.meta.report`: a run's curves and convergence verdict;
* :mod:`~harness.meta.family`: meta-training on task families with the batched engine (PES,
  truncated ES, the estimate's meters, the held-out judge): ``lopt meta-train family=NAME``.

docs/meta-training.md describes the choices and the measurements behind them.
"""


def __getattr__(name: str):  # meta_train pulls in the trainer (pandas, tasks): import on use
    if name == "MetaTrainConfig":  # plain data: nothing heavy
        from harness.settings.meta import MetaTrainConfig

        return MetaTrainConfig
    if name == "meta_train":
        from harness.meta.command import meta_train

        return meta_train
    raise AttributeError(f"module 'harness.meta' has no attribute {name!r}")


__all__ = ["MetaTrainConfig", "meta_train"]
