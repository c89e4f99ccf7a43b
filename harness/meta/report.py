"""Has a meta-training run converged? Its curves and a verdict, from ``meta_log.csv``.

``build_meta_report(folder, out)`` reads the tidy log a ``lopt meta-train`` run writes and
writes ``out/meta_curves.png`` (the outer loss, raw and smoothed, against outer steps; the
held-out losses of the snapshots, the learned optimizer trained for the whole horizon on fresh
seeds, against CPU-hours) and ``out/meta_summary.md`` (:func:`convergence` as a table).

The verdict compares the mean outer loss of the last tenth of the outer steps with the tenth
before it: *flattened* when it improved by less than 2 % of the loss (for ``loss=log``, whose
values are logs: by less than 0.02, a 2 % change of the loss itself), else *still falling*
(or *rising*). Each outer step draws new inner problems, so the outer loss moves from step to
step by more than its trend; when both tenths hold at least :data:`NOISE_MIN_STEPS` steps and
the change lies within twice its standard error (Welch's, from the two tenths' spreads) the
verdict is *flattened within noise*: no measurable change, which is all a noisy curve can show.
It is a statement about the outer loss only; the held-out rows say whether what meta-training
optimises still helps whole runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UsageError

#: improvement of the last tenth over the one before below which a run has flattened
FLAT_RELATIVE = 0.02
FLAT_LOG = 0.02
#: the fewest outer steps per tenth for a standard error to judge by
NOISE_MIN_STEPS = 5
SUMMARY_FILE = "meta_summary.md"
CURVES_FILE = "meta_curves.png"


def read_meta_log(folder: str | Path) -> pd.DataFrame:
    """The log of the run in ``folder`` (one-line ``UsageError`` if there is none)."""
    path = Path(folder) / "meta_log.csv"
    if not path.is_file():
        raise UsageError(f"{str(folder)!r} holds no meta-training log (meta_log.csv)")
    try:
        return pd.read_csv(path)
    except (ValueError, OSError) as exc:
        raise UsageError(f"cannot read {str(path)!r}: {exc}") from exc


def convergence(log: pd.DataFrame) -> dict[str, Any]:
    """What a person needs to judge the run: outer steps, CPU-hours, inner steps, the mean outer
    loss of the last tenth of the outer steps and of the tenth before, their difference and the
    verdict, and the held-out losses (first, best, last)."""
    wide = log.pivot_table(index="outer_step", columns="metric", values="value", aggfunc="last")
    steps = wide.index[wide.index > 0]
    loss_kind = str(log["loss"].iloc[0]) if "loss" in log and len(log) else "mean"
    out: dict[str, Any] = {"outer_steps": int(steps.max()) if len(steps) else 0}
    if "cpu_seconds" in wide:
        out["cpu_hours"] = float(wide["cpu_seconds"].dropna().iloc[-1]) / 3600
    if "inner_steps" in wide:
        out["inner_steps"] = int(wide["inner_steps"].dropna().iloc[-1])
    tenth = max(1, len(steps) // 10)
    losses = wide.loc[steps, "outer_loss"] if "outer_loss" in wide else pd.Series(dtype=float)
    verdict = "too short"
    if len(losses) >= 2 * tenth and len(steps) >= 20:
        last_tenth, tenth_before = losses.iloc[-tenth:], losses.iloc[-2 * tenth : -tenth]
        last, before = last_tenth.mean(), tenth_before.mean()
        gain = before - last
        threshold = FLAT_LOG if loss_kind == "log" else FLAT_RELATIVE * abs(before)
        noise = math.inf
        if tenth >= NOISE_MIN_STEPS:
            noise = 2 * math.sqrt((last_tenth.var() + tenth_before.var()) / tenth)
        if abs(gain) < threshold:
            verdict = "flattened"
        elif math.isfinite(noise) and abs(gain) <= noise:
            verdict = "flattened within noise"
        else:
            verdict = "still falling" if gain > 0 else "rising"
        out.update(outer_loss_last_tenth=last, outer_loss_tenth_before=before, gain=gain)
        if math.isfinite(noise):
            out["gain_noise"] = noise
    out["verdict"] = verdict
    for name in (f"heldout_{s}_loss{m}" for m in ("", "_mean") for s in ("train", "valid")):
        if name in wide:
            values = wide[name].dropna()
            if len(values):
                out[f"{name}_first"] = float(values.iloc[0])
                out[f"{name}_best"] = float(values.min())
                out[f"{name}_last"] = float(values.iloc[-1])
                out[f"{name}_best_at_step"] = int(values.idxmin())
    return out


def build_meta_report(folder: str | Path, out: str | Path | None = None) -> list[Path]:
    """Write the curves and the summary of the run in ``folder`` into ``out`` (default: the
    run's folder); returns the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from harness.util import markdown_table, write_atomically, write_text_atomically

    log = read_meta_log(folder)
    target = Path(out) if out is not None else Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    summary = convergence(log)
    wide = log.pivot_table(index="outer_step", columns="metric", values="value", aggfunc="last")
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    if "outer_loss" in wide:
        left.plot(wide.index, wide["outer_loss"], alpha=0.35, label="outer loss")
    if "outer_loss_smoothed" in wide:
        left.plot(wide.index, wide["outer_loss_smoothed"], label="smoothed")
    left.set_xlabel("outer step")
    left.set_ylabel(f"outer loss ({log['loss'].iloc[0] if 'loss' in log else 'mean'})")
    left.legend()
    cpu = wide["cpu_seconds"].ffill().fillna(0.0) / 3600 if "cpu_seconds" in wide else None
    for split in ("train", "valid"):
        name = f"heldout_{split}_loss"
        if name in wide and cpu is not None:
            values = wide[name].dropna()
            right.plot(cpu.reindex(values.index).fillna(0.0), values, marker="o", label=split)
    right.set_yscale("log")
    right.set_xlabel("meta-training CPU-hours")
    right.set_ylabel("held-out final loss (whole horizon)")
    right.legend()
    figure.suptitle(f"{log['task'].iloc[0]}: {log['learner'].iloc[0] if 'learner' in log else ''}")
    figure.tight_layout()
    curves = target / CURVES_FILE
    write_atomically(curves, lambda tmp: figure.savefig(tmp, format="png", dpi=110))
    plt.close(figure)
    lines = [
        f"# Meta-training run {log['run_id'].iloc[0]}",
        "",
        markdown_table(
            ["quantity", "value"], [[k, _fmt(v)] for k, v in summary.items()], style="compact"
        ),
        "",
        f"![curves]({CURVES_FILE})",
        "",
    ]
    text = "\n".join(lines)
    written = write_text_atomically(target / SUMMARY_FILE, text)
    return [curves, written]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else "-"
    return str(value)
