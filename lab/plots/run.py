"""The figures of one run directory, one PNG each: the loss and the phase change, per-head scores
(heatmaps and lines), attention snapshots, loss by position, every logged scalar and every per-head
measure. `plot_run` draws them; `lab-plot RUN_DIR` and `lab-train` call it.

Everything is read from the files the trainer writes (metrics.jsonl, summary.json,
attention.npz, config.yaml), so plots can be redrawn for a finished or a killed run without JAX.
Unknown per-seed scalars and per-head measures are picked up by shape and drawn in the
overview figures, so a new measure needs no change here. Clamps (config.yaml `clamps:`) are
shaded on the loss, per-head line and all-scalars figures (lab/plots/clamp_windows.py).

To add a run figure, write one function here that takes the run (`_Run`: its metrics, phase
change, strongest heads and clamps, read once) and the path to write, and returns the path, or
None when the run lacks its data; register it with `@run_figure("<name>", caption="<what it
shows>")`. It is drawn as `<name>.png`, after the figures above it, and `plot_run(figures=...)`
and FIGURES know it by its name. Shared style and helpers are in lab/plots/style.py.
"""
from __future__ import annotations

import math
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# lab.plots.style first: it selects the headless Agg backend before pyplot loads
from lab.plots.style import (CLAMPED_INFIX, LABELS, SCORE_CMAP, STEP_LABEL, STYLE, fixed_layout, metric_label,
                             save_figure, seed_mean, shared_colorbar)
from lab.plots.clamp_windows import (CLAMP_COLOURS, ClampWindow, clamp_legend, clamp_note, clamp_windows,
                                     shade_clamps)
from lab.plots.registry import Figure, figure_decorator
from lab.plots.compare import run_identity
from lab.plots.transition import Transition, finding, phase_transition
from lab.analysis.development import VERSION as STAGES_VERSION
from lab.analysis.development import essential_dynamics, smoothed_curve, stage_report
from lab.rundir import (load_attention, load_llc, load_metrics, load_outputs, load_overrides, load_run_config,
                        load_summary)
from lab.rundir import n_seeds as count_seeds

import matplotlib.pyplot as plt  # noqa: E402  (after lab.plots.style: the Agg backend)
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.colors import LogNorm, PowerNorm, TwoSlopeNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402

MARK_COLOUR = "tab:red"       # transition marks on heatmaps and detectors; visible on both ends of viridis
# transition marks on line plots, where red would pass for a red curve (tab10's fourth head, the ICL score):
# a black dotted midpoint and a grey onset-end band
LINE_MARK = {"color": "black", "ls": (0, (1, 1.3)), "lw": 2.0}
BAND_COLOUR = "0.55"
LABELLED_HEADS = 3             # heads_lines names this many of the top heads of each panel at their line's end
STAGE_COLOUR = "0.2"           # change-point transitions (stages)
MAX_ATTENTION_COLUMNS = 8
LINE_STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2))]


# ----------------------------------------------------------------------------- registry


RUN_FIGURES: dict[str, Figure] = {}   # name -> figure, in the order plot_run draws them
# @run_figure(name, caption) on `draw(run: _Run, path) -> Path | None` registers the run figure <name>.png
run_figure = figure_decorator(RUN_FIGURES, "run")


# ----------------------------------------------------------------------------- run bundle


@dataclass
class _Run:
    """What the run figures draw, read once from the run directory."""

    name: str
    steps: np.ndarray
    metrics: dict[str, np.ndarray]
    scalars: dict[str, np.ndarray]  # (N, S)
    heads: dict[str, np.ndarray]    # (N, S, L, H)
    n_seeds: int
    transition: Transition | None
    thresholds: dict
    strongest: dict[str, tuple[int, int]]
    has_summary: bool
    clamps: list[ClampWindow] = field(default_factory=list)
    main: str = "loss_repeat"        # the task's main loss (summary.json main_metric) and its accuracy
    main_acc: str = "acc_repeat"
    main_label: str = "loss on repeated part"
    baselines: dict = field(default_factory=dict)   # summary.json: reference-predictor loss key -> label
    main_heads: list[str] = field(default_factory=list)   # of induction, prev_token: the ones logged
    attention: dict | None = None    # attention.npz; read only when the attention figure is wanted
    summary: dict = field(default_factory=dict)    # summary.json as read
    llc: dict | None = None          # llc.npz and outputs.npz; read only when a development figure is wanted
    outputs: dict | None = None
    identity: str = ""               # what the run is (task, model, overrides): lab.plots.compare.run_identity
    found: str = ""                  # what it found: lab.plots.transition.finding
    _stages: dict | None = None
    _ed: dict = field(default_factory=dict)   # essential dynamics by settings, computed once for both figures

    def stages(self) -> dict:
        """summary.json's "stages" (lab.analysis.development.stage_report), computed here when the
        summary predates it, or predates its current layout (then with the report's own settings)."""
        if self._stages is None:
            stages = self.summary.get("stages")
            current = isinstance(stages, dict) and "per_seed" in stages
            if current and stages.get("version", 1) >= STAGES_VERSION:
                self._stages = stages
            else:
                settings = (stages.get("settings") or {}) if isinstance(stages, dict) else {}
                kept = {k: settings[k] for k in ("sigma", "min_prominence_frac", "flat_frac", "window_tolerance",
                                                 "n_components") if isinstance(settings.get(k), (int, float))}
                self._stages = stage_report(self.summary, self.llc, self.outputs, **kept)
        return self._stages

    @property
    def x_range(self) -> tuple[float, float]:
        return float(self.steps[0]), float(self.steps[-1])

    def head_names(self, key: str) -> list[str]:
        _, _, n_layers, n_heads = self.heads[key].shape
        return [f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]

    def status(self) -> str:
        if self.transition is not None:
            return self.transition.describe()
        return "no phase analysis " + ("in summary.json" if self.has_summary else "(no summary.json)")

    def status_line(self) -> str:
        return self.status().splitlines()[0]

    def subtitle(self, width: int = 90) -> str:
        """What the run found, and a line naming the clamps if the run has any."""
        note = clamp_note(self.clamps, width)
        return textwrap.fill(self.found, width) + (f"\n{note}" if note else "")

    def title(self, what: str, width: int = 90, found: bool = True) -> str:
        """A figure's title: what it shows and what the run is, then (`found`) what the run found and
        its clamps, each wrapped at `width` characters."""
        head = textwrap.fill(f"{what} — {self.identity}" if self.identity else what, width)
        return head + (f"\n{self.subtitle(width)}" if found else "")

    def essential_dynamics(self, n_components: int, sigma: float, min_prominence_frac: float) -> dict:
        """essential_dynamics of outputs.npz, computed once per settings (the development and the
        essential-dynamics figures both draw it)."""
        key = (n_components, sigma, min_prominence_frac)
        if key not in self._ed:
            self._ed[key] = essential_dynamics(self.outputs["steps"], self.outputs["outputs"], n_components=n_components,
                                               sigma=sigma, min_prominence_frac=min_prominence_frac)
        return self._ed[key]

    def shade_clamps(self, ax, label: bool = False) -> None:
        shade_clamps(ax, self.clamps, self.x_range, label=label)

    def clamped(self, base: str) -> list[tuple[str, str, str]]:
        """(key, clamp name, colour) of each logged `<base>_clamped_<name>` per-seed scalar."""
        colours = {w.name: w.colour for w in self.clamps}
        prefix = f"{base}{CLAMPED_INFIX}"
        out = []
        for key in self.scalars:
            if key.startswith(prefix):
                name = key[len(prefix):]
                out.append((key, name, colours.get(name, CLAMP_COLOURS[len(out) % len(CLAMP_COLOURS)])))
        return out


def _strongest_head(summary: dict, heads: dict, summary_key: str, metric: str) -> tuple[int, int] | None:
    head = summary.get(summary_key)
    if isinstance(head, (list, tuple)) and len(head) == 2:
        return int(head[0]), int(head[1])
    if metric not in heads:
        return None
    # no summary: the head with the highest final score (mean over seeds)
    final = seed_mean(heads[metric])[-1]
    if np.all(np.isnan(final)):
        return None
    l, h = np.unravel_index(np.nanargmax(final), final.shape)
    return int(l), int(h)


