"""Comparison of runs that differ in their config (e.g. only in their clamps): one figure that
overlays their curves with each run's phase-change midpoint and clamp windows, labelled by the
config keys that differ, and a table (`<out>.json`, printed). `lab-plot --compare` calls it."""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# lab.plots.style first: it selects the headless Agg backend before pyplot loads
from lab.plots.style import (STEP_LABEL, STYLE, condition_colours, condition_sort_key, metric_label, save_figure,
                             seed_mean)
from lab.plots.clamp_windows import ClampWindow, clamp_windows, shade_clamps
from lab.plots.transition import Transition, phase_transition
from lab.analysis.sweep import SEED_KEYS, parse_overrides
from lab.rundir import load_metrics, load_overrides, load_run_config, load_summary

import matplotlib.pyplot as plt  # noqa: E402  (after lab.plots.style: the Agg backend)
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402


# Config keys that change how a run is executed or logged, not what it learns: left out of the
# differences that label runs in a comparison.
IGNORED_CONFIG_KEYS = {"out_dir", "train.progress", "train.tensorboard", "train.compile_cache", "train.resume",
                       "train.checkpoint_every", "train.keep_checkpoints", "train.checkpoint_log_points",
                       "train.checkpoint_linear_points", "train.checkpoints_around_transition", "train.xla_cpu_threads",
                       "train.seed_axis", "model.fused_attention"}
_UNSET = object()


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def run_identity(config: dict, overrides: list[str] | None, summary: dict | None = None) -> str:
    """What a run is, in a few words for figure titles: its task and model shape ("markov task,
    2-layer 4-head transformer", from summary.json or else config.yaml) and the command-line overrides
    that made it, less Hydra's own and IGNORED_CONFIG_KEYS (how it ran, not what it is) and a `task=`
    the task name already says."""
    summary = summary or {}
    task_cfg = config.get("task") if isinstance(config.get("task"), dict) else {}
    model = config.get("model") if isinstance(config.get("model"), dict) else {}
    task = summary.get("task") or task_cfg.get("name")
    layers, heads = summary.get("n_layers", model.get("n_layers")), summary.get("n_heads", model.get("n_heads"))
    parts = [f"{task} task"] if task else []
    if layers is not None and heads is not None:
        parts.append(f"{layers}-layer {heads}-head transformer")
    kept = [o for o in overrides or [] if not _override_key(o).startswith("hydra")
            and _override_key(o) not in IGNORED_CONFIG_KEYS and o != f"task={task}"]
    text = ", ".join(parts) or "run"
    return text + (f" ({', '.join(kept)})" if kept else "")


def _flatten(config: dict, prefix: str = "") -> dict:
    """{"model": {"n_layers": 2}} -> {"model.n_layers": 2}; `clamps` stays one value."""
    out = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if dotted == "clamps":
            out[dotted] = value or {}
        elif isinstance(value, dict) and value:
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    out.setdefault("clamps", {})  # no key and an empty mapping both mean "no clamps"
    return out


def config_differences(configs: list[dict]) -> list[dict]:
    """For each config, the dotted keys (in config order) whose values are not the same in all
    configs, with this config's value (absent keys left out). Runs without a config get {}."""
    flat = [_flatten(c) if c else None for c in configs]
    present = [f for f in flat if f is not None]
    keys = list(dict.fromkeys(k for f in present for k in f if k not in IGNORED_CONFIG_KEYS))
    differing = [k for k in keys if len({json.dumps(f.get(k, "<unset>"), sort_keys=True, default=str)
                                         for f in present}) > 1]
    return [{} if f is None else {k: f.get(k, _UNSET) for k in differing} for f in flat]


def _value_text(value) -> str:
    if value is _UNSET:
        return "(unset)"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _diff_label(diff: dict, clamps: list[ClampWindow]) -> str:
    parts = []
    for key, value in diff.items():
        if key == "clamps":
            parts.append("clamps: " + ("; ".join(w.describe() for w in clamps) if clamps else "none"))
        else:
            parts.append(f"{key}={_value_text(value)}")
    return ", ".join(parts)


