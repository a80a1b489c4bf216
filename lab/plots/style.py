"""The look every figure of lab/plots shares: the Agg backend, DPI and rc style, axis wording, the
readable names of known metrics (`metric_label`), the mean over seeds (`seed_mean`) and saving a
figure (`save_figure`).

Importing this module selects matplotlib's headless Agg backend, so a plot module imports it before
pyplot.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 130
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
}
STEP_LABEL = "training step"
SCORE_CMAP = "viridis"
CLAMPED_INFIX = "_clamped_"             # metrics.jsonl: loss_repeat_clamped_<name> for apply: measure

# Known metric names; anything else of the right shape is still plotted, under its key.
LABELS = {
    "loss_repeat": "loss on repeated part",
    "loss": "overall probe loss",
    "train_loss": "training loss",
    "acc_repeat": "accuracy on repeated part",
    "icl_score": "ICL score (late − early loss)",
    "induction": "induction score",
    "prev_token": "previous-token score",
    "prev_token_corrected": "corrected previous-token score",
    "copying": "copying score",
    "lr": "learning rate",
    "loss_query": "loss at the query",
    "acc_query": "accuracy at the query",
    "r2_query": "R² at the query (vs predicting 0)",
    "gd_loss": "loss of one GD step (η*)",
    "pred_distance": "mean (ŷ − ŷ_GD)²",
    "sensitivity_cosine": "cos(∂ŷ/∂x_q, ∂ŷ_GD/∂x_q)",
    "anti_induction": "anti-induction score",
    "cla": "context-label accuracy (CLA)",
    "label_mass": "probability on in-context labels",
}


def metric_label(key: str) -> str:
    """A metric's readable name: LABELS, '<label> under clamp <name>' for a clamped copy, else the key."""
    base, infix, name = key.partition(CLAMPED_INFIX)
    if infix and base in LABELS:
        return f"{LABELS[base]} under clamp {name}"
    return LABELS.get(key, key.replace("_", " "))


def seed_mean(a: np.ndarray) -> np.ndarray:
    """Mean over axis 1 (the seeds), ignoring NaN; all-NaN columns stay NaN, without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns stay NaN
        return np.nanmean(a, axis=1)


def save_figure(fig, path: Path) -> Path:
    """Write `fig` to `path` at DPI, close it and return the path."""
    fig.savefig(path, dpi=DPI)  # constrained layout already trims; "tight" would draw twice
    plt.close(fig)
    return path