def _gather(run_dir: Path) -> _Run:
    metrics = load_metrics(run_dir)
    summary = load_summary(run_dir)
    main = summary.get("main_metric", "loss_repeat")
    config = load_run_config(run_dir)
    n_seeds = count_seeds(metrics)
    scalars = {k: v for k, v in metrics.items() if k != "step" and v.ndim == 2 and v.shape[1] == n_seeds}
    heads = {k: v for k, v in metrics.items() if v.ndim == 4 and v.shape[1] == n_seeds}
    strongest = {}
    for metric, summary_key in (("induction", "strongest_induction_head"),
                                ("prev_token", "strongest_prev_token_head")):
        head = _strongest_head(summary, heads, summary_key, metric)
        if head is not None:
            strongest[metric] = head
    return _Run(
        name=run_dir.resolve().name,
        steps=metrics["step"],
        metrics=metrics,
        scalars=scalars,
        heads=heads,
        n_seeds=n_seeds,
        transition=phase_transition(summary, main),
        thresholds=summary.get("thresholds") or {},
        strongest=strongest,
        has_summary=bool(summary),
        clamps=clamp_windows(config, float(metrics["step"][-1]), summary),
        main=main,
        main_acc=summary.get("main_accuracy", "acc_repeat"),
        main_label=summary.get("main_metric_label", metric_label(main)),
        baselines=summary.get("baselines") or {},
        main_heads=[k for k in ("induction", "prev_token") if k in heads],
        summary=summary,
        identity=run_identity(config, load_overrides(run_dir), summary),
        found=finding(summary, main),
    )


# ----------------------------------------------------------------------------- helpers


def _plot_seeds(ax, steps, values, label, colour, ls="-", sparse=False) -> None:
    """Thin line per seed, thick mean; one seed gets just the thick line. `sparse`: a scalar logged at
    some log steps only (the LLC every measures.llc.every steps): its points, joined across the gaps."""
    mean = seed_mean(values)
    if sparse:
        keep = np.isfinite(mean)
        steps, values, mean = steps[keep], values[keep], mean[keep]
    marker = {"marker": "o", "ms": 3.5} if sparse else {}
    if values.shape[1] > 1:
        for s in range(values.shape[1]):
            ax.plot(steps, values[:, s], color=colour, lw=0.8, alpha=0.4, ls=ls)
    ax.plot(steps, mean, color=colour, lw=2.2, label=label, ls=ls, **marker)


def _mark_transition(ax, tr: Transition | None, band=True, per_seed=True, label=False) -> None:
    """The loss transition on a line plot: a grey band from mean onset to end, thin grey lines at each
    seed's midpoint and a black dotted line at the mean midpoint (no colour a curve could have)."""
    if tr is None or not tr.detected:
        return
    if band and tr.onset is not None and tr.end is not None:
        ax.axvspan(tr.onset, tr.end, color=BAND_COLOUR, alpha=0.18, lw=0, zorder=0,
                   label="transition (mean onset–end, grey band)" if label else None)
    if per_seed and len(tr.midpoints) > 1:
        for m in tr.midpoints:
            ax.axvline(m, color="0.45", lw=0.8, ls=":", alpha=0.9, zorder=1)
    if tr.centre is not None:
        what = "mean transition midpoint" if tr.midpoint is not None else "mean step the loss crossed the threshold"
        ax.axvline(tr.centre, zorder=1.5, label=f"{what} (black dotted)" if label else None, **LINE_MARK)


def _mark_stages(ax, tr: Transition | None, label=False) -> None:
    """Each seed's change-point transitions as a bar (onset to end) along the top of the axes, one
    row per seed, so stages that one sigmoid cannot describe are still visible."""
    if tr is None or not tr.n_staged:
        return
    bars = ax.get_xaxis_transform()           # x in data, y in axes fraction
    for s, spans in enumerate(tr.stages):
        y = 0.985 - 0.025 * s
        for k, (onset, end) in enumerate(spans):
            ax.plot([onset, max(end, onset)], [y, y], transform=bars, color=STAGE_COLOUR, lw=3, solid_capstyle="butt",
                    marker="|", ms=7, label="change-point transitions (one row per seed)" if label and not s and not k
                    else None)


