"""Figures of a sweep (`lab.analysis.sweep.Sweep`), one PNG each: the phase-change step against each
swept parameter, every condition's loss curve, and grids over pairs of swept parameters.
`plot_sweep` draws them; the sweep report (lab/plots/report.py) shows each with its caption.

To add a sweep figure, write one function here that takes the sweep and the path to write and
returns the path, or None when the sweep lacks what it shows (a stale copy of the PNG is then
removed); register it with `@sweep_figure("<name>", caption="<what it shows>")`. It is drawn as
`<name>.png` after the figures above it, and report.html shows it with that caption.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np

# lab.plots.style first: it selects the headless Agg backend before pyplot loads
from lab.plots.style import (SCORE_CMAP, STEP_LABEL, STYLE, condition_colours, condition_sort_key, metric_label,
                             save_figure, seed_mean)
from lab.plots.registry import Figure, figure_decorator
from lab.analysis import stats
from lab.analysis.sweep import COMPLETED, Sweep, condition_label, condition_rows, fmt_value, is_number, sort_values

import matplotlib.pyplot as plt  # noqa: E402  (after lab.plots.style: the Agg backend)
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

MAX_GROUPS = 8            # more combinations of the other parameters than this: pool them in phase_vs_params
MAX_PAIRS = 12            # parameter pairs drawn in phase_grid


SWEEP_FIGURES: dict[str, Figure] = {}   # name -> figure, in the order plot_sweep draws them
# @sweep_figure(name, caption) on `draw(sweep, path) -> Path | None` registers the sweep figure <name>.png;
# its caption is the figure's caption in report.html
sweep_figure = figure_decorator(SWEEP_FIGURES, "sweep")


def _ordered_conditions(rows, keys: list[str]) -> tuple[list[str], dict]:
    """The condition labels (`condition_label` over `keys`) of `rows` (sweep rows or jobs' params) in
    the shared order (lab.plots.style.condition_sort_key: the baseline first) and {label: colour}, the
    colours every figure of the sweep and `lab-plot --compare` give these conditions."""
    params = {}
    for r in rows:
        values = r.params if hasattr(r, "params") else r
        params.setdefault(condition_label(values, keys), {k: values.get(k) for k in keys})
    order = sorted(params, key=lambda lb: condition_sort_key(params[lb]))
    return order, dict(zip(order, condition_colours([params[lb] for lb in order])))


def _value_order(values, key: str) -> list:
    """The distinct values of parameter `key`: numbers ascending, anything else with its baseline
    (none, the group's default) first (lab.plots.style.condition_sort_key)."""
    values = sort_values(values)
    if all(is_number(v) for v in values):
        return values
    return sorted(values, key=lambda v: condition_sort_key({key: v}))


def ordered_condition_rows(sweep: Sweep) -> list[dict]:
    """lab.analysis.sweep.condition_rows in the shared condition order (the baseline first)."""
    order, _ = _ordered_conditions(sweep.rows, sweep.swept)
    rank = {lb: i for i, lb in enumerate(order)}
    return sorted(condition_rows(sweep), key=lambda c: rank.get(c["condition"], len(rank)))


class _Axis:
    """Positions of one parameter's values on an x axis: numbers on a linear or log scale (log when
    they span a factor of 10 or more), anything else as evenly spaced categories."""

    def __init__(self, values, key: str = ""):
        self.values = _value_order(values, key)
        self.numeric = all(is_number(v) for v in self.values)
        self.log = self.numeric and min(self.values) > 0 and max(self.values) / min(self.values) >= 10
        t = [self.fwd(v) for v in self.values]
        self.span = (max(t) - min(t)) or 1.0

    def fwd(self, v) -> float:
        if not self.numeric:
            return float(self.values.index(v))
        return math.log10(v) if self.log else float(v)

    def inv(self, t: float) -> float:
        return 10 ** t if self.log else t

    def at(self, v, offset: float = 0.0) -> float:
        """x of value v, shifted by `offset` (a fraction of the axis span)."""
        return self.inv(self.fwd(v) + offset * self.span)

    def setup(self, ax, name: str) -> None:
        if self.log:
            ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ticks = [self.at(v) for v in self.values]
        ax.set_xticks(ticks, [fmt_value(v) for v in self.values],
                      rotation=30 if sum(len(fmt_value(v)) for v in self.values) > 40 else 0)
        lo, hi = self.fwd(self.values[0]), self.fwd(self.values[-1])
        pad = 0.12 * self.span if self.numeric else 0.5
        ax.set_xlim(self.inv(lo - pad), self.inv(hi + pad))
        ax.set_xlabel(name)


def _completed_rows(sweep: Sweep) -> list[dict]:
    return [r for r in sweep.rows if r["_category"] == COMPLETED and r[f"{sweep.phase_metric}_detected"] is not None]


@sweep_figure("phase_vs_params",
              caption="Phase-change step (sigmoid midpoint of the repeated-part loss) against each swept "
                      "parameter: small dots are seeds, diamonds the mean ± sample std over the seeds with a phase "
                      "change; in the grey top band, hollow markers are seeds without one and red crosses "
                      "seeds of failed or unfinished jobs.")
def _plot_phase_vs_params(sweep: Sweep, path: Path) -> Path | None:
    """(a) the phase-change step against each swept parameter: seeds as points, mean ± std over the
    seeds with a phase change as a line with error bars, one colour per setting of the other
    parameters; seeds without a phase change as hollow markers, and seeds of failed or unfinished
    jobs as crosses, in a band at the top."""
    done = _completed_rows(sweep)
    params = sweep.swept
    if not done or not params:
        return None
    done_ids = {id(r) for r in done}
    rows = [r for r in sweep.rows if r["_category"] != COMPLETED or id(r) in done_ids]
    mid_key = f"{sweep.phase_metric}_midpoint"
    _, condition_colour = _ordered_conditions(sweep.rows, sweep.swept)
    ncols = min(3, len(params))
    nrows = math.ceil(len(params) / ncols)
    width = max(5.6 * ncols, 9.0)     # room for the legend below a single panel
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 4.4 * nrows + 1.2), sharey=True,
                             squeeze=False, layout="constrained")
    in_band = []                       # (ax, x, colour, failed), placed once the y range is known
    detected_y = [r[mid_key] for r in done if r[mid_key] is not None]
    for ax, p in zip(axes.flat, params):
        xaxis = _Axis([r[p] for r in rows], p)
        others = [q for q in params if q != p]
        keys, colours = _ordered_conditions(rows, others) if others else (["all"], {})
        pooled = len(keys) > MAX_GROUPS
        if pooled:
            keys = ["all"]
        group_of = lambda r: "all" if pooled or not others else condition_label(r, others)  # noqa: E731
        if len(keys) == 1:
            colours = {keys[0]: "tab:blue"}
        dodge = 0.035 if xaxis.numeric else 0.12 / xaxis.span
        for gi, key in enumerate(keys):
            colour, g_off = colours[key], (gi - (len(keys) - 1) / 2) * dodge
            means = []
            for v in xaxis.values:
                cell = [r for r in rows if r[p] == v and group_of(r) == key]
                if len(sweep.swept) == 1 and cell:   # each value is a condition: its colour in every figure
                    colour = condition_colour[condition_label(cell[0], sweep.swept)]
                for k, r in enumerate(cell):
                    x = xaxis.at(v, g_off + (k - (len(cell) - 1) / 2) * dodge * 0.22)
                    if r["_category"] != COMPLETED:
                        in_band.append((ax, x, colour, True))
                    elif r[mid_key] is not None:
                        ax.plot(x, r[mid_key], "o", ms=5, color=colour, alpha=0.55, mec="none", zorder=2)
                    else:
                        in_band.append((ax, x, colour, False))
                mids = [r[mid_key] for r in cell if r["_category"] == COMPLETED and r[mid_key] is not None]
                if mids:
                    means.append((xaxis.at(v, g_off), float(np.mean(mids)),
                                  float(np.std(mids, ddof=1)) if len(mids) > 1 else 0.0, colour))
            if means:
                xs, ms, ss, cs = zip(*means)
                # a line joins means only along a numeric axis; categories (e.g. clamps) have no order
                if xaxis.numeric:
                    ax.plot(xs, ms, color=colours[key] if len(sweep.swept) > 1 else "0.5", lw=2, zorder=2.5)
                for x, m, sd, c in means:
                    ax.errorbar([x], [m], yerr=[sd], color=c, lw=0, marker="D", ms=6.5, mec="white", mew=0.8,
                                capsize=4, elinewidth=1.4, zorder=3)
        xaxis.setup(ax, p)
        ax.grid(alpha=0.3)
        ax.set_title(f"vs {p}")
        if pooled:
            ax.text(0.02, 0.02, f"pooled over {len(others)} other parameters", transform=ax.transAxes,
                    fontsize=8.5, color="0.35")
        elif len(keys) > 1:
            shown = [k for k in keys if any(group_of(r) == k for r in done)]   # not groups that only failed
            lines = [Line2D([], [], color=colours[k], lw=2, marker="D", mec="white", label=k) for k in shown]
            if len(shown) <= 3:
                ax.legend(handles=lines, loc="best", fontsize=8, framealpha=0.85)
            else:      # below the panel, where it hides no points
                ax.legend(handles=lines, loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8,
                          frameon=False, ncols=1 if max(map(len, shown)) > 30 else 2)
    for ax in list(axes.flat)[len(params):]:
        ax.set_visible(False)

    ax0 = axes.flat[0]
    if detected_y:
        lo, hi = min(detected_y), max(detected_y)
        rng = (hi - lo) or max(abs(hi) * 0.2, 50.0)
        lo, hi = lo - 0.15 * rng, hi + 0.15 * rng
    else:   # nothing detected: show the length of training, so the band reads "none within N steps"
        lo, hi = 0.0, float(max((r["last_step"] or 0) for r in done) or 1)
        rng = hi - lo
    top = hi + 0.2 * rng
    y_max = top + 0.1 * rng
    ticks = [t for t in ax0.yaxis.get_major_locator().tick_values(lo, hi) if lo <= t <= hi]
    for ax, x, colour, failed in in_band:
        if failed:
            ax.plot(x, top, "x", ms=7, color="tab:red", mew=1.8, zorder=3)
        else:
            ax.plot(x, top, "o", ms=6.5, mfc="white", mec=colour, mew=1.6, zorder=3)
    for ax in axes.flat[:len(params)]:
        ax.axhspan(top - 0.1 * rng, y_max, color="0.93", lw=0, zorder=0)
    ax0.set_ylim(lo, y_max)
    ax0.set_yticks(ticks + [top], [f"{t:.0f}" for t in ticks] + ["no phase\nchange"])
    for ax in axes[:, 0]:
        ax.set_ylabel("phase-change step (midpoint)" if detected_y else "training step")

    n_det = len(detected_y)
    left_out = sum(r["_category"] != COMPLETED for r in sweep.rows)
    handles = [Line2D([], [], ls="", marker="o", color="0.35", alpha=0.6, mec="none", label="one seed"),
               Line2D([], [], ls="", marker="o", mfc="white", mec="0.35", mew=1.6,
                      label="seed without a phase change")]
    if left_out:
        handles.append(Line2D([], [], ls="", marker="x", color="tab:red", mew=1.8,
                              label="seed of a failed or unfinished job"))
    handles.append(Line2D([], [], color="0.35", lw=2, marker="D", mec="white",
                          label="mean ± sample std over the seeds with a phase change"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles) if ncols > 1 else 2,
               frameon=False, fontsize=9)
    note = f"; {left_out} seeds of failed or unfinished jobs" if left_out else ""
    fig.suptitle(f"{metric_label(sweep.phase_metric)}: phase-change step vs swept parameters\n"
                 f"{n_det}/{len(done)} seeds of completed jobs with a phase change{note}", fontsize=12)
    return save_figure(fig, path)


