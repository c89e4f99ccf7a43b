"""The pathology study (``lopt pathology``): small versions of each measurement, in seconds,
checked for direction where the theory is unambiguous."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from harness.cli import main
from harness.pathology.common import fit_growth, roughness
from harness.pathology.landscape import landscape_table, run_landscape
from harness.pathology.training import large_step_theta, run_training, training_table
from harness.pathology.truncation import run_truncation, truncation_table
from harness.pathology.variance import growth_table, run_variance, variance_summary
from harness.registry import create_task
from harness.settings.pathology import ESTIMATORS, coerce_pathology_config
from optimizers.learned import LearnedOptimizer, LOptArchitecture, init_theta, unpack_theta
from optimizers.learned_hparams import HParamArchitecture, LearnedHParams, encode_theta

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def task():  # type: ignore[no-untyped-def]
    return create_task("quadratic", noise=1.0)


def test_hparam_optimizer_is_sgd_with_momentum() -> None:
    """theta = [log lr, logit b]: one step is the heavy-ball update."""
    learner = LearnedHParams.of(HParamArchitecture(learn_momentum=True))
    opt = LearnedOptimizer.from_theta(encode_theta(0.5, 0.9), learner)
    params = (torch.tensor([1.0, -2.0]),)
    state = opt.init(params)
    state["accumulators"] = torch.tensor([[0.2, 0.4]])
    grads = (torch.tensor([1.0, 1.0]),)
    (new,), new_state = opt.update(grads, state, params)
    buffer = 0.9 * torch.tensor([0.2, 0.4]) + 1.0
    assert torch.allclose(new_state["accumulators"][0], buffer)
    assert torch.allclose(new, params[0] - 0.5 * buffer)
    assert new_state["step"] == 1


def test_rp_variance_explodes_above_the_stability_edge_es_stays_bounded(task) -> None:  # type: ignore[no-untyped-def]
    """SGD on the quadratic (lambda_max = 1) with lr = 2.05 > 2: the rp estimate's variance and
    magnitude grow by orders of magnitude with the unroll length, ES's stay within one order,
    and the merge moves its weight to ES. Below the edge (lr = 1.5) rp does not explode."""
    cfg = coerce_pathology_config(
        variance_lrs=[1.5, 2.05],
        variance_lengths=[8, 32, 128],
        variance_samples=16,
        variance_batch=4,
    )
    summary = variance_summary(run_variance(cfg, task), cfg.variance_batch)

    def column(lr: float, estimator: str, name: str) -> np.ndarray:
        part = summary[(summary["lr"] == lr) & (summary["estimator"] == estimator)]
        return part.sort_values("unroll_length")[name].to_numpy()

    rp_var, es_var = column(2.05, "rp", "batch_variance"), column(2.05, "es", "batch_variance")
    assert np.all(np.diff(np.log(rp_var)) > 0)  # grows with every length
    assert rp_var[-1] > 1e3 * rp_var[0]
    assert column(2.05, "rp", "mean_abs")[-1] > 10 * column(2.05, "rp", "mean_abs")[0]
    assert es_var.max() < 30 * es_var.min()
    weights = column(2.05, "merged", "es_weight")
    assert weights[-1] > 0.9 and weights[-1] > weights[0]
    stable = column(1.5, "rp", "batch_variance")
    assert stable[-1] < 10 * stable[0]
    growth = growth_table(summary).set_index(["lr", "estimator"])
    assert growth.loc[(2.05, "rp"), "rate_per_step"] > 0.03
    assert abs(growth.loc[(2.05, "es"), "rate_per_step"]) < 0.03


def test_landscape_gets_rougher_with_unroll_length(task) -> None:  # type: ignore[no-untyped-def]
    """The learned optimizer's outer loss along a line of theta is smooth for short unrolls and
    gains structure for long ones (total variation over range grows); the learning-rate curve is
    flat below the edge and rises to the clip above it."""
    cfg = coerce_pathology_config(
        landscape_lengths=[8, 100, 300],
        landscape_points=41,
        landscape_lopt_points=41,
        landscape_lr_range=[0.5, 3.0],
    )
    frame = run_landscape(cfg, task)
    table = landscape_table(frame).set_index(["curve", "unroll_length"])
    assert table.loc[("alpha", 300), "tv_ratio"] > table.loc[("alpha", 8), "tv_ratio"] + 0.1
    lr_curve = frame[(frame["variant"] == "log_lr") & (frame["unroll_length"] == 300)]
    lr_curve = lr_curve.sort_values("x")
    below = lr_curve[np.exp(lr_curve["x"]) < 1.5]["value"]
    above = lr_curve[np.exp(lr_curve["x"]) > 2.5]["value"]
    assert above.min() > 5 * below.max()
    assert frame["value"].between(0, 10).all()


def test_roughness_and_growth_fits() -> None:
    x = np.linspace(0, 1, 200)
    smooth = roughness(x**2)
    rough = roughness(x**2 + 0.2 * np.sin(60 * x))
    assert smooth["tv_ratio"] == pytest.approx(1.0)
    assert rough["tv_ratio"] > 3 and rough["hf_fraction"] > smooth["hf_fraction"]
    assert math.isnan(roughness(np.ones(10))["tv_ratio"])
    lengths = [10, 20, 40, 80]
    fit = fit_growth(lengths, [math.exp(0.05 * t) for t in lengths])
    assert fit["rate"] == pytest.approx(0.05) and fit["r2_exponential"] == pytest.approx(1.0)


def test_large_step_theta_wires_the_normalised_gradient_into_the_direction() -> None:
    arch = LOptArchitecture()
    theta = init_theta(arch, 3)
    big = large_step_theta(theta, arch, 1000.0)
    first_w, first_time_w, first_b, second_w, _, last_w, last_b = unpack_theta(arch, big)
    assert first_w[0].tolist() == [1.0] + [0.0] * (first_w.shape[1] - 1)
    assert first_w[1, 0] == -1.0 and not first_time_w[:2].any() and not first_b[:2].any()
    assert second_w[0, 0] == second_w[1, 1] == 1.0 and second_w[:2].abs().sum() == 2.0
    assert (last_w[0, 0], last_w[0, 1]) == (1.0, -1.0)
    assert math.exp(arch.exp_mult * float(last_b[1])) == pytest.approx(1000.0)
    changed = (big != theta).sum()
    assert 0 < changed < 200 and torch.equal(theta, init_theta(arch, 3))  # a copy


def test_training_and_truncation_quick_versions_run(task) -> None:  # type: ignore[no-untyped-def]
    """Each estimator's outer training of SGD's lr lowers the held-out loss from an unstable
    start; the learned optimizer's part runs every estimator, and at its long unroll rp's
    logged variance dwarfs ES's and the merge leans on ES; the truncation study meta-trains
    both schedules and evaluates three optimizers."""
    cfg = coerce_pathology_config(quick=True).sized()
    frame = run_training(cfg, task)
    table = training_table(frame)
    assert list(zip(table["optimizer"], table["estimator"], strict=True)) == [
        (optimizer, estimator) for optimizer in ("hparam_sgd", "lopt") for estimator in ESTIMATORS
    ]
    sgd = table[table["optimizer"] == "hparam_sgd"]
    assert (sgd["eval_loss_final_mean"] < sgd["eval_loss_start"]).all()
    weights = frame[(frame["metric"] == "es_weight") & (frame["variant"] == "merged")]["value"]
    assert weights.between(0, 1).all()
    lopt = table[table["optimizer"] == "lopt"].set_index("estimator")
    assert (lopt["unroll"] == cfg.training_lopt_unroll).all()
    assert (lopt["outer_steps"] == cfg.training_lopt_outer_steps).all()
    assert np.isfinite(lopt["eval_loss_final_mean"]).all()
    assert math.isnan(lopt.loc["es", "var_rp_median"])  # ES computes no rp samples
    merged = lopt.loc["merged"]
    assert merged["var_rp_median"] > 100 * merged["var_es_median"]
    assert merged["es_weight_median"] > 0.5
    frame = run_truncation(cfg, task)
    table = truncation_table(frame)
    assert {"short", "schedule", "untrained"} <= set(table.columns)
    assert np.isfinite(table[["short", "schedule", "untrained"]].to_numpy()).all()


def test_cli_quick_study_writes_tables_and_figure(tmp_path: Path) -> None:
    out = tmp_path / "p"
    assert main(["pathology", "quick=true", "study=variance", f"out={out}"]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "variance.csv",
        "variance_table.csv",
        "variance.png",
        "summary.md",
    }
    tidy = pd.read_csv(out / "variance.csv")
    assert {"study", "variant", "unroll_length", "metric", "value", "git_commit"} <= set(tidy)
    assert "Fitted growth" in (out / "summary.md").read_text()


def test_every_study_follows_one_protocol_and_the_summary_is_rebuilt_from_its_tables(
    tmp_path: Path,
) -> None:
    """The command iterates study objects (harness.pathology.study), one per setting's study;
    summary.md is rebuilt from the ``*_table.csv`` files alone, each section by its study."""
    from harness.pathology.command import write_summary
    from harness.pathology.study import studies
    from harness.settings.pathology import STUDIES

    every = studies()
    assert list(every) == list(STUDIES)
    for name, study in every.items():
        assert study.name == name and study.title
        assert all(callable(getattr(study, m)) for m in ("run", "table", "plot", "summary"))
    table = pd.DataFrame({"optimizer": ["lopt"], "variant": ["short"], "final_loss": [0.5]})
    table.to_csv(tmp_path / "truncation_table.csv", index=False)
    text = write_summary(tmp_path).read_text()
    assert every["truncation"].title in text and "![truncation](truncation.png)" in text
    assert every["landscape"].title not in text  # no table, no section
    assert "| lopt" in text and "0.5" in text


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["study=nope"], "study must be"),
        (["variance_batch=1"], "variance_batch"),
        (["landscape_lengths=[10,5]"], "increasing"),
        (["sigma=-1"], "sigma"),
        (["bogus=1"], "takes no option 'bogus'"),
        (["task_cfg.bogus=1"], "takes no setting 'bogus'"),
        (["seed=1,2"], "comma list"),
        (["-m", "seed=1"], "multirun"),
        (["task=nope"], "unknown task"),
    ],
)
def test_cli_rejects_bad_input_in_one_line(
    args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "never"
    assert main(["pathology", f"out={out}", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and fragment in err, err
    assert not out.exists()


def test_each_study_reads_its_flat_keys_nested() -> None:
    """The command line's flat keys (``training_unroll``) are what each study reads as its own
    settings (``cfg.training.unroll``); every prefixed key belongs to exactly one study."""
    import dataclasses

    from harness.settings.pathology import SETTINGS, STUDIES

    cfg = coerce_pathology_config(quick=True, training_unroll=7).sized()
    assert cfg.training.unroll == cfg.training_unroll == 32  # quick sizes replace it
    assert cfg.settings("variance").batch == cfg.variance.batch == cfg.variance_batch
    flat = {f.name for f in dataclasses.fields(cfg) if f.name.split("_")[0] in STUDIES}
    nested = {f"{s}_{f.name}" for s, c in SETTINGS.items() for f in dataclasses.fields(c)}
    assert flat == nested