def _step_edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges halfway between log steps, so uneven logging keeps true x positions."""
    s = steps.astype(float)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


# ----------------------------------------------------------------------------- figures


@run_figure("loss", caption="The main loss and the overall probe loss over training (thin: seeds, thick: mean) with "
                           "the phase change and detection threshold marked, above the accuracy and ICL score.",
                           cost=0.45)
def _plot_loss(run: _Run, path: Path) -> Path:
    fig, (ax, ax_acc) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True, height_ratios=[3, 2])
    seeds_note = f"thin: {run.n_seeds} seeds, thick: mean" if run.n_seeds > 1 else "1 seed"
    for key, colour, label in ((run.main, "C0", run.main_label), ("loss", "C1", metric_label("loss"))):
        same = (key == "loss" and key in run.scalars and run.main in run.scalars
                and np.allclose(run.scalars[key], run.scalars[run.main], equal_nan=True))
        if key in run.scalars and not same:   # tasks scored only at the query log loss = the main loss
            _plot_seeds(ax, run.steps, run.scalars[key], label, colour)
    for key, name, colour in run.clamped(run.main):
        _plot_seeds(ax, run.steps, run.scalars[key], f"loss under clamp {name}", colour, ls="--")
    for i, (key, label) in enumerate(run.baselines.items()):   # e.g. in-context unigram / bigram predictors
        if key in run.scalars:
            _plot_seeds(ax, run.steps, run.scalars[key], label, f"C{4 + i}", ls=":")
    run.shade_clamps(ax)
    if run.thresholds.get(run.main) is not None:
        ax.axhline(run.thresholds[run.main], color="0.3", ls="--", lw=1,
                   label=f"detection threshold ({run.thresholds[run.main]:g})")
    _mark_transition(ax, run.transition, label=True)
    _mark_stages(ax, run.transition, label=True)
    ax.set_ylabel("loss")
    ax.set_title(f"Probe loss ({seeds_note})")
    ax.grid(alpha=0.3)
    # the phase verdict heads the legend, outside the axes on the right: inside, it covered curves
    # and the reference predictors' losses (e.g. the Markov task's unigram / bigram baselines)
    status = "\n".join(textwrap.fill(line, 46) for line in run.status().splitlines())   # keeps the legend narrow
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title=status,
                       title_fontproperties={"weight": "bold", "size": 10}, alignment="left", borderaxespad=0)
    legend.get_frame().set_edgecolor("0.5")

    # accuracy and ICL score have different units: twin y axes, each label coloured like its
    # line, which stands in for a legend that could not avoid the curves of both axes
    drawn = []
    if run.main_acc in run.scalars:
        _plot_seeds(ax_acc, run.steps, run.scalars[run.main_acc], None, "C2")
        ax_acc.set_ylabel("accuracy", color="C2")
        ax_acc.tick_params(axis="y", colors="C2")
        if np.nanmin(run.scalars[run.main_acc]) >= 0:   # an R² can be negative: leave its axis free
            ax_acc.set_ylim(-0.02, 1.02)
        what = LABELS.get(run.main_acc) if run.main_acc not in ("acc_repeat", "acc") else None
        what = what or (run.main_label.replace("loss", "accuracy", 1) if "loss" in run.main_label else run.main_acc)
        drawn.append(f"{what} (green, left axis)")
        clamped = run.clamped(run.main_acc)
        for key, name, colour in clamped:
            _plot_seeds(ax_acc, run.steps, run.scalars[key], None, colour, ls="--")
        if clamped:
            drawn[-1] = drawn[-1][:-1] + "; dashed: under clamp)"
    if "icl_score" in run.scalars:
        ax_icl = ax_acc.twinx()
        _plot_seeds(ax_icl, run.steps, run.scalars["icl_score"], None, "C3")
        ax_icl.set_ylabel(metric_label("icl_score"), color="C3")
        ax_icl.tick_params(axis="y", colors="C3")
        drawn.append("ICL score (red, right axis)")
    _mark_transition(ax_acc, run.transition, per_seed=False)
    run.shade_clamps(ax_acc)
    title = " and ".join(drawn) if drawn else f"{run.main_acc} / icl_score not logged"
    ax_acc.set_title(title[0].upper() + title[1:])
    ax_acc.set_xlabel(STEP_LABEL)
    ax_acc.grid(alpha=0.3)
    clamp_legend(fig, run.clamps)
    fig.suptitle(run.title("Loss over training", width=100))
    legend_w = legend.get_window_extent(fig.canvas.get_renderer()).width / fig.dpi
    fixed_layout(fig, left=0.8, right=max(legend_w + 0.3, 1.0 if "icl_score" in run.scalars else 0.3), hgap=0.45)
    return save_figure(fig, path)


def _row_ticks(ax, names: list[str], n_heads: int, bold: str | None, line_colour: str) -> None:
    rows = len(names)
    every = max(1, math.ceil(rows / 40))  # keep labels legible for wide models
    idx = list(range(0, rows, every))
    ax.set_yticks([i + 0.5 for i in idx])
    ax.set_yticklabels([names[i] for i in idx], fontsize=9 if rows <= 16 else 7)
    for tick, i in zip(ax.get_yticklabels(), idx):
        if names[i] == bold:
            tick.set_fontweight("bold")
    for boundary in range(n_heads, rows, n_heads):  # separate layers
        ax.axhline(boundary, color=line_colour, lw=1.5)
    ax.set_ylim(rows, 0)


def _heatmaps(run: _Run, keys: list[str], path: Path, title: str, shared_unit: bool) -> Path | None:
    """One heatmap panel (heads x steps) per key; None when there is no key to draw."""
    if not keys:
        return None
    names = run.head_names(keys[0])
    n_heads = run.heads[keys[0]].shape[3]
    panel_h = float(np.clip(0.22 * len(names) + 1.0, 2.2, 6.5))
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, panel_h * len(keys) + 0.8), sharex=True, squeeze=False)
    edges = _step_edges(run.steps)
    mesh = None
    for ax, key in zip(axes[:, 0], keys):
        data = seed_mean(run.heads[key]).reshape(len(run.steps), -1).T  # (heads, steps)
        vmin, vmax, cmap = 0.0, 1.0, SCORE_CMAP
        lo, hi = (np.nanmin(data), np.nanmax(data)) if np.isfinite(data).any() else (0.0, 1.0)
        if not shared_unit and lo < 0:  # signed measure: centre the colour scale on zero
            lim = max(abs(lo), abs(hi), 1e-9)
            vmin, vmax, cmap = -lim, lim, "RdBu_r"
        elif not shared_unit and hi > 1:
            vmin, vmax = lo, hi
        diverging = cmap != SCORE_CMAP  # white and red would vanish on its pale middle and red end
        mesh = ax.pcolormesh(edges, np.arange(len(names) + 1), data, vmin=vmin, vmax=vmax,
                             cmap=cmap, shading="flat")
        strongest = run.strongest.get(key)
        _row_ticks(ax, names, n_heads, f"L{strongest[0]}H{strongest[1]}" if strongest else None,
                   "0.3" if diverging else "white")
        if run.transition and run.transition.detected and run.transition.centre is not None:
            ax.axvline(run.transition.centre, color="black" if diverging else MARK_COLOUR, lw=1.8, ls="--")
        ax.set_title(f"{metric_label(key)} (mean over seeds)")
        ax.set_ylabel("head")
        if not shared_unit:
            fig.colorbar(mesh, ax=ax, label="score", pad=0.015, fraction=0.04)
    axes[-1, 0].set_xlabel(STEP_LABEL)
    mark = "  (dashed line: loss transition midpoint)" if run.transition and run.transition.detected else ""
    fig.suptitle(run.title(title + mark, width=95), fontsize=12)
    fixed_layout(fig, left=0.8, right=1.0, hgap=0.45, bottom=0.55)   # right: the colorbars' ticks and label
    if shared_unit:
        shared_colorbar(fig, mesh, axes[:, 0], label="score (mean over seeds)", shrink=0.9)
    return save_figure(fig, path)


@run_figure("heads_heatmap", caption="Induction and previous-token scores of every head over training (mean "
                                    "over seeds), one heatmap row per head, with the loss transition midpoint dashed.",
                                    cost=0.4)
def _plot_heads_heatmap(run: _Run, path: Path) -> Path | None:
    # without induction/prev_token measures there is nothing to draw (plot_run has warned)
    return _heatmaps(run, run.main_heads, path, "per-head scores over training", shared_unit=True)


def _head_styles(n_layers: int, n_heads: int):
    """A colour per head (tab10 without its grey, which the transition band and threshold use) and a
    line style per layer."""
    if n_heads <= 9:
        cmap = plt.get_cmap("tab10")
        colours = [cmap(i) for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)][:n_heads]
    else:
        cmap = plt.get_cmap("tab20")
        colours = [cmap(h % cmap.N) for h in range(n_heads)]
    styles = [LINE_STYLES[l % len(LINE_STYLES)] for l in range(n_layers)]
    return colours, styles


def _label_line_ends(ax, x_end: float, final: np.ndarray, colours, strongest) -> None:
    """Name the LABELLED_HEADS heads with the highest final score at the right end of their lines
    (the strongest bold), nudged apart so the names do not overlap."""
    finite = [(float(final[l, h]), l, h) for l in range(final.shape[0]) for h in range(final.shape[1])
              if np.isfinite(final[l, h])]
    top = sorted(finite, reverse=True)[:LABELLED_HEADS]
    gap, placed = 0.06, []
    for value, l, h in top:             # highest first; each label at least `gap` below the one above
        y = min([value] + [p - gap for p in placed])
        placed.append(y)
        ax.annotate(f"L{l}H{h}", (x_end, value), xytext=(4, y), textcoords=("offset points", "data"),
                    ha="left", va="center", fontsize=9, color=colours[h],
                    fontweight="bold" if strongest == (l, h) else "normal", annotation_clip=False)


@run_figure("heads_lines", caption="Induction and previous-token scores of every head over training (mean over "
                                  "seeds) as lines, colour for the head and line style for the layer, the strongest "
                                  "head bold.", cost=0.5)
def _plot_head_lines(run: _Run, path: Path) -> Path | None:
    keys = run.main_heads
    if not keys:
        return None   # plot_run has warned: no induction/prev_token measures logged
    _, _, n_layers, n_heads = run.heads[keys[0]].shape
    colours, styles = _head_styles(n_layers, n_heads)
    fig, axes = plt.subplots(len(keys), 1, figsize=(10, 3.6 * len(keys) + 0.8), sharex=True, squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        mean = seed_mean(run.heads[key])  # (N, L, H)
        strongest = run.strongest.get(key)
        for l in range(n_layers):
            for h in range(n_heads):
                top = strongest == (l, h)
                ax.plot(run.steps, mean[:, l, h], color=colours[h], ls=styles[l], lw=2.6 if top else 1.3,
                        zorder=3 if top else 2)
        _label_line_ends(ax, run.steps[-1], mean[-1], colours, strongest)
        if run.thresholds.get(key) is not None:
            ax.axhline(run.thresholds[key], color="0.3", ls="--", lw=1)
        _mark_transition(ax, run.transition, per_seed=False)
        run.shade_clamps(ax)
        lo = min(0.0, float(np.nanmin(mean))) if np.isfinite(mean).any() else 0.0
        hi = max(1.0, float(np.nanmax(mean))) if np.isfinite(mean).any() else 1.0
        ax.set_ylim(lo - 0.03, hi + 0.03)
        ax.set_ylabel("score")
        ax.set_title(f"{metric_label(key)} per head (mean over seeds)")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel(STEP_LABEL)

    # colour encodes the head index and line style the layer, so the legend stays L + H long
    handles = [Line2D([], [], color=colours[h], lw=2, label=f"head {h}") for h in range(n_heads)]
    handles += [Line2D([], [], color="0.2", ls=styles[l], lw=1.5, label=f"layer {l}") for l in range(n_layers)]
    if any(run.thresholds.get(key) is not None for key in keys):
        handles.append(Line2D([], [], color="0.3", ls="--", lw=1, label="detection threshold"))
    if run.transition and run.transition.detected:
        handles.append(Line2D([], [], label="loss transition midpoint" if run.transition.midpoint is not None
                              else "loss below its threshold (mean step)", **LINE_MARK))
        if run.transition.onset is not None and run.transition.end is not None:
            handles.append(Patch(color=BAND_COLOUR, alpha=0.3, label="loss transition onset–end"))
    # below the panels (at the upper right it ran into the title), with the clamps' entries
    fig.legend(handles=handles, loc="outside lower center", fontsize=9, ncols=min(len(handles), 5), frameon=False)
    clamp_legend(fig, run.clamps)   # a legend of its own: its labels are long
    fig.suptitle(run.title("Per-head scores over training (bold: strongest head)", width=80), fontsize=12)
    fixed_layout(fig, left=0.75, right=0.75, hgap=0.45)    # right: the head names at the lines' ends
    return save_figure(fig, path)


@run_figure("composition", caption="K-composition (Elhage et al. 2021) of every later head with each layer-0 head "
                                  "over training (mean over seeds): one panel per later head, one line per layer-0 "
                                  "head, the strongest previous-token head bold; dotted: the value at step 0.",
                                  cost=0.5)
def _plot_composition(run: _Run, path: Path) -> Path | None:
    K = run.metrics.get("k_composition")
    if K is None or K.ndim != 5:
        return None                   # a 1-layer model, or a run from before composition scores were logged
    mean = seed_mean(K)                                   # (N, L-1, H, H0)
    _, n_later, n_heads, n_first = mean.shape
    colours, _ = _head_styles(1, n_first)
    prev = run.strongest.get("prev_token")
    bold = prev[1] if prev is not None and prev[0] == 0 else None
    panels = [(l, h) for l in range(n_later) for h in range(n_heads)]
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.6 * rows + 1.0), sharex=True, sharey=True,
                             squeeze=False)
    for ax, (l, h) in zip(axes.flat, panels):
        for h0 in range(n_first):
            ax.plot(run.steps, mean[:, l, h, h0], color=colours[h0], lw=2.4 if h0 == bold else 1.1)
            ax.axhline(mean[0, l, h, h0], color=colours[h0], lw=0.6, ls=":")
        _mark_transition(ax, run.transition, per_seed=False)
        ax.set_title(f"L{l + 1}H{h}", fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("K-composition")
    for ax in axes[-1]:
        ax.set_xlabel(STEP_LABEL)
    handles = [Line2D([], [], color=colours[h0], lw=2.4 if h0 == bold else 1.2,
                      label=f"with L0H{h0}" + (" (strongest previous-token head)" if h0 == bold else ""))
               for h0 in range(n_first)]
    fig.legend(handles=handles, loc="outside lower center", fontsize=9, ncols=min(len(handles), 4), frameon=False)
    fig.suptitle(run.title("Which layer-0 head each later head reads its keys from", width=90), fontsize=12)
    fixed_layout(fig, left=0.75, right=0.15, wgap=0.2, hgap=0.35, bottom=0.55)
    return save_figure(fig, path)


def _snapshot_columns(att: dict) -> list[int]:
    """Snapshots to show: all if few, else the labelled ones, else evenly spaced."""
    k = len(att["steps"])
    if k <= MAX_ATTENTION_COLUMNS:
        return list(range(k))
    labelled = [i for i, lab in enumerate(att["labels"]) if lab]
    if 0 < len(labelled) <= MAX_ATTENTION_COLUMNS:
        return labelled
    return sorted(set(np.linspace(0, k - 1, MAX_ATTENTION_COLUMNS).round().astype(int).tolist()))


def _outline_repeats(ax, att: dict) -> None:
    """Box, for each later copy, the keys an ideal induction head attends to (previous
    occurrence + 1): the induction stripe runs along each box's diagonal."""
    start, n, reps = att["repeat_start"], att["repeat_len"], att["n_repeats"]
    if None in (start, n, reps):
        return
    for r in range(1, reps):
        q0, k0 = start + r * n, start + (r - 1) * n + 1
        ax.add_patch(Rectangle((k0 - 0.5, q0 - 0.5), n, n, fill=False, ec="cyan", lw=1.0, ls="--"))


