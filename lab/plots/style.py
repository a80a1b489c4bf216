"""The look every figure of lab/plots shares: the Agg backend, DPI and rc style, axis wording, the
readable names of known metrics (`metric_label`), the mean over seeds (`seed_mean`), saving a
figure (`save_figure`), and the order and colour of the conditions of a sweep or a comparison
(`condition_sort_key`, `condition_colours`: the baseline first, one colour per condition everywhere).

Importing this module selects matplotlib's headless Agg backend, so a plot module imports it before
pyplot.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

DPI = 130
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": 9,
    "figure.titlesize": 13,
    # titles at the top of their axes: matplotlib otherwise measures every axis's ticks at each draw to
    # lift a title over top tick labels, which no figure here has (a tenth of a run's drawing time)
    "axes.titley": 1.0,
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


# zlib level 3, not Pillow's 6: the run's PNGs encode in 0.22 s instead of 0.30 s, 9 % larger
PNG_OPTIONS = {"compress_level": 3}


def save_figure(fig, path: Path) -> Path:
    """Write `fig` to `path` at DPI, close it and return the path."""
    # the layout already trims; "tight" would draw twice
    fig.savefig(path, dpi=DPI, **({"pil_kwargs": PNG_OPTIONS} if str(path).endswith(".png") else {}))
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- fixed layout

EDGE_IN = 0.08     # inches between the figure's edge and its suptitle or bottom legend


def _height_in(fig, artist, renderer) -> float:
    return artist.get_window_extent(renderer).height / fig.dpi if artist is not None and artist.get_text() else 0.0


def fixed_layout(fig, *, left: float = 0.85, right: float = 0.3, top: float = 0.4, bottom: float = 0.6,
                 wgap: float = 0.6, hgap: float = 0.6) -> None:
    """Place the figure's subplot grid with margins and gaps in inches: `top` below the suptitle,
    `bottom` above the figure legends (both measured here and put at the figure's edges), `wgap` and
    `hgap` between columns and rows. Call it after the suptitle and figure legends are made and
    before a colorbar of several axes (`shared_colorbar`); one-axes colorbars may come before.

    The run figures use this instead of constrained layout, which measures every tick label of every
    axes twice before the figure is drawn (about half of the time a run's figures took); the margins
    here are chosen per figure for its tick labels, so only the suptitle and legends, whose size varies
    with the run, are measured."""
    w, h = fig.get_size_inches()
    renderer = fig.canvas.get_renderer()
    title = fig._suptitle
    title_in = _height_in(fig, title, renderer)
    if title_in:
        title.set_y(1 - EDGE_IN / h)
        title.set_verticalalignment("top")
    legend_in = 0.0
    for legend in fig.legends:     # stacked upwards from the bottom edge
        legend.set_loc("lower center")
        while legend._ncols > 1 and legend.get_window_extent(renderer).width / fig.dpi > w - 0.2:
            legend.set_ncols(legend._ncols - 1)      # wider than the figure: fewer columns, more rows
        legend.set_bbox_to_anchor((0.5, (EDGE_IN + legend_in) / h), transform=fig.transFigure)
        legend_in += legend.get_window_extent(renderer).height / fig.dpi
    top_in = (title_in + 2 * EDGE_IN if title_in else 0.0) + top
    bottom_in = (legend_in + EDGE_IN if legend_in else 0.0) + bottom
    gs = next((ax.get_subplotspec().get_topmost_subplotspec().get_gridspec() for ax in fig.axes
               if ax.get_subplotspec() is not None), None)
    nrows, ncols = gs.get_geometry() if gs is not None else (1, 1)
    ax_w = max((w - left - right - (ncols - 1) * wgap) / ncols, 0.1)
    ax_h = max((h - top_in - bottom_in - (nrows - 1) * hgap) / nrows, 0.1)
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top_in / h, bottom=bottom_in / h,
                        wspace=wgap / ax_w, hspace=hgap / ax_h)


def shared_colorbar(fig, mappable, axes, *, label: str, pad: float = 0.12, width: float = 0.16,
                    shrink: float = 1.0, **kwargs):
    """A colorbar right of `axes` (a sequence), `pad` and `width` inches, spanning their height
    (`shrink` of it, centred); place the axes first (fixed_layout) and leave it the right margin."""
    boxes = [ax.get_position() for ax in np.ravel(axes)]
    x1 = max(b.x1 for b in boxes)
    y0, y1 = min(b.y0 for b in boxes), max(b.y1 for b in boxes)
    w, _ = fig.get_size_inches()
    span = (y1 - y0) * shrink
    cax = fig.add_axes((x1 + pad / w, y0 + (y1 - y0 - span) / 2, width / w, span))
    return fig.colorbar(mappable, cax=cax, label=label, **kwargs)


# ----------------------------------------------------------------------------- conditions of a sweep or comparison

# One colour per condition, the same in every figure of a sweep (lab/plots/sweep.py) and in `lab-plot
# --compare` (lab/plots/compare.py): both order their conditions with `condition_sort_key` (the baseline
# first) and colour them with `condition_colours`. tab10 less its grey, which marks thresholds and seeds.
CONDITION_PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                     "tab:olive", "tab:cyan"]
BASELINE_WORDS = {"none", "null", "default", "off", "false", "no"}
CONFIG_DEFAULTS = Path(__file__).resolve().parent.parent.parent / "configs" / "config.yaml"
_default_groups: dict | None = None


def default_groups() -> dict[str, str]:
    """The config groups' default choices in configs/config.yaml ({"task": "induction", "clamp": "none",
    ...}); {} when it cannot be read (an installed package without the configs)."""
    global _default_groups
    if _default_groups is None:
        try:
            defaults = yaml.safe_load(CONFIG_DEFAULTS.read_text(encoding="utf-8")).get("defaults") or []
        except (OSError, AttributeError, yaml.YAMLError):
            defaults = []
        _default_groups = {k: str(v) for d in defaults if isinstance(d, dict) for k, v in d.items()}
    return _default_groups


def is_baseline(key: str, value) -> bool:
    """Whether a swept or differing value is the baseline: no value, an empty mapping (no clamps), false,
    a word such as none / default / off, or the config group's default choice (clamp=none, task=induction)."""
    if value is None or value is False or (isinstance(value, (dict, list)) and not value):
        return True
    text = str(value).strip().lower()
    return text in BASELINE_WORDS or default_groups().get(key.lstrip("+~")) == str(value)


