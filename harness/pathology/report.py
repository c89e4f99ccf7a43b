"""Figures and tables of the pathology study: matplotlib's object API on an Agg canvas (no pyplot,
never a window), files written atomically, markdown tables for ``summary.md``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.util import markdown_table, write_atomically, write_text_atomically

DPI = 110
ESTIMATOR_COLOURS = {"rp": "tab:red", "es": "tab:blue", "merged": "tab:green"}
ESTIMATOR_LABELS = {
    "rp": "rp (reparameterisation)",
    "es": "ES (antithetic)",
    "merged": "merged (inverse variance)",
}


def figure(rows: int, cols: int, width: float = 5.2, height: float = 3.8) -> Figure:
    """A figure with ``rows x cols`` axes of about ``width x height`` inches each."""
    fig = Figure(figsize=(width * cols, height * rows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.subplots(rows, cols, squeeze=False)
    return fig


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; returns ``path``."""
    return write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))


def length_colours(lengths: Sequence[int]) -> dict[int, Any]:
    """One colour per unroll length, light (short) to dark (long)."""
    cmap = colormaps["viridis"]
    count = max(1, len(lengths) - 1)
    return {n: cmap(0.9 * (1 - i / count)) for i, n in enumerate(lengths)}


def frame_table(frame: pd.DataFrame, digits: int = 4) -> str:
    """``frame`` as a markdown table (:func:`harness.util.markdown_table`, ``plain`` layout):
    floats with ``digits`` significant digits (NaN as ``—``), numeric columns right-aligned."""

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            if math.isnan(value):
                return "—"
            return f"{value:.{digits}g}"
        return str(value)

    align = ["right" if pd.api.types.is_numeric_dtype(frame[c]) else "left" for c in frame.columns]
    rows = [[cell(v) for v in values] for values in frame.itertuples(index=False)]
    return markdown_table(list(frame.columns), rows, align, style="plain")


def write_markdown(path: Path, sections: Sequence[tuple[str, str]]) -> Path:
    """``## title`` + body for every section, atomically."""
    text = "\n\n".join(f"## {title}\n\n{body.strip()}" for title, body in sections) + "\n"
    return write_text_atomically(path, text)