def _layer_heads(run: _Run, n_layers: int, n_heads: int) -> list[tuple[str, tuple[int, int]]]:
    """One row per layer, its relevant head: in layer 0 of a deeper model the strongest previous-token
    head (what induction heads read from), in every later layer (and a 1-layer model's only layer) the
    strongest induction head of that layer; strongest by the final score, mean over seeds. A layer
    whose measure was not logged falls back to the other measure."""
    rows = []
    for l in range(n_layers):
        order = ("prev_token", "induction") if l == 0 and n_layers > 1 else ("induction", "prev_token")
        for key in order:
            scores = run.heads.get(key)
            if scores is None or scores.shape[2:] != (n_layers, n_heads):
                continue
            final = seed_mean(scores)[-1, l]
            if not np.isfinite(final).any():
                continue
            h = int(np.nanargmax(final))
            rows.append((f"layer {l}: strongest {'previous-token' if key == 'prev_token' else 'induction'} head "
                         f"({final[h]:.2f})", (l, h)))
            break
    return rows


@run_figure("attention", caption="Attention patterns on probe sequence 0 (seed 0) at snapshots through training, one "
                                "row per layer with its relevant head (layer 0: the strongest previous-token head; "
                                "later layers: the layer's strongest induction head), ideal induction targets boxed.",
                                cost=0.65)
def _plot_attention(run: _Run, path: Path) -> Path | None:
    att = run.attention
    if att is None:
        return None   # no attention.npz (or a malformed one: load_attention has warned)
    _, n_layers, n_heads, _, _ = att["patterns"].shape
    rows = _layer_heads(run, n_layers, n_heads)
    if not rows:
        warnings.warn("attention plot: no induction or previous-token scores of the snapshot's heads; skipped")
        return None
    cols = _snapshot_columns(att)
    size = 2.7
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(size * len(cols) + 1.4, size * len(rows) + 1.0),
                             sharex=True, sharey=True, squeeze=False)
    # square-root scale: before the phase change weights are spread thin, and a linear scale
    # would show them as uniformly dark; linear attention has signed, unbounded weights instead
    signed = float(np.nanmin(att["patterns"])) < -1e-6
    if signed:
        top = float(np.nanmax(np.abs(att["patterns"]))) or 1.0
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-top, vmax=top)
    else:
        norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    image = None
    for r, (name, (l, h)) in enumerate(rows):
        for c, k in enumerate(cols):
            ax = axes[r, c]
            image = ax.imshow(att["patterns"][k, l, h], norm=norm, cmap="RdBu_r" if signed else SCORE_CMAP,
                              interpolation="nearest")
            _outline_repeats(ax, att)
    for c, k in enumerate(cols):
        label = att["labels"][k] if k < len(att["labels"]) else ""
        step = f"step {int(att['steps'][k])}"
        axes[0, c].set_title(f"{label} ({step})" if label else step, fontsize=10)
        axes[-1, c].set_xlabel("key position", fontsize=10)
    for r, (name, (l, h)) in enumerate(rows):
        axes[r, 0].set_ylabel(f"L{l}H{h}\n{textwrap.fill(name, 28)}\nquery position", fontsize=9)
    # shared axes: one locator serves every panel; positions are whole tokens
    axes[0, 0].xaxis.set_major_locator(MaxNLocator(6, integer=True))
    axes[0, 0].yaxis.set_major_locator(MaxNLocator(6, integer=True))
    for ax in axes.flat:
        ax.tick_params(labelsize=8)
    note = "; cyan boxes: ideal induction targets on each box's diagonal" if att["repeat_len"] else ""
    fig.suptitle(run.title(f"Attention on probe sequence 0 (seed 0){note}", width=110), fontsize=11)
    fixed_layout(fig, left=1.05, right=1.05, top=0.3, bottom=0.5, wgap=0.12, hgap=0.15)
    if signed:
        shared_colorbar(fig, image, axes, label="attention score (linear attention, signed)", shrink=0.85)
    else:
        shared_colorbar(fig, image, axes, label="attention weight (square-root scale)", shrink=0.85,
                        ticks=[0, 0.05, 0.2, 0.4, 0.6, 0.8, 1.0], format="%g")
    return save_figure(fig, path)


def _position_steps(run: _Run) -> list[tuple[int, str]]:
    """Log indices to draw: first, around the transition, last (evenly spread if none)."""
    steps = run.steps
    nearest = lambda s: int(np.argmin(np.abs(steps - s)))  # noqa: E731
    tr = run.transition
    picks = [(0, "first")]
    if tr and tr.detected and tr.centre is not None:
        for s, what in ((tr.onset, "onset"), (tr.centre, "midpoint"), (tr.end, "end")):
            if s is not None:
                picks.append((nearest(s), what))
    else:
        picks += [(nearest(steps[0] + f * (steps[-1] - steps[0])), "") for f in (0.25, 0.5, 0.75)]
    picks.append((len(steps) - 1, "last"))
    first = {}   # each snapshot once, under the first name it was picked for
    for i, what in picks:
        first.setdefault(i, what)
    return sorted(first.items())


@run_figure("loss_by_position", caption="Probe loss at each position of the sequence (mean over seeds) at the "
                                       "first and last logged steps and around the phase change.", cost=0.2)
def _plot_loss_by_position(run: _Run, path: Path) -> Path | None:
    lbp = run.metrics.get("loss_by_pos")
    if lbp is None:
        return None   # the task logs no per-position loss (e.g. classification: only the query is scored)
    if lbp.ndim != 3:
        warnings.warn("loss_by_pos missing or not [S][T-1] per record; skipping loss_by_position.png")
        return None
    mean = seed_mean(lbp)  # (N, T-1)
    positions = np.arange(1, mean.shape[1] + 1)  # entry i is the loss on predicting token i+1
    picks = _position_steps(run)
    colours = plt.get_cmap("plasma")(np.linspace(0.05, 0.85, len(picks)))
    fig, ax = plt.subplots(figsize=(9, 5))
    for colour, (i, what) in zip(colours, picks):
        label = f"step {int(run.steps[i])}" + (f" ({what})" if what else "")
        ax.plot(positions, mean[i], color=colour, lw=1.8, label=label)
    ax.set_xlabel("position of predicted token")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(run.title("Probe loss by position (mean over seeds)", width=80), fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(title="training step", loc="best")
    lines = ax.title.get_text().count("\n") + 1
    fixed_layout(fig, left=0.75, right=0.2, top=0.2 + 0.22 * lines, bottom=0.6)
    return save_figure(fig, path)


@run_figure("all_scalars", caption="Every other logged per-seed scalar (the main loss, probe loss, accuracy and "
                                  "ICL score are loss.png's) and the learning rate over training, one small panel "
                                  "each, with the phase-change midpoint and clamp windows.", cost=0.4)
def _plot_all_scalars(run: _Run, path: Path) -> Path | None:
    """Every per-seed scalar loss.png does not draw (and lr, unless constant) in small multiples, so new
    metrics show up unasked."""
    on_loss_figure = {run.main, "loss", run.main_acc, "icl_score", *run.baselines}
    panels = [(k, v) for k, v in run.scalars.items() if k not in on_loss_figure]
    lr = run.metrics.get("lr")
    constant_lr = ""
    if lr is not None and lr.ndim == 1 and len(lr):
        if np.nanmax(lr) > np.nanmin(lr):
            panels.append(("lr", lr[:, None]))
        else:
            constant_lr = f"; learning rate constant at {float(lr[0]):.3g}"
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    width = max(4.2 * ncols, 8.4)    # room for the title when one or two panels remain
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 3.0 * nrows + 0.6), sharex=True, squeeze=False)
    for ax, (key, values) in zip(axes.flat, panels):
        logged = np.isfinite(values).any(axis=1)
        _plot_seeds(ax, run.steps, values, metric_label(key), "C0", sparse=logged.sum() < 0.5 * len(logged))
        _mark_transition(ax, run.transition, band=False, per_seed=False)
        run.shade_clamps(ax)
        ax.set_title(metric_label(key), fontsize=11)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for i, ax in enumerate(axes.flat[:len(panels)]):
        if i + ncols >= len(panels):  # lowest visible panel of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel(STEP_LABEL)
    clamp_legend(fig, run.clamps)
    fig.suptitle(run.title("Every other logged scalar (thin: seeds, thick: mean; the main loss, probe loss, accuracy "
                           f"and ICL score: loss.png{constant_lr})", width=min(110, int(10 * width))),
                 fontsize=12)
    fixed_layout(fig, left=0.65, right=0.2, top=0.35, wgap=0.7, hgap=0.65)   # hgap: x ticks of a short column
    return save_figure(fig, path)


