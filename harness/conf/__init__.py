"""Hydra's config search path (``pkg://harness.conf``): the suite files live in ``suite/``."""