def _short_name(run_dir: Path) -> str:
    """The directory name; a multirun job's number gets its sweep's name in front ('sweep/3')."""
    run_dir = run_dir.resolve()
    return f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.isdigit() else run_dir.name


def _per_seed_metric(metrics: dict, metric: str, run_dir: Path) -> np.ndarray:
    if metric not in metrics:
        have = ", ".join(k for k, v in metrics.items() if v.ndim == 2)
        raise ValueError(f"{run_dir}: no metric {metric!r} in metrics.jsonl (per-seed metrics there: {have})")
    values = metrics[metric]
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2:
        raise ValueError(f"{run_dir}: {metric!r} is not one number per seed (shape {values.shape[1:]})")
    return values


def _final(values: np.ndarray) -> tuple[float | None, float | None]:
    """Mean and std over seeds of each seed's last finite value."""
    last = []
    for s in range(values.shape[1]):
        finite = values[np.isfinite(values[:, s]), s]
        if len(finite):
            last.append(float(finite[-1]))
    return (float(np.mean(last)), float(np.std(last, ddof=1)) if len(last) > 1 else None) if last else (None, None)


@dataclass
class _Compared:
    run_dir: Path
    label: str
    steps: np.ndarray
    values: np.ndarray                  # (N, S)
    transition: Transition | None
    phase_metric: str | None
    clamps: list[ClampWindow]
    config: dict
    difference: dict
    condition: dict = None     # what the run's colour stands for: its differing settings less the seed

    def row(self) -> dict:
        tr = self.transition
        detected = tr is not None and tr.detected and tr.midpoint is not None
        final_mean, final_std = _final(self.values)
        return {
            "label": self.label, "run_dir": str(self.run_dir), "seeds": int(self.values.shape[1]),
            "phase_metric": self.phase_metric,
            "midpoint_mean": tr.midpoint if detected else None,
            "midpoint_std": (tr.midpoint_std or 0.0) if detected else None,
            "n_detected": tr.n_detected if tr else None,
            "n_seeds": tr.n_seeds if tr else None,
            "final_mean": final_mean, "final_std": final_std,
            "clamps": {w.name: w.config for w in self.clamps},
            "config_difference": {k: (None if v is _UNSET else v) for k, v in self.difference.items()},
        }


def _mean_std_text(mean, std, fmt: str) -> str:
    if mean is None:
        return "—"
    return f"{mean:{fmt}}" + (f" ± {std:{fmt}}" if std else "")


def comparison_table(rows: list[dict], metric: str) -> str:
    """The plain-text table plot_compare prints: one line per run."""
    header = ["run", "seeds", "phase-change midpoint", "detected", f"final {metric}"]
    lines = [[r["label"], str(r["seeds"]), _mean_std_text(r["midpoint_mean"], r["midpoint_std"], ".0f"),
              "—" if r["n_detected"] is None else f"{r['n_detected']}/{r['n_seeds']}",
              _mean_std_text(r["final_mean"], r["final_std"], ".4g")] for r in rows]
    widths = [max(len(line[i]) for line in [header] + lines) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines])


def _gather_compared(run_dirs: list[Path], metric: str, labels) -> list[_Compared]:
    for d in run_dirs:
        if not (d / "metrics.jsonl").is_file():
            raise ValueError(f"{d} is not a run directory (no metrics.jsonl)")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs")
    configs = [load_run_config(d) for d in run_dirs]
    diffs = config_differences(configs)
    runs = []
    for i, (d, config, diff) in enumerate(zip(run_dirs, configs, diffs)):
        metrics = load_metrics(d)
        summary = load_summary(d)
        main = summary.get("main_metric") or "loss_repeat"
        phase_metric = metric if isinstance((summary.get("phase") or {}).get(metric), dict) else main
        tr = phase_transition(summary, phase_metric)
        clamps = clamp_windows(config, float(metrics["step"][-1]), summary)
        runs.append(_Compared(run_dir=d, label=labels[i] if labels is not None else _diff_label(diff, clamps),
                              steps=metrics["step"], values=_per_seed_metric(metrics, metric, d), transition=tr,
                              phase_metric=phase_metric if tr is not None else None, clamps=clamps,
                              config=config, difference=diff))
    for r, condition in zip(runs, _conditions(run_dirs, diffs)):
        r.condition = condition
    # nothing differs (or no config): the directory names tell the runs apart
    seen: dict[str, int] = {}
    for r in runs:
        seen[r.label] = seen.get(r.label, 0) + 1
    for r in runs:
        if not r.label:
            r.label = _short_name(r.run_dir)
        elif seen[r.label] > 1:
            r.label = f"{r.label} [{_short_name(r.run_dir)}]"
    return runs