@run_figure("heads_all_measures", caption="Every other logged per-head measure over training (mean over seeds; "
                                         "the induction and previous-token scores are heads_heatmap's), one heatmap "
                                         "of all heads each, on its own colour scale.", cost=0.45)
def _plot_heads_all_measures(run: _Run, path: Path) -> Path | None:
    others = [k for k in run.heads if k not in run.main_heads]   # heads_heatmap draws the main ones
    what = "every other per-head measure (induction, previous-token: heads_heatmap.png)" if run.main_heads else \
        "every per-head measure"
    return _heatmaps(run, others, path, what, shared_unit=False)


# ----------------------------------------------------------------------------- stages of development


DEVELOPMENT_FIGURES = ("development", "essential_dynamics", "llc_chains")   # read llc.npz / outputs.npz
DETECTOR_COLOURS = {"loss": MARK_COLOUR, "llc": "tab:purple", "essential_dynamics": "tab:green", "heads": "tab:brown"}
DETECTOR_LINES = {"llc": "--", "essential_dynamics": ":", "heads": "-."}
DETECTOR_NAMES = {"loss": "loss transition", "llc": "LLC critical point", "essential_dynamics": "ED turning point",
                  "heads": "head onset"}
SINGLE_NAMES = {"llc_steepest": "LLC steepest change", "ed_fastest": "ED fastest motion"}   # one step per seed
SEED_COLOURS = ["tab:blue", "tab:orange", "tab:cyan", "tab:pink", "tab:olive", "tab:gray", "navy", "goldenrod"]
LLC_MARKERS = {"max": "^", "min": "v", "steepest": "*", "plateau": "o"}     # critical_points' kinds
LLC_KIND_NAMES = {"max": "LLC maximum", "min": "LLC minimum", "steepest": "LLC steepest point (|slope| peak)",
                  "plateau": "LLC plateau point (slope near 0)"}


def _llc_marker(ax, step, value, kind: str, ms: float, chosen: bool = False, **kw) -> None:
    """One LLC critical point in its kind's marker (stars drawn larger; plateau points hollow); the
    run's steepest change (`chosen`) edged in black."""
    colour = DETECTOR_COLOURS["llc"]
    style = {"mec": "white", "mew": 0.5, **kw}
    if kind == "steepest":
        ms *= 1.45
    if kind == "plateau":
        style.update(mfc="white", mec=colour, mew=1.4)
    if chosen:
        style.update(mec="black", mew=1.0)
    ax.plot(step, value, LLC_MARKERS.get(kind, "x"), color=colour, ms=ms, ls="", **style)


def _seed_colour(s: int) -> str:
    """Seeds' colours leave out red, purple, green and brown: those mark the detectors."""
    return SEED_COLOURS[s % len(SEED_COLOURS)]


def _seed_ids(run: _Run, n: int) -> list:
    seeds = run.summary.get("seeds")
    return list(seeds) if isinstance(seeds, list) and len(seeds) == n else list(range(n))


def _plain_log_ticks(axis) -> None:
    """Ticks of a log-scaled step axis at 1, 2, 5 x 10^k, written as plain steps (200, not 2 x 10^2)."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.0f}" if v >= 1 else f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _log_x(ax, *step_arrays) -> None:
    """Log-scaled steps from the first positive logged step to the last (step 0 cannot be drawn)."""
    steps = np.concatenate([np.asarray(a, float).ravel() for a in step_arrays if a is not None and len(a)])
    positive = steps[steps > 0]
    if not len(positive):
        return
    ax.set_xscale("log")
    lo, hi = float(positive.min()), float(positive.max())
    ax.set_xlim(lo / 1.08, hi * 1.08)
    _plain_log_ticks(ax.xaxis)


def _where_positive(steps, values) -> tuple[np.ndarray, np.ndarray]:
    steps = np.asarray(steps, float)
    keep = steps > 0
    return steps[keep], np.asarray(values, float)[keep]


def _value_at(steps, values, step) -> float:
    """The curve's value at the logged step nearest `step`."""
    return float(np.asarray(values, float)[int(np.argmin(np.abs(np.asarray(steps, float) - float(step))))])


def _outputs_kind(outputs: dict) -> str:
    """What outputs.npz holds, as a short noun phrase for titles ("outputs" when its `kind` is not one)."""
    kind = " ".join(str(outputs.get("kind") or "").split())
    return kind if kind and len(kind) <= 40 and not kind.endswith((":", ".")) else "outputs"


def _in_window_text(stages: dict) -> str:
    """How often the LLC and ED boundaries fall inside a loss transition, in words; on a second line
    how often the LLC's steepest change and the ED's fastest motion do."""
    if not (stages.get("measured") or {}).get("loss"):
        return "no loss transitions to compare with (summary.json has no phase information)"
    parts = []
    for det in ("llc", "essential_dynamics"):
        f = (stages.get("in_loss_window") or {}).get(det) or {}
        if f.get("n"):
            parts.append(f"{DETECTOR_NAMES[det]} inside a loss transition in {f['k']}/{f['n']} seeds")
        elif (stages.get("measured") or {}).get(det) and not any(p["boundaries"].get(det) for p in stages["per_seed"]):
            parts.append(f"no {DETECTOR_NAMES[det]} in any seed")
    single = []
    for name, words in SINGLE_NAMES.items():
        f = (stages.get("in_loss_window") or {}).get(name) or {}
        if f.get("n"):
            single.append(f"{words} inside a loss transition in {f['k']}/{f['n']} seeds")
    text = "; ".join(parts) or "no seed has both a timed loss transition and an LLC or ED boundary to compare"
    return text + ("\n" + "; ".join(single) if single else "")


def _boundary_lines(ax, per_seed: list[dict]) -> None:
    """Every seed's LLC, ED and head boundaries as thin vertical lines, one style per detector."""
    for p in per_seed:
        b = p["boundaries"]
        for det in ("llc", "essential_dynamics", "heads"):
            for point in b.get(det) or []:
                step = point["step"] if isinstance(point, dict) else point
                if step and step > 0:
                    ax.axvline(step, color=DETECTOR_COLOURS[det], ls=DETECTOR_LINES[det], lw=0.9, alpha=0.55, zorder=1)


def _loss_bands(ax, per_seed: list[dict]) -> None:
    for p in per_seed:
        for t in p["loss_transitions"]:
            if not t["censored_start"]:
                ax.axvspan(t["onset"], t["end"], color=DETECTOR_COLOURS["loss"], alpha=0.07, lw=0, zorder=0)


RASTER_ROWS = {"llc": -0.28, "essential_dynamics": -0.07, "induction": 0.14, "prev_token": 0.33}