def _condition_curves(sweep: Sweep):
    """[(label, [(job, steps, values (N, S))])] in the shared condition order (the baseline first)."""
    conds: dict[str, list] = {}
    for j in sweep.jobs:
        values = j.metrics.get(sweep.phase_metric) if j.metrics else None
        if values is None:
            continue
        values = values[:, None] if values.ndim == 1 else values
        if values.ndim != 2:
            continue
        conds.setdefault(condition_label(j.params, sweep.swept), []).append((j, j.metrics["step"], values))
    order, _ = _ordered_conditions(sweep.jobs, sweep.swept)
    return [(lb, conds[lb]) for lb in order if lb in conds]


def _mean_curve(runs) -> tuple[np.ndarray, np.ndarray]:
    """Mean over every seed of every run, on the union of their steps, where at least half the seeds
    have a finite value (a killed or failed job's shorter curve does not cut the mean short)."""
    steps = np.unique(np.concatenate([s for _, s, _ in runs]))
    cols = []
    for _, s, v in runs:
        idx = np.searchsorted(steps, s)
        for k in range(v.shape[1]):
            col = np.full(len(steps), np.nan)
            col[idx] = v[:, k]
            cols.append(col)
    m = np.stack(cols, axis=1)
    finite = np.isfinite(m).sum(1)
    keep = finite >= max(1, math.ceil(m.shape[1] / 2))
    return steps[keep], seed_mean(m[keep]) if keep.any() else np.array([])