def _conditions(run_dirs: list[Path], diffs: list[dict]) -> list[dict]:
    """Each run's condition, as a sweep names it (lab/plots/sweep.py): the command-line overrides that
    differ between the runs, less the seed (.hydra/overrides.yaml), so that the jobs of a sweep get the
    colours its figures give them; the config differences less the seed for runs without that file."""
    overrides = [load_overrides(d) for d in run_dirs]
    if all(o is not None for o in overrides):
        parsed = [parse_overrides(o) for o in overrides]
        keys = [k for k in dict.fromkeys(k for p in parsed for k in p)
                if k not in SEED_KEYS and not k.startswith("hydra")]
        differing = [k for k in keys if len({json.dumps(p.get(k), sort_keys=True, default=str) for p in parsed}) > 1]
        return [{k: p.get(k) for k in differing} for p in parsed]
    return [{k: (None if v is _UNSET else v) for k, v in d.items() if k not in SEED_KEYS} for d in diffs]


def _condition_colours(runs: list[_Compared]) -> tuple[list[_Compared], list]:
    """The runs in the shared condition order (the baseline first, lab.plots.style.condition_sort_key;
    runs of one condition keep their order) and each run's colour, one per condition."""
    ordered = sorted(runs, key=lambda r: condition_sort_key(r.condition or {}))
    keys = list(dict.fromkeys(json.dumps(r.condition or {}, sort_keys=True, default=str) for r in ordered))
    params = {json.dumps(r.condition or {}, sort_keys=True, default=str): r.condition or {} for r in ordered}
    if len(keys) == 1 and len(ordered) > 1:        # nothing tells them apart but the seed: one colour per run
        return ordered, condition_colours([{"run": i} for i in range(len(ordered))])
    colour = dict(zip(keys, condition_colours([params[k] for k in keys])))
    return ordered, [colour[json.dumps(r.condition or {}, sort_keys=True, default=str)] for r in ordered]


def _clamp_timeline(ax, runs: list[_Compared], timeline: list[tuple[int, ClampWindow]], colours: list) -> None:
    """One row per (run, clamp): the clamp's window as a bar in the run's colour (ramps fade,
    eval-only clamps are dashed outlines), labelled with the clamp's name."""
    for row, (i, w) in enumerate(timeline):
        r = runs[i]
        shade_clamps(ax, [w], (float(r.steps[0]), float(r.steps[-1])), colour=colours[i], alpha=0.55,
                     rows=[(row - 0.35, row + 0.35)])
    ax.set_ylim(len(timeline) - 0.5, -0.5)
    ax.set_yticks(range(len(timeline)))
    ax.set_yticklabels([w.name for _, w in timeline], fontsize=8.5)
    for tick, (i, _) in zip(ax.get_yticklabels(), timeline):
        tick.set_color(colours[i])
    ax.tick_params(axis="y", length=0)
    ax.grid(axis="x", alpha=0.3)