def _raster(ax, per_seed: list[dict], seeds: list, x_lo: float) -> None:
    """One row per seed: its loss transitions as bands, and its LLC, ED, induction-head and
    previous-token-head boundaries as markers, each on its own line within the row (top to bottom).
    Head names are written beside the formed induction heads (all heads when a seed has few)."""
    for r, p in enumerate(per_seed):
        for t in p["loss_transitions"]:
            lo = max(float(t["onset"]), x_lo)
            censored = t["censored_start"]
            ax.fill_between([lo, max(float(t["end"]), lo)], r - 0.42, r + 0.42, color=DETECTOR_COLOURS["loss"],
                            alpha=0.1 if censored else 0.25, lw=0, hatch="///" if censored else None)
        for c in p["boundaries"].get("llc") or []:
            _llc_marker(ax, c["step"], r + RASTER_ROWS["llc"], c["kind"], 7,
                        chosen=c["kind"] == "steepest" and c["step"] == p.get("llc_steepest"))
        steepest = p.get("llc_steepest")
        if steepest and not any(c["kind"] == "steepest" and c["step"] == steepest
                                            for c in p["boundaries"].get("llc") or []):
            _llc_marker(ax, steepest, r + RASTER_ROWS["llc"], "steepest", 7, chosen=True)   # at an end of the curve
        for step in p["boundaries"].get("essential_dynamics") or []:
            ax.plot(step, r + RASTER_ROWS["essential_dynamics"], "D", color=DETECTOR_COLOURS["essential_dynamics"],
                    ms=6, mec="white", mew=0.5)
        if p.get("ed_fastest"):
            ax.plot(p["ed_fastest"], r + RASTER_ROWS["essential_dynamics"], "D", mfc="none", ms=10, mew=1.3,
                    mec=DETECTOR_COLOURS["essential_dynamics"], zorder=3)
        heads = p["boundaries"].get("heads") or []
        clusters: dict[tuple[str, float], list[dict]] = {}      # heads of a group with the same onset: one marker
        for h in heads:
            clusters.setdefault((h["group"], h["step"]), []).append(h)
        for (group, step), members in clusters.items():
            y = r + RASTER_ROWS.get(group, RASTER_ROWS["prev_token"])
            ax.plot(step, y, "s", ms=5.5, mec=DETECTOR_COLOURS["heads"], mew=1.2,
                    mfc=DETECTOR_COLOURS["heads"] if group == "induction" else "white")
            names = [h["head"] for h in members if h.get("formed") or len(heads) <= 3]
            if names:
                label = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
                ax.annotate(label, (step, y), xytext=(5, 0), textcoords="offset points", va="center", fontsize=7,
                            color=DETECTOR_COLOURS["heads"])
        if r:
            ax.axhline(r - 0.5, color="0.85", lw=0.8)
    ax.set_yticks(range(len(per_seed)), [f"seed {s}" for s in seeds])
    ax.set_ylim(len(per_seed) - 0.5, -0.5)
    ax.tick_params(axis="y", length=0)


def _development_legend(fig, per_seed: list[dict]) -> None:
    """Only what the figure shows: each detector's markers that occur, and the lines of the detectors drawn."""
    transitions = [t for p in per_seed for t in p["loss_transitions"]]
    llc_kinds = {c["kind"] for p in per_seed for c in p["boundaries"].get("llc") or []}
    groups = {h["group"] for p in per_seed for h in p["boundaries"].get("heads") or []}
    handles = []
    if any(not t["censored_start"] for t in transitions):
        handles.append(Patch(color=DETECTOR_COLOURS["loss"], alpha=0.25, label="loss transition (onset–end)"))
    if any(t["censored_start"] for t in transitions):
        handles.append(Patch(facecolor=DETECTOR_COLOURS["loss"], alpha=0.1, hatch="///",
                             label="loss falling from the first step"))
    for k in LLC_MARKERS:
        if k in llc_kinds:
            style = {"mfc": "white", "mew": 1.4} if k == "plateau" else {}
            handles.append(Line2D([], [], ls="", marker=LLC_MARKERS[k], color=DETECTOR_COLOURS["llc"],
                                  ms=9 if k == "steepest" else 6, label=LLC_KIND_NAMES[k], **style))
    if any(p.get("llc_steepest") is not None for p in per_seed):
        handles.append(Line2D([], [], ls="", marker="*", ms=9, color=DETECTOR_COLOURS["llc"], mec="black", mew=1.0,
                              label="LLC steepest change (largest |slope|)"))
    if any(p["boundaries"].get("essential_dynamics") for p in per_seed):
        handles.append(Line2D([], [], ls="", marker="D", color=DETECTOR_COLOURS["essential_dynamics"],
                              label="ED turning point"))
    if any(p.get("ed_fastest") is not None for p in per_seed):
        handles.append(Line2D([], [], ls="", marker="D", mfc="none", ms=8, mew=1.3,
                              mec=DETECTOR_COLOURS["essential_dynamics"], label="ED fastest motion"))
    if "induction" in groups:
        handles.append(Line2D([], [], ls="", marker="s", color=DETECTOR_COLOURS["heads"], label="induction-head onset"))
    if "prev_token" in groups:
        handles.append(Line2D([], [], ls="", marker="s", mfc="white", mec=DETECTOR_COLOURS["heads"], mew=1.2,
                              label="previous-token-head onset"))
    shown = [d for d in ("llc", "essential_dynamics", "heads") if any(p["boundaries"].get(d) for p in per_seed)]
    handles += [Line2D([], [], color=DETECTOR_COLOURS[d], ls=DETECTOR_LINES[d], lw=1.2, label=f"{DETECTOR_NAMES[d]}s")
                for d in shown]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), frameon=False, fontsize=9)


@run_figure("development", caption="Stages of development on one log-scaled time axis: the main loss, the local "
                                  "learning coefficient (± its spread over SGLD chains; dashed: smoothed in "
                                  "log-time), the leading essential-dynamics PCs, and per seed the boundaries each "
                                  "detector finds (loss transitions; LLC maxima, minima, steepest and plateau "
                                  "points, the steepest change edged in black; ED turning points, the fastest "
                                  "motion as an open diamond; head onsets); one colour per seed, one per detector.",
                                  cost=0.6)
def _plot_development(run: _Run, path: Path) -> Path | None:
    if run.llc is None and run.outputs is None:
        return None      # neither llc.npz nor outputs.npz: the loss figure already shows the loss
    stages = run.stages()
    per_seed = stages["per_seed"]
    settings = stages.get("settings") or {}
    sigma = float(settings.get("sigma", 2.0))
    ed = None
    if run.outputs is not None and len(run.outputs["steps"]) >= 2:
        ed = run.essential_dynamics(int(settings.get("n_components", 3)), sigma,
                                    float(settings.get("min_prominence_frac", 0.1)))
    n_pcs = min(3, ed["n_components"]) if ed else 0
    panels = ([("loss", 1.5)] if run.main in run.scalars else []) + ([("llc", 1.7)] if run.llc is not None else [])
    panels += [(f"pc{i}", 0.95) for i in range(n_pcs)]
    n_rows = max(len(per_seed), 1)
    panels.append(("raster", 0.45 + 0.42 * n_rows))
    all_steps = [run.steps, None if run.llc is None else run.llc["steps"],
                 None if run.outputs is None else run.outputs["steps"]]
    positive = [float(a[a > 0].min()) for a in map(np.asarray, filter(lambda a: a is not None, all_steps))
                if (a > 0).any()]
    if not positive:   # e.g. a run that stopped before its first chunk: nothing to put on a log axis
        return None
    x_lo = min(positive)
    heights = [h for _, h in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10.5, 1.9 * sum(heights) + 1.6), sharex=True,
                             height_ratios=heights, squeeze=False)
    axes = dict(zip((name for name, _ in panels), axes[:, 0]))
    seeds = _seed_ids(run, len(per_seed))

    if "loss" in axes:
        ax = axes["loss"]
        values = run.scalars[run.main]
        for s in range(values.shape[1]):
            ax.plot(*_where_positive(run.steps, values[:, s]), color=_seed_colour(s), lw=1.5,
                    label=f"seed {_seed_ids(run, values.shape[1])[s]}")
        ax.set_ylabel("loss")
        ax.set_title(run.main_label, loc="left", fontsize=11)
        if values.shape[1] <= 8:
            ax.legend(loc="lower left", fontsize=8.5, ncols=min(values.shape[1], 4), framealpha=0.85)
    if "llc" in axes:
        ax = axes["llc"]
        llc = run.llc
        x = np.asarray(llc["steps"], float)
        mean, std = np.asarray(llc["llc"], float), np.asarray(llc["llc_std"], float)
        unsettled = np.asarray(llc["not_settled"], bool)
        for s in range(mean.shape[1]):
            colour = _seed_colour(s)
            keep = x > 0
            ax.fill_between(x[keep], (mean - std)[keep, s], (mean + std)[keep, s], color=colour, alpha=0.15, lw=0)
            ax.plot(x[keep], mean[keep, s], color=colour, lw=1.5)
            gx, gy = smoothed_curve(x, mean[:, s], sigma)
            if len(gx):
                ax.plot(*_where_positive(gx, gy), color=colour, lw=1.0, ls="--", alpha=0.9)
            flagged = unsettled[:, s] & keep
            ax.plot(x[flagged], mean[flagged, s], "o", ms=6, mfc="none", mec="0.35", mew=1.1)
            if s < len(per_seed):
                steepest = per_seed[s].get("llc_steepest")
                for c in per_seed[s]["boundaries"].get("llc") or []:
                    if c["step"] > 0:
                        _llc_marker(ax, c["step"], c["value"], c["kind"], 8, zorder=4, mew=0.6,
                                    chosen=c["kind"] == "steepest" and c["step"] == steepest)
                if steepest and not any(c["kind"] == "steepest" and c["step"] == steepest
                                        for c in per_seed[s]["boundaries"].get("llc") or []) and len(gx):
                    _llc_marker(ax, steepest, _value_at(gx, gy, steepest), "steepest", 8, chosen=True, zorder=4)
        ax.set_ylabel("LLC")
        note = "; circled: did not settle" if unsettled.any() else ""
        ax.set_title(f"local learning coefficient (± sd over chains; dashed: smoothed in log-time{note})",
                     loc="left", fontsize=11)
    if ed is not None:
        out_steps = np.asarray(run.outputs["steps"], float)
        for i in range(n_pcs):
            ax = axes[f"pc{i}"]
            for s, seed in enumerate(ed["per_seed"]):
                pc = np.array([np.nan if v is None else v for v in np.asarray(seed["pcs"], object)[:, i]], float)
                ax.plot(*_where_positive(out_steps, pc), color=_seed_colour(s), lw=1.4)
                for tp in seed["turning_points"]:
                    if tp["pc"] == i and tp["step"] > 0:
                        ax.plot(tp["step"], _value_at(out_steps, pc, tp["step"]), "D",
                                color=DETECTOR_COLOURS["essential_dynamics"], ms=6.5, mec="white", mew=0.6, zorder=4)
            ax.set_ylabel(f"PC{i + 1}\n({100 * ed['explained_variance_ratio'][i]:.0f} %)")
            ax.yaxis.set_major_locator(MaxNLocator(4))
            if i == 0:
                ax.set_title(f"essential dynamics: principal components of the {_outputs_kind(run.outputs)} "
                             "(all seeds, shared axes)", loc="left", fontsize=11)
    for name, ax in axes.items():
        if name != "raster":
            _loss_bands(ax, per_seed)
            _boundary_lines(ax, per_seed)
            ax.grid(alpha=0.25)
    ax = axes["raster"]
    _raster(ax, per_seed, seeds, x_lo)
    ax.set_title("boundaries per seed (in each row, top to bottom: LLC, ED, induction heads, previous-token heads)",
                 loc="left", fontsize=11)
    ax.grid(alpha=0.25, axis="x")
    _log_x(ax, *[a for a in all_steps if a is not None])
    ax.set_xlabel(f"{STEP_LABEL} (log scale)")
    _development_legend(fig, per_seed)
    fig.suptitle(run.title("Stages of development", width=95, found=False) + f"\n{_in_window_text(stages)}",
                 fontsize=12)
    fixed_layout(fig, left=0.95, right=0.25, top=0.35, bottom=0.6, hgap=0.4)
    return save_figure(fig, path)