def _seed_midpoints(sweep: Sweep) -> dict[tuple[int, int], float]:
    """(id of the job, seed index) -> that seed's phase-change midpoint (summary.json, completed jobs)."""
    key = f"{sweep.phase_metric}_midpoint"
    return {(id(r["_job"]), r["_index"]): float(r[key]) for r in sweep.rows
            if r["_category"] == COMPLETED and r.get(key) is not None}


def aligned_mean(curves: list[tuple[np.ndarray, np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray, int]:
    """The mean of curves aligned on their own transition: each (steps, values, midpoint) is shifted to
    steps - midpoint and interpolated onto a common grid (the median log spacing) over the offsets
    where at least half the curves have values. Returns (offsets, mean, number of curves); averaging
    on the raw step axis would smear seeds that switch at different steps into one gradual drop."""
    if not curves:
        return np.array([]), np.array([]), 0
    shifted = [(np.asarray(s, float) - m, np.asarray(v, float)) for s, v, m in curves]
    spacing = float(np.median([np.median(np.diff(x)) for x, _ in shifted if len(x) > 1] or [1.0])) or 1.0
    lo = min(x[0] for x, _ in shifted)
    hi = max(x[-1] for x, _ in shifted)
    grid = np.arange(math.floor(lo / spacing) * spacing, hi + spacing / 2, spacing)
    stack = np.full((len(grid), len(shifted)), np.nan)
    for k, (x, v) in enumerate(shifted):
        ok = np.isfinite(v)
        if ok.sum() < 2:
            continue
        inside = (grid >= x[ok][0]) & (grid <= x[ok][-1])
        stack[inside, k] = np.interp(grid[inside], x[ok], v[ok])
    keep = np.isfinite(stack).sum(1) >= max(1, math.ceil(len(shifted) / 2))
    return grid[keep], seed_mean(stack[keep]), len(shifted)


@sweep_figure("loss_curves",
              caption="The main loss (e.g. the repeated-part loss) of every condition (the job's overrides less "
                      "the seed), the baseline first and one colour per condition as in every figure of the "
                      "sweep. Left: every seed's own curve (dashed verticals: each seed's phase-change midpoint). "
                      "Right, where seeds have a phase change: the curves shifted so that each seed's midpoint is "
                      "at 0 and their mean (thick), which keeps the transition as sharp as the seeds have it; a "
                      "plain mean over seeds that switch at different steps would look like a gradual drop.")
def _plot_curves(sweep: Sweep, path: Path) -> Path | None:
    """(b) the main loss of every condition, one colour per condition: each seed's curve, its phase-change
    midpoint dashed; beside it, the seeds with a phase change aligned on their midpoints, and their mean."""
    conds = _condition_curves(sweep)
    if not conds:
        return None
    _, colour_of = _ordered_conditions(sweep.jobs, sweep.swept)
    mids = _seed_midpoints(sweep)
    aligned_any = any((id(j), k) in mids for _, runs in conds for j, _, v in runs for k in range(v.shape[1]))
    legend_cols = 2 if max(len(lb) for lb, _ in conds) + 48 <= 75 else 1
    legend_rows = math.ceil((len(conds) + 4) / legend_cols)
    if aligned_any:
        fig, (ax, ax_al) = plt.subplots(1, 2, figsize=(13, 4.9 + 0.21 * legend_rows), sharey=True,
                                        width_ratios=[1.25, 1], layout="constrained")
    else:
        fig, ax = plt.subplots(figsize=(11, 4.6 + 0.21 * legend_rows), layout="constrained")
        ax_al = None
    handles = []
    for label, runs in conds:
        colour = colour_of[label]
        curves, n_seeds, n_mid = [], 0, 0
        for j, steps, values in runs:
            done = j.category == COMPLETED
            for k in range(values.shape[1]):
                n_seeds += done
                ax.plot(steps, values[:, k], color=colour, lw=1.3, alpha=0.8, ls="-" if done else ":")
                mid = mids.get((id(j), k))
                if mid is not None:
                    n_mid += 1
                    ax.axvline(mid, color=colour, ls="--", lw=1.0, alpha=0.7, zorder=1)
                    curves.append((steps, values[:, k], mid))
        if ax_al is not None and curves:
            for steps, values, mid in curves:
                ax_al.plot(np.asarray(steps, float) - mid, values, color=colour, lw=0.9, alpha=0.35)
            x, mean, n = aligned_mean(curves)
            ax_al.plot(x, mean, color=colour, lw=2.6, zorder=3)
        if n_mid:
            found = [mid for *_, mid in curves]
            note = f"phase change {n_mid}/{n_seeds} seeds, mean midpoint {np.mean(found):.0f}"
        else:
            note = f"no phase change, 0/{n_seeds} seeds" if n_seeds else "no completed seeds"
        bad = sum(j.category != COMPLETED for j, _, _ in runs)
        if bad:
            note += f"; {bad} job{'s' if bad > 1 else ''} failed or unfinished: dotted"
        handles.append(Line2D([], [], color=colour, lw=2.4, label=f"{label}  ({note})"))
    chance = {j.chance for j in sweep.jobs if j.chance is not None}
    threshold = {j.threshold for j in sweep.jobs if j.threshold is not None}
    for a in filter(None, (ax, ax_al)):
        if len(chance) == 1:
            a.axhline(next(iter(chance)), color="0.45", ls="-.", lw=1)
        if len(threshold) == 1:
            a.axhline(next(iter(threshold)), color="0.3", ls=":", lw=1)
        a.grid(alpha=0.3)
    if len(chance) == 1:
        handles.append(Line2D([], [], color="0.45", ls="-.", lw=1, label="chance loss"))
    if len(threshold) == 1:
        handles.append(Line2D([], [], color="0.3", ls=":", lw=1, label="detection threshold"))
    handles.append(Line2D([], [], color="0.35", lw=1.3, label="left: one line per seed"))
    if mids:
        handles.append(Line2D([], [], color="0.35", lw=1.0, ls="--", label="left, dashed: each seed's phase-change midpoint"))
    if ax_al is not None:
        handles.append(Line2D([], [], color="0.35", lw=2.6,
                              label="right, thick: mean of the seeds' curves aligned on their own midpoints"))
        ax_al.axvline(0, color="black", ls=(0, (1, 1.3)), lw=1.6)
        ax_al.set_xlabel("steps from each seed's phase-change midpoint")
        ax_al.set_title("aligned on each seed's transition (thin: seeds, thick: aligned mean)", fontsize=11)
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(metric_label(sweep.phase_metric))
    ax.set_title(f"every seed of {len(conds)} condition{'s' if len(conds) != 1 else ''}", fontsize=11)
    fig.suptitle(f"{metric_label(sweep.phase_metric)} per condition", fontsize=12)
    fig.legend(handles=handles, loc="outside lower center", ncols=legend_cols, frameon=False, fontsize=9)
    return save_figure(fig, path)


@sweep_figure("phase_grid",
              caption="Mean phase-change step for each pair of swept parameters; each cell says how many of its "
                      "completed seeds had a phase change.")
def _plot_grid(sweep: Sweep, path: Path) -> Path | None:
    """(c) for each pair of swept parameters, a heatmap of the mean phase-change step (over the
    completed seeds with a phase change, pooled over other parameters), cells annotated with the
    number of seeds that had one, or with the failed seeds where no seed completed."""
    pairs = list(itertools.combinations(sweep.swept, 2))[:MAX_PAIRS]
    if not pairs or not _completed_rows(sweep):
        return None
    rows = sweep.rows
    mid_key = f"{sweep.phase_metric}_midpoint"
    grids = []
    for p, q in pairs:
        xs, ys = _value_order([r[p] for r in rows], p), _value_order([r[q] for r in rows], q)
        mean = np.full((len(ys), len(xs)), np.nan)
        counts = np.zeros((len(ys), len(xs), 3), int)    # with a phase change, completed, not completed
        for iy, y in enumerate(ys):
            for ix, x in enumerate(xs):
                cell = [r for r in rows if r[p] == x and r[q] == y]
                done = [r for r in cell if r["_category"] == COMPLETED]
                mids = [r[mid_key] for r in done if r[mid_key] is not None]
                counts[iy, ix] = len(mids), len(done), len(cell) - len(done)
                if mids:
                    mean[iy, ix] = np.mean(mids)
        grids.append((p, q, xs, ys, mean, counts))
    finite = np.concatenate([g[4][np.isfinite(g[4])] for g in grids])
    vmin, vmax = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if vmax <= vmin:
        vmin, vmax = vmin - 1, vmax + 1
    norm = plt.Normalize(vmin, vmax)
    cmap = plt.get_cmap(SCORE_CMAP).with_extremes(bad="0.92")
    ncols = min(3, len(grids))
    nrows = math.ceil(len(grids) / ncols)
    width = max(max(len(g[2]) for g in grids) * 1.3 + 2.2, 5.2)
    height = max(max(len(g[3]) for g in grids) * 0.95 + 1.6, 3.4)
    fig_width = max(width * ncols + (1.2 if len(finite) else 0), 7.5)
    fig, axes = plt.subplots(nrows, ncols, figsize=(fig_width, height * nrows + 1.1),
                             squeeze=False, layout="constrained")
    im = None
    for ax, (p, q, xs, ys, mean, counts) in zip(axes.flat, grids):
        im = ax.imshow(mean, cmap=cmap, norm=norm, aspect="auto", origin="lower")
        for iy in range(len(ys)):
            for ix in range(len(xs)):
                k, n, bad = counts[iy, ix]
                extra = f"\n{bad} failed" if bad and n else ""
                if n == 0:
                    text, colour = (f"{bad} seeds\nfailed" if bad else "no runs"), ("tab:red" if bad else "0.45")
                elif k == 0:
                    text, colour = f"none\n0/{n} seeds{extra}", "0.25"
                else:
                    text = f"{mean[iy, ix]:.0f}\n{k}/{n} seeds{extra}"
                    colour = "white" if norm(mean[iy, ix]) < 0.6 else "black"
                ax.text(ix, iy, text, ha="center", va="center", fontsize=9, color=colour)
        ax.set_xticks(range(len(xs)), [fmt_value(v) for v in xs])
        ax.set_yticks(range(len(ys)), [fmt_value(v) for v in ys])
        ax.set_xticks(np.arange(len(xs) + 1) - 0.5, minor=True)    # white lines between the cells
        ax.set_yticks(np.arange(len(ys) + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", lw=2)
        ax.set_xlabel(p)
        ax.set_ylabel(q)
        ax.tick_params(which="both", length=0)
        ax.set_title(f"{q} × {p}" + (" (others pooled)" if len(sweep.swept) > 2 else ""), fontsize=11)
    for ax in list(axes.flat)[len(grids):]:
        ax.set_visible(False)
    if len(finite):
        fig.colorbar(im, ax=axes, shrink=0.9, label="mean phase-change step")
    fig.suptitle(f"mean phase-change step of the {metric_label(sweep.phase_metric)}\n"
                 "cells: mean step, seeds with a phase change / completed seeds", fontsize=12)
    return save_figure(fig, path)


STAGE_SERIES = (("loss transition onset", "tab:red", "o"), ("first LLC critical point (any kind)", "tab:purple", "^"),
                ("first ED turning point", "tab:green", "D"), ("LLC steepest change", "indigo", "*"))


@sweep_figure("stage_boundaries",
              caption="Stage boundaries per condition (runs with LLC / essential-dynamics stage reports): each "
                      "seed's loss-transition onset (change points), first LLC critical point (of any kind: "
                      "maximum, minimum, steepest or plateau point), first ED turning point and the LLC's steepest "
                      "change as small markers, their mean over the condition's seeds with a bootstrap 95 % interval "
                      "as large markers and bars; at the right, the seeds whose LLC / ED boundary, and whose LLC "
                      "steepest change, falls inside a loss transition's window.")
def _plot_stage_boundaries(sweep: Sweep, path: Path) -> Path | None:
    if not sweep.has_stages:
        return None
    metric = sweep.phase_metric
    table = ordered_condition_rows(sweep)
    if not table:
        return None
    groups: dict[str, list[dict]] = {}
    for r in sweep.rows:
        if r["_category"] == COMPLETED:
            groups.setdefault(condition_label(r, sweep.swept), []).append(r)

    def onset(r):
        stage = r.get(f"{metric}_stage_onset")
        return stage if stage is not None else r.get(f"{metric}_onset")

    getters = (onset, lambda r: r.get("llc_first_step"), lambda r: r.get("ed_first_step"),
               lambda r: r.get("llc_steepest_step"))
    values = [v for rows in groups.values() for r in rows for get in getters if is_number(v := get(r))]
    if not values:
        return None
    n = len(table)
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.75 * n + 0.9), layout="constrained")
    for y, cond in enumerate(table):
        rows = groups.get(cond["condition"], [])
        for k, ((label, colour, marker), get) in enumerate(zip(STAGE_SERIES, getters)):
            dy = (k - 1.5) * 0.2
            xs = [float(v) for r in rows if is_number(v := get(r))]
            if not xs:
                continue
            jitter = np.linspace(-0.05, 0.05, len(xs)) if len(xs) > 1 else [0.0]
            ax.plot(xs, [y + dy + j for j in jitter], marker, ls="", ms=4.5, color=colour, alpha=0.55, mec="none")
            d = stats.describe(xs)
            err = None
            if d["ci95"] is not None:
                err = [[d["mean"] - d["ci95"][0]], [d["ci95"][1] - d["mean"]]]
            ax.errorbar([d["mean"]], [y + dy], xerr=err, fmt=marker, ms=8.5, color=colour, mec="white", mew=0.8,
                        capsize=3.5, elinewidth=1.6, zorder=3)
        notes = []
        for name, short in (("llc_in_window", "LLC"), ("ed_in_window", "ED"),
                            ("llc_steepest_in_window", "LLC steepest")):
            if cond.get(f"{name}_n"):
                notes.append(f"{short} in window {cond[name]}/{cond[f'{name}_n']}")
        if notes:
            ax.annotate(" · ".join(notes), (1.0, y), xycoords=("axes fraction", "data"), xytext=(6, 0),
                        textcoords="offset points", va="center", fontsize=8.5, color="0.3", annotation_clip=False)
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) / min(positive) >= 10:
        ax.set_xscale("log")
    ax.set_yticks(range(n), [c["condition"] for c in table])
    ax.set_ylim(n - 0.5, -0.5)
    for y in range(1, n):
        ax.axhline(y - 0.5, color="0.88", lw=0.8)
    ax.tick_params(axis="y", length=0)
    ax.grid(alpha=0.3, axis="x")
    ax.set_xlabel(STEP_LABEL)
    shown = {k for k, get in enumerate(getters) for rows in groups.values() for r in rows if is_number(get(r))}
    handles = [Line2D([], [], ls="", marker=m, color=c, ms=7, label=label)
               for k, (label, c, m) in enumerate(STAGE_SERIES) if k in shown]
    handles.append(Line2D([], [], color="0.35", marker="D", ms=7, mec="white", lw=1.6,
                          label="mean ± bootstrap 95 % CI over seeds (small: single seeds)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False, fontsize=9)
    ax.set_title(f"stage boundaries per condition: {metric_label(metric)}, local learning coefficient and "
                 "essential dynamics", fontsize=12)
    return save_figure(fig, path)


# In-context / in-weights accuracies of the classification tasks (lab/tasks/reddy.py): drawn as heatmaps
# over the first two swept parameters when a sweep logged them (Reddy 2024's (B, K) phase diagram).
ACCURACY_GRID_METRICS = {"acc_ic": "IC accuracy (novel classes)", "acc_ic2": "IC2 accuracy (labels swapped)",
                         "acc_iw": "IW accuracy (known classes)"}


def accuracy_grid_cells(sweep: Sweep, metric: str, p: str, q: str) -> tuple[list, list, np.ndarray, np.ndarray,
                                                                             np.ndarray]:
    """(x values of p, y values of q, mean, sample std, completed-seed count), each (len(ys), len(xs)): the
    mean and sample std (ddof 1) over the completed seeds of each (p, q) cell of `final_<metric>` (NaN
    where there are none, or for the std fewer than two), other parameters pooled."""
    key = f"final_{metric}"
    rows = [r for r in sweep.rows if r[p] is not None and r[q] is not None]   # not jobs lacking either (unstarted)
    xs, ys = _value_order([r[p] for r in rows], p), _value_order([r[q] for r in rows], q)
    mean, sd = np.full((len(ys), len(xs)), np.nan), np.full((len(ys), len(xs)), np.nan)
    count = np.zeros((len(ys), len(xs)), int)
    for iy, y in enumerate(ys):
        for ix, x in enumerate(xs):
            vals = [r[key] for r in rows if r[p] == x and r[q] == y and r["_category"] == COMPLETED
                    and r.get(key) is not None]
            count[iy, ix] = len(vals)
            if vals:
                mean[iy, ix] = float(np.mean(vals))
            if len(vals) > 1:
                sd[iy, ix] = stats.sample_std(vals)
    return xs, ys, mean, sd, count


@sweep_figure("accuracy_grid",
              caption="Final in-context (IC, novel classes), IC2 (known classes, labels swapped) and in-weights (IW) "
                      "accuracy over the first two swept parameters (Reddy 2024's phase diagram): each cell is the "
                      "mean over its completed seeds ± their sample std, with the number of seeds.")
def _plot_accuracy_grid(sweep: Sweep, path: Path) -> Path | None:
    """One heatmap per logged metric of ACCURACY_GRID_METRICS over the first two swept parameters
    (x: the first, y: the second; others pooled), colour scale 0..1; None without two swept
    parameters or without those metrics."""
    if len(sweep.swept) < 2:
        return None
    metrics = [m for m in ACCURACY_GRID_METRICS if any(r.get(f"final_{m}") is not None for r in sweep.rows)]
    if not metrics:
        return None
    p, q = sweep.swept[0], sweep.swept[1]
    cmap = plt.get_cmap(SCORE_CMAP).with_extremes(bad="0.92")
    cells = [accuracy_grid_cells(sweep, m, p, q) for m in metrics]
    nx, ny = len(cells[0][0]), len(cells[0][1])
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(nx * 1.25 + 1.6, 4.2) * len(metrics) + 1.0, ny * 0.9 + 2.0),
                             squeeze=False, layout="constrained")
    im = None
    for ax, m, (xs, ys, mean, sd, count) in zip(axes[0], metrics, cells):
        im = ax.imshow(mean, cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto", origin="lower")
        for iy in range(len(ys)):
            for ix in range(len(xs)):
                if count[iy, ix] == 0:
                    ax.text(ix, iy, "no runs", ha="center", va="center", fontsize=8.5, color="0.45")
                    continue
                spread = "" if np.isnan(sd[iy, ix]) else f" ± {sd[iy, ix]:.2f}"
                ax.text(ix, iy, f"{mean[iy, ix]:.2f}{spread}\n({count[iy, ix]} seeds)", ha="center", va="center",
                        fontsize=8.5, color="white" if mean[iy, ix] < 0.6 else "black")
        ax.set_xticks(range(len(xs)), [fmt_value(v) for v in xs])
        ax.set_yticks(range(len(ys)), [fmt_value(v) for v in ys])
        ax.set_xticks(np.arange(len(xs) + 1) - 0.5, minor=True)
        ax.set_yticks(np.arange(len(ys) + 1) - 0.5, minor=True)
        ax.grid(which="minor", color="white", lw=2)
        ax.tick_params(which="both", length=0)
        ax.set_xlabel(p)
        ax.set_ylabel(q)
        ax.set_title(ACCURACY_GRID_METRICS[m] + (" (others pooled)" if len(sweep.swept) > 2 else ""), fontsize=11)
    fig.colorbar(im, ax=axes, shrink=0.9, label="final accuracy (mean over seeds)")
    return save_figure(fig, path)


def plot_sweep(sweep: Sweep, out_dir: Path) -> dict[str, Path]:
    """Draw the sweep's figures into out_dir as {name: path}, in SWEEP_FIGURES order; figures without
    data (no swept parameter, fewer than two, no completed job) are skipped, and a stale copy from an
    earlier report is removed."""
    written = {}
    with plt.rc_context(STYLE):
        for figure in SWEEP_FIGURES.values():
            path = out_dir / f"{figure.name}.png"
            result = figure.draw(sweep, path)
            if result is not None:
                written[figure.name] = result
            elif path.exists():
                path.unlink()
    return written
