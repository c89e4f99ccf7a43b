"""``MetaTrainConfig`` and its checks live in :mod:`harness.settings.meta` (every command's
settings are validated in :mod:`harness.settings`); this module re-exports them for the
callers and documents that import them from here."""

from harness.settings.meta import (
    ESTIMATORS,
    IDENTITY_FIELDS,
    LEGACY_LEARNER_FIELDS,
    LOSSES,
    OBJECTIVES,
    OUTER_DATA,
    PARALLEL_MODES,
    SCHEDULES,
    MetaTrainConfig,
    coerce_config,
)

__all__ = [
    "ESTIMATORS",
    "IDENTITY_FIELDS",
    "LEGACY_LEARNER_FIELDS",
    "LOSSES",
    "OBJECTIVES",
    "OUTER_DATA",
    "PARALLEL_MODES",
    "SCHEDULES",
    "MetaTrainConfig",
    "coerce_config",
]