@run_figure("essential_dynamics", caption="Essential dynamics: each seed's outputs on the probe projected onto the "
                                         "first two principal components shared by all seeds, coloured by training "
                                         "step (log scale), with turning points marked and the variance each "
                                         "component explains.", cost=0.3)
def _plot_essential_dynamics(run: _Run, path: Path) -> Path | None:
    if run.outputs is None:
        return None
    steps = np.asarray(run.outputs["steps"], float)
    settings = run.stages().get("settings") or {}
    if len(steps) < 2:
        return None
    ed = run.essential_dynamics(int(settings.get("n_components", 3)), float(settings.get("sigma", 2.0)),
                                float(settings.get("min_prominence_frac", 0.1)))
    if ed["n_components"] < 2:
        return None
    per_seed = ed["per_seed"]
    S = len(per_seed)
    seeds = _seed_ids(run, S)
    ncols = min(3, S)
    nrows = math.ceil(S / ncols)
    fig = plt.figure(figsize=(max(3.9 * ncols + 3.4, 9.5), 3.7 * nrows + 1.4))
    grid = fig.add_gridspec(nrows, ncols + 1, width_ratios=[1] * ncols + [0.8])
    positive = steps[steps > 0]
    norm = LogNorm(vmin=float(positive.min()) if len(positive) else 1.0, vmax=max(float(steps.max()), 1.0))
    cmap = plt.get_cmap("plasma")        # no green in it: the turning points are green
    xy = [np.array([[np.nan if v is None else v for v in row[:2]] for row in p["pcs"]], float) for p in per_seed]
    everything = np.concatenate(xy)
    lo, hi = np.nanmin(everything, 0), np.nanmax(everything, 0)
    pad = 0.08 * np.maximum(hi - lo, 1e-12)
    first_ax, line = None, None
    for s, p in enumerate(per_seed):
        ax = fig.add_subplot(grid[s // ncols, s % ncols], sharex=first_ax, sharey=first_ax)
        first_ax = first_ax or ax
        for other in range(S):
            if other != s:
                ax.plot(xy[other][:, 0], xy[other][:, 1], color="0.8", lw=0.9, zorder=1)
        pts = xy[s]
        segs = np.stack([pts[:-1], pts[1:]], axis=1)
        line = LineCollection(segs, cmap=cmap, norm=norm, lw=2.4, zorder=2)
        line.set_array(np.maximum(steps[1:], norm.vmin))
        ax.add_collection(line)
        ax.plot(*pts[0], "o", ms=7, mfc="white", mec="0.2", zorder=3)
        ax.plot(*pts[-1], "s", ms=7, color="0.2", zorder=3)
        turns: dict[int, list[str]] = {}
        for tp in p["turning_points"]:
            turns.setdefault(tp["step"], []).append(f"PC{tp['pc'] + 1}")
        for step, pcs in turns.items():
            k = int(np.argmin(np.abs(steps - step)))
            ax.plot(*pts[k], "D", ms=8, color=DETECTOR_COLOURS["essential_dynamics"], mec="black", mew=0.7, zorder=4)
            ax.annotate(f"{step} ({', '.join(pcs)})", pts[k], xytext=(6, 4), textcoords="offset points", fontsize=8,
                        color="0.15", zorder=5)
        ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
        ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])
        ax.set_title(f"seed {seeds[s]}: {len(p['turning_points'])} turning point"
                     f"{'s' if len(p['turning_points']) != 1 else ''}", fontsize=11)
        ax.grid(alpha=0.25)
        if s % ncols == 0:
            ax.set_ylabel(f"PC2 ({100 * ed['explained_variance_ratio'][1]:.1f} %)")
        if s // ncols == nrows - 1 or s + ncols >= S:
            ax.set_xlabel(f"PC1 ({100 * ed['explained_variance_ratio'][0]:.1f} %)")
    ax = fig.add_subplot(grid[:, ncols])
    ratio = ed["explained_variance_ratio"]
    labels = [f"PC{i + 1}" for i in range(len(ratio))] + ["rest"]
    values = [100 * r for r in ratio] + [max(0.0, 100 * (1 - sum(ratio)))]
    bars = ax.bar(labels, values, color=[DETECTOR_COLOURS["essential_dynamics"]] * len(ratio) + ["0.7"])
    ax.bar_label(bars, fmt="%.1f", fontsize=8.5, padding=2)
    ax.set_ylim(0, 108)
    ax.set_ylabel("variance explained (%)")
    ax.set_title("explained variance", fontsize=11)
    ax.grid(alpha=0.25, axis="y")
    kind = _outputs_kind(run.outputs)
    key = "circle: first step, square: last step, diamonds: turning points (step, PCs that turn)"
    fig.suptitle(run.title(f"Essential dynamics of the {kind}", width=110, found=False) + f"\n{key}"
                 + ("; grey: the other seeds" if S > 1 else ""), fontsize=12)
    fixed_layout(fig, left=0.85, right=0.2, top=0.35, bottom=1.45, wgap=0.75, hgap=0.85)
    # the step colour scale below the seeds' panels, clear of their x labels
    boxes = [a.get_position() for a in fig.axes[:S]]
    x0, x1 = min(b.x0 for b in boxes), max(b.x1 for b in boxes)
    _, h = fig.get_size_inches()
    cax = fig.add_axes((x0 + 0.075 * (x1 - x0), 0.62 / h, 0.85 * (x1 - x0), 0.14 / h))
    bar = fig.colorbar(line, cax=cax, orientation="horizontal", label=f"{STEP_LABEL} (log scale)")
    _plain_log_ticks(bar.ax.xaxis)
    return save_figure(fig, path)