def plot_compare(run_dirs, out_path, metric: str | None = None, labels=None, quiet: bool = False) -> Path:
    """Overlay `metric` (mean over seeds thick, seeds thin) of several runs, with each run's
    phase-change midpoint (± std over seeds, from summary.json) and its clamp windows, in one
    colour per run. Runs are labelled by what differs between their config.yaml files (or by
    `labels`). Writes `out_path` (PNG; a directory gets compare.png) and `<out_path stem>.json`
    (the comparison table), prints the table unless `quiet`, and returns the PNG's path. Raises ValueError for a directory
    that is not a run or a run without `metric`."""
    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise ValueError("no runs to compare")
    if metric is None:   # the task's main loss (summary.json), e.g. loss_repeat
        metric = load_summary(run_dirs[0]).get("main_metric") or "loss_repeat"
    runs = _gather_compared(run_dirs, metric, labels)
    out_path = Path(out_path)
    if out_path.is_dir():
        out_path = out_path / "compare.png"
    elif not out_path.suffix:
        out_path = out_path.with_suffix(".png")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows = [r.row() for r in runs]                 # the table keeps the order the runs were given in
    row_of = {id(r): row for r, row in zip(runs, rows)}
    runs, colours = _condition_colours(runs)       # the figure: the baseline first, one colour per condition

    # clamp windows go on a timeline strip above the curves, one row per run and clamp: shading
    # several runs' windows behind the curves would pile up into one muddy band
    timeline = [(i, w) for i, r in enumerate(runs) for w in r.clamps if w.drawn]
    with plt.rc_context(STYLE):
        if timeline:
            fig, (ax_t, ax) = plt.subplots(2, 1, figsize=(10, 6 + 0.22 * len(timeline)), sharex=True,
                                           layout="constrained",
                                           height_ratios=[0.6 + 0.3 * len(timeline), 5.5])
            _clamp_timeline(ax_t, runs, timeline, colours)
        else:
            fig, ax = plt.subplots(figsize=(10, 6), layout="constrained")
        handles = []
        for i, r in enumerate(runs):
            colour = colours[i]
            if r.values.shape[1] > 1:
                for s in range(r.values.shape[1]):
                    ax.plot(r.steps, r.values[:, s], color=colour, lw=0.7, alpha=0.3)
            ax.plot(r.steps, seed_mean(r.values), color=colour, lw=2.4, zorder=3)
            row = row_of[id(r)]
            if row["midpoint_mean"] is not None:
                mid, std = row["midpoint_mean"], row["midpoint_std"]
                if std:
                    ax.axvspan(mid - std, mid + std, color=colour, alpha=0.15, lw=0, zorder=1)
                ax.axvline(mid, color=colour, ls="--", lw=1.5, zorder=2)
            handles.append(Line2D([], [], color=colour, lw=2.4, label=textwrap.fill(r.label, 95)))
        phase_metrics = {r.phase_metric for r in runs} - {None}
        of = "" if phase_metrics <= {metric} else f" ({', '.join(sorted(map(metric_label, phase_metrics)))})"
        if any(r.values.shape[1] > 1 for r in runs):
            handles.append(Line2D([], [], color="0.3", lw=0.7, alpha=0.5, label="thin: single seeds"))
        if any(row["midpoint_mean"] is not None for row in rows):
            handles.append(Line2D([], [], color="0.3", ls="--", lw=1.5,
                                  label=f"dashed: phase-change midpoint{of}, band ± std over seeds"))
        if timeline:
            handles.append(Patch(color="0.4", alpha=0.55, lw=0,
                                 label="top: each run's clamp windows (fading: strength ramp, dashed: eval only)"))
        if all(metric == (load_summary(r.run_dir).get("main_metric") or "loss_repeat") for r in runs):
            thresholds = {(load_summary(r.run_dir).get("thresholds") or {}).get(metric) for r in runs}
            if len(thresholds) == 1 and None not in thresholds:
                ax.axhline(thresholds.pop(), color="0.3", ls=":", lw=1)
                handles.append(Line2D([], [], color="0.3", ls=":", lw=1, label="detection threshold"))
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(metric_label(metric))
        ax.grid(alpha=0.3)
        title = f"{metric_label(metric)}: {len(runs)} runs compared (thick: mean over seeds)"
        (ax_t if timeline else ax).set_title(title)
        fig.legend(handles=handles, loc="outside lower center", ncols=1, fontsize=9, frameon=False)
        save_figure(fig, out_path)

    table = {"metric": metric, "runs": rows}
    out_path.with_suffix(".json").write_text(json.dumps(table, indent=1, ensure_ascii=False) + "\n")
    if not quiet:
        print(comparison_table(rows, metric))
    return out_path