def _value_key(key: str, value) -> tuple:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    return (0 if is_baseline(key, value) else 1, 0 if number else 1, value if number else 0,
            "" if number else json.dumps(value, sort_keys=True, default=str))


def condition_sort_key(params: dict) -> tuple:
    """Sort key of a condition (its swept or differing values, key -> value): the all-baseline condition
    first, then by each key's value (its baseline first, numbers ascending, the rest by their text)."""
    return (0 if all(is_baseline(k, v) for k, v in params.items()) else 1,
            tuple(_value_key(k, v) for k, v in params.items()))


def condition_colours(conditions: list[dict]) -> list:
    """One colour per condition, conditions given in `condition_sort_key` order: a sequential (viridis)
    ramp when they differ in one numeric value only, else CONDITION_PALETTE (then tab20) in order."""
    n = len(conditions)
    keys = {k for c in conditions for k in c}
    numeric = len(keys) == 1 and n > 1 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for c in conditions for v in c.values())
    if numeric:
        cmap = plt.get_cmap("viridis")
        return [cmap(0.08 + 0.8 * i / max(n - 1, 1)) for i in range(n)]
    if n <= len(CONDITION_PALETTE):
        return CONDITION_PALETTE[:n]
    cmap = plt.get_cmap("tab20")
    return [cmap(i % cmap.N) for i in range(n)]