def _llc_picks(llc: dict) -> list[tuple[int, str]]:
    """Estimates to show: first, middle and last, and the first flagged one (non-finite chain or
    not settled) if none of those is."""
    n = len(llc["steps"])
    picks = {0: "first", n // 2: "middle", n - 1: "last"}
    flagged = np.flatnonzero(np.asarray(llc["nonfinite"], bool).any(axis=2).any(axis=1)
                             | np.asarray(llc["not_settled"], bool).any(axis=1))
    if len(flagged) and not set(flagged.tolist()) & set(picks):
        picks[int(flagged[0])] = "flagged"
    return sorted(picks.items())


def _flag_note(llc: dict, seeds: list) -> str:
    steps = np.asarray(llc["steps"])
    nonfinite = np.asarray(llc["nonfinite"], bool)
    unsettled = np.asarray(llc["not_settled"], bool)
    parts = []
    if nonfinite.any():
        where = [f"seed {seeds[s]} step {int(steps[i])}" for i, s in zip(*np.nonzero(nonfinite.any(axis=2)))]
        parts.append(f"{int(nonfinite.sum())} non-finite chain{'s' if nonfinite.sum() > 1 else ''} "
                     f"({', '.join(where[:3])}{', …' if len(where) > 3 else ''})")
    if unsettled.any():
        where = [f"seed {seeds[s]} step {int(steps[i])}" for i, s in zip(*np.nonzero(unsettled))]
        parts.append(f"{int(unsettled.sum())} estimate{'s' if unsettled.sum() > 1 else ''} not settled "
                     f"({', '.join(where[:3])}{', …' if len(where) > 3 else ''})")
    return "flagged: " + "; ".join(parts) if parts else "no non-finite chains, every estimate settled"


def _robust_ylim(ax, values: np.ndarray) -> None:
    """Limits from the 0.5-99.5 % range of the finite values, so one blown-up chain does not flatten the rest."""
    v = values[np.isfinite(values)]
    if len(v):
        lo, hi = np.percentile(v, [0.5, 99.5])
        pad = 0.08 * ((hi - lo) or abs(hi) or 1.0)
        ax.set_ylim(lo - pad, hi + pad)


@run_figure("llc_chains", caption="Diagnostics of the LLC estimates: the LLC over training with each chain's "
                                 "estimate, and for the first, middle and last estimate (and the first flagged one) "
                                 "every SGLD chain's loss above the centre, L(w_t) − L(w*), and distance from it, "
                                 "burn-in shaded; non-finite chains and unsettled estimates are named in the title.",
                                 cost=1.0)
def _plot_llc_chains(run: _Run, path: Path) -> Path | None:
    llc = run.llc
    if llc is None or not len(llc["steps"]):
        return None
    steps = np.asarray(llc["steps"], float)
    mean, std = np.asarray(llc["llc"], float), np.asarray(llc["llc_std"], float)
    chains, trace, dist = (np.asarray(llc[k], float) for k in ("chains", "loss_trace", "distance"))
    nonfinite = np.asarray(llc["nonfinite"], bool)
    unsettled = np.asarray(llc["not_settled"], bool)
    N, S, C, M = trace.shape
    seeds = _seed_ids(run, S)
    burn_in = int(np.asarray(llc.get("burn_in", 0)).item())
    nbeta = float(np.asarray(llc.get("nbeta", np.nan)).item())
    picks = _llc_picks(llc)
    ncols = len(picks)
    fig = plt.figure(figsize=(max(3.5 * ncols, 9.0) + 0.5, 9.6), layout="constrained")
    grid = fig.add_gridspec(3, ncols, height_ratios=[1.15, 1, 1])

    top = fig.add_subplot(grid[0, :])
    keep = steps > 0 if (steps > 0).sum() >= 2 else np.ones(N, bool)
    for s in range(S):
        colour = _seed_colour(s)
        top.fill_between(steps[keep], (mean - std)[keep, s], (mean + std)[keep, s], color=colour, alpha=0.15, lw=0)
        top.plot(steps[keep], mean[keep, s], color=colour, lw=1.6, label=f"seed {seeds[s]}")
        for c in range(C):
            top.plot(steps[keep], chains[keep, s, c], ".", ms=2.5, color=colour, alpha=0.5)
        bad = keep & nonfinite[:, s].any(axis=1)
        top.plot(steps[bad], mean[bad, s], "x", ms=8, mew=2, color="tab:red", zorder=4)
        late = keep & unsettled[:, s]
        top.plot(steps[late], mean[late, s], "o", ms=8, mfc="none", mec="tab:red", mew=1.4, zorder=4)
    for i, label in picks:
        if keep[i]:
            top.axvline(steps[i], color="0.4", lw=1, ls=":")
            top.annotate(label, (steps[i], 1.0), xycoords=("data", "axes fraction"), xytext=(3, -3),
                         textcoords="offset points", va="top", fontsize=8.5, color="0.3")
    if (steps > 0).sum() >= 2:
        _log_x(top, steps)
    top.set_xlabel(f"{STEP_LABEL} (log scale)" if (steps > 0).sum() >= 2 else STEP_LABEL)
    top.set_ylabel("LLC")
    top.grid(alpha=0.25)
    handles, _ = top.get_legend_handles_labels()
    handles.append(Line2D([], [], ls="", marker=".", color="0.4", label="one chain's estimate"))
    if nonfinite.any():
        handles.append(Line2D([], [], ls="", marker="x", mew=2, color="tab:red", label="a chain went non-finite"))
    if unsettled.any():
        handles.append(Line2D([], [], ls="", marker="o", mfc="none", mec="tab:red", label="estimate did not settle"))
    top.legend(handles=handles, loc="upper left", fontsize=8.5, ncols=2, framealpha=0.85)
    top.set_title("LLC estimates over training (mean ± sd over chains)", loc="left", fontsize=11)

    t = np.arange(M)
    first_trace = first_dist = None
    for col, (i, label) in enumerate(picks):
        ax_l = fig.add_subplot(grid[1, col], sharey=first_trace)
        ax_d = fig.add_subplot(grid[2, col], sharex=ax_l, sharey=first_dist)
        first_trace, first_dist = first_trace or ax_l, first_dist or ax_d
        for ax in (ax_l, ax_d):
            ax.axvspan(-0.5, burn_in - 0.5, color="0.6", alpha=0.18, lw=0)
            ax.grid(alpha=0.25)
        for s in range(S):
            colour = _seed_colour(s)
            for c in range(C):
                ax_l.plot(t, trace[i, s, c], color=colour, lw=0.9, alpha=0.75)
                ax_d.plot(t, dist[i, s, c], color=colour, lw=0.9, alpha=0.75)
                if nonfinite[i, s, c]:
                    ok = np.flatnonzero(np.isfinite(trace[i, s, c]))
                    if len(ok):
                        ax_l.plot(t[ok[-1]], trace[i, s, c, ok[-1]], "x", ms=8, mew=2, color="tab:red", zorder=4)
            if math.isfinite(nbeta) and nbeta > 0 and math.isfinite(mean[i, s]):
                ax_l.axhline(mean[i, s] / nbeta, color=colour, ls="--", lw=1.1)   # LLC = nβ x mean after burn-in
        values = ", ".join(f"{mean[i, s]:.3g}" + (f" ± {std[i, s]:.2g}" if math.isfinite(std[i, s]) else "")
                           for s in range(min(S, 3))) + (", …" if S > 3 else "")
        per_seed = textwrap.fill(f"LLC{' per seed' if S > 1 else ''} {values}", 31)   # a 3.5-inch column at 10 pt
        ax_l.set_title(f"step {int(steps[i])} ({label})\n{per_seed}", fontsize=10)
        ax_d.set_xlabel("SGLD step")
        if col == 0:
            ax_l.set_ylabel("L(w_t) − L(w*)")
            ax_d.set_ylabel("|w_t − w*|")
    _robust_ylim(first_trace, trace[[i for i, _ in picks]])
    info = [f"source {llc.get('source') or '?'}", f"nβ = {nbeta:.3g}" if math.isfinite(nbeta) else "",
            f"{C} chains × {M} draws", f"burn-in {burn_in} (shaded)"]
    handles = [Patch(color="0.6", alpha=0.3, label="burn-in"),
               Line2D([], [], color="0.3", ls="--", lw=1.1, label="LLC / nβ (the mean after burn-in it comes from)")]
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False, fontsize=9)
    fig.suptitle(run.title("LLC estimator diagnostics", width=110, found=False) + f" ({', '.join(x for x in info if x)})\n"
                 f"{_flag_note(llc, seeds)}", fontsize=12)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- drawing a run


FIGURES = tuple(RUN_FIGURES)   # the run figures' names, in drawing order


def plot_run(run_dir, out_dir=None, figures=None) -> list[Path]:
    """Draw the figures the run directory supports into `out_dir` (default `<run_dir>/plots`)
    as `<name>.png` and return the paths written.

    `figures` picks a subset of FIGURES (default: all); ones whose data is missing
    (e.g. attention without attention.npz) are skipped.
    """
    names = tuple(RUN_FIGURES)
    wanted = set(names if figures is None else figures)
    if wanted - set(names):
        raise ValueError(f"unknown figures {sorted(wanted - set(names))}; choose from {names}")
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    run = _gather(run_dir)
    if "attention" in wanted:
        run.attention = load_attention(run_dir)
    if wanted & set(DEVELOPMENT_FIGURES):
        run.llc, run.outputs = load_llc(run_dir), load_outputs(run_dir)
    if not run.main_heads and wanted & {"heads_heatmap", "heads_lines"}:
        warnings.warn("no induction/prev_token measures logged; skipping per-head figures")

    written = []
    with plt.rc_context(STYLE):
        for figure in RUN_FIGURES.values():
            if figure.name in wanted:
                path = figure.draw(run, out / f"{figure.name}.png")
                if path is not None:  # None: the run lacks the figure's data (a warning says why if unusable)
                    written.append(path)
    return written
