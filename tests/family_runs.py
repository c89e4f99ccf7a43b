"""Settings of the tiny family meta-training runs the tests share (``lopt meta-train family=...``
in seconds: 4 pairs of 2 architectures, 10-step truncations, horizons of 20-40 steps)."""

TINY_FAMILY_RUN = {
    "family": "mlp_mix",
    "learner": "nominal_mlp",
    "learner_cfg": {"compile": False},
    "pairs": 4,
    "arch_groups": 2,
    "truncation": 10,
    "min_horizon": 20,
    "max_horizon": 40,
    "heldout_tasks": 2,
    "eval_every": 2,
    "checkpoint_every": 2,
    "parallel": "single",
    "progress": False,
    "lr": 1e-2,
    "seed": 26,
    "outer_steps": 2,
}
