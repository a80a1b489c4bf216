"""`lab-sweep MULTIRUN_DIR`: collect a Hydra multirun (`lab-train -m ...`) into one table, figures
and a self-contained HTML report.

A multirun directory holds one job directory per job (`0/`, `1/`, ...), each with
`.hydra/overrides.yaml`, `train.log` and, if training started, the run's files (metrics.jsonl,
summary.json, config.yaml). `collect` makes one row per (job, seed): the swept parameters (the
override keys whose values differ between jobs), the seed, the job's status (and error line), the
repeated-part loss phase change of that seed, the earliest per-head phase changes, and the seed's
last logged metrics. `write_report` writes that table (CSV, JSON), the figures and report.html;
failed and killed jobs are listed with the command that reruns (or resumes) just them.

Like lab.plots, everything is read from files, so the report can be redrawn while a sweep is still
running or after some of its jobs died.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import itertools
import json
import math
import re
import shlex
import signal
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lab.plots import (DPI, STEP_LABEL, STYLE, SCORE_CMAP, _label, _load_summary, _n_seeds, _seed_mean,
                       load_config, load_metrics)

import matplotlib.pyplot as plt  # noqa: E402  (lab.plots has chosen the Agg backend)
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

PHASE_METRIC = "loss_repeat"                 # the curve whose phase change the figures are about
SEED_KEYS = ("train.seed",)                  # overrides that pick seeds: the `seed` column covers them
MAIN_FINALS = ("loss_repeat", "acc_repeat", "loss", "train_loss")   # first among the final metrics
JOB_MARKERS = ("metrics.jsonl", "summary.json", ".hydra/overrides.yaml", "train.log")
FIGURES = ("phase_vs_params", "loss_curves", "phase_grid")
MAX_GROUPS = 8            # more combinations of the other parameters than this: pool them in figure (a)
MAX_PAIRS = 12            # parameter pairs drawn in the grid figure
COMPLETED, FAILED, INCOMPLETE = "completed", "failed", "incomplete"
_UNSET = object()
_LOG_ERROR = re.compile(r"^\[[^\]]*\]\[[^\]]*\]\[(?:ERROR|CRITICAL)\] - (.*)$")


class SweepError(ValueError):
    """The directory is not a multirun directory (no job directories in it)."""


# ----------------------------------------------------------------------------- reading jobs


def _parse_value(text: str):
    """An override's value as Hydra would type it: 12 -> int, 1e-3 -> float, true -> bool, null -> None;
    anything else (strings, lists, dicts) stays the text."""
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    if t.lower() == "null":
        return None
    for kind in (int, float):
        try:
            value = kind(t)
        except ValueError:
            continue
        return value if kind is int or math.isfinite(value) else t
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "'\"":
        return t[1:-1]
    return t


def parse_overrides(overrides: list[str]) -> dict:
    """["task.vocab_size=12", "+x=1", "~y"] -> {"task.vocab_size": 12, "x": 1, "y": "(deleted)"}."""
    out = {}
    for o in overrides:
        o = str(o).strip()
        if o.startswith("~"):
            out[o[1:].split("=", 1)[0]] = "(deleted)"
        elif "=" in o:
            key, value = o.split("=", 1)
            out[key.lstrip("+")] = _parse_value(value)
    return out


def _job_sort_key(path: Path):
    return (0, int(path.name), "") if path.name.isdigit() else (1, 0, path.name)


def _job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((p for p in sweep_dir.iterdir() if p.is_dir() and any((p / m).exists() for m in JOB_MARKERS)),
                  key=_job_sort_key)


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        warnings.warn(f"{path}: not readable YAML; ignored")
        return None


def _last_error_line(job_dir: Path) -> str | None:
    """The message of the last ERROR line of the job's Hydra log (train.log), without the
    ` [<run dir>]` lab-train appends."""
    logs = [job_dir / "train.log"] if (job_dir / "train.log").is_file() else sorted(job_dir.glob("*.log"))
    message = None
    for log in logs:
        try:
            lines = log.read_text(errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            m = _LOG_ERROR.match(line.strip())
            if m:
                message = m.group(1).strip()
    if message is None:
        return None
    tail = re.search(r"\s\[([^\]]*)\]$", message)
    if tail and (tail.group(1) == str(job_dir) or Path(tail.group(1)).name == job_dir.name):
        message = message[:tail.start()]
    return message


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass(eq=False)
class _Job:
    """One job directory, read once: what the rows, figures and rerun commands need."""

    dir: Path
    overrides: list[str]
    params: dict
    summary: dict
    metrics: dict | None
    seeds: list
    status: str
    category: str                       # completed | failed | incomplete
    error: str | None
    has_checkpoint: bool
    chance: float | None = None
    threshold: float | None = None

    @property
    def name(self) -> str:
        return self.dir.name


def _seeds_from_config(job_dir: Path) -> list | None:
    for config in (load_config(job_dir), _read_yaml(job_dir / ".hydra" / "config.yaml")):
        train = (config or {}).get("train") if isinstance(config, dict) else None
        if isinstance(train, dict) and isinstance(train.get("seed"), int) and isinstance(train.get("seeds"), int):
            return list(range(train["seed"], train["seed"] + max(train["seeds"], 1)))
    return None


def _read_job(job_dir: Path) -> _Job:
    raw = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
    overrides = [str(o) for o in raw] if isinstance(raw, list) else []
    summary = _load_summary(job_dir)
    metrics = None
    if (job_dir / "metrics.jsonl").is_file():
        try:
            metrics = load_metrics(job_dir)
        except ValueError as e:          # empty, or a corrupt line in the middle
            warnings.warn(f"{job_dir.name}: {e}")
    log_error = _last_error_line(job_dir)

    if summary:
        status = str(summary.get("status") or COMPLETED)
    elif metrics is not None:
        status = "incomplete (killed?)"
    elif log_error:
        status = "failed"
    else:
        status = "no output yet (running, or killed before its first log?)"
    category = (COMPLETED if status == COMPLETED else FAILED if status.startswith("failed")
                else INCOMPLETE)
    error = None
    if category == FAILED:
        error = _one_line(log_error or status)
        status = "failed"
    elif status.startswith("interrupted") and log_error:
        error = _one_line(log_error)

    seeds = summary.get("seeds") if isinstance(summary.get("seeds"), list) else None
    if seeds is None:
        seeds = _seeds_from_config(job_dir)
    if seeds is None:
        seeds = [None] * (_n_seeds(metrics) if metrics else 1)
    checkpoints = job_dir / "checkpoints"
    thresholds = summary.get("thresholds") or {}
    return _Job(dir=job_dir, overrides=overrides, params=parse_overrides(overrides), summary=summary,
                metrics=metrics, seeds=list(seeds), status=status, category=category, error=error,
                has_checkpoint=checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()),
                chance=summary.get("chance_loss"), threshold=thresholds.get(PHASE_METRIC))


# ----------------------------------------------------------------------------- the table


def _same(values) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) if v is not _UNSET else "\0unset" for v in values}) <= 1


def _swept_keys(jobs: list[_Job]) -> list[str]:
    """Override keys whose values differ between jobs, in the order they first appear."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.params))
    return [k for k in keys if not _same(j.params.get(k, _UNSET) for j in jobs)]


def _phase_entry(entry, i: int) -> dict | None:
    per_seed = entry.get("per_seed") if isinstance(entry, dict) else None
    if isinstance(per_seed, list) and i < len(per_seed) and isinstance(per_seed[i], dict):
        return per_seed[i]
    return None


def _phase_groups(jobs: list[_Job]) -> tuple[list[str], list[str]]:
    """(per-seed measures other than loss_repeat, per-head measure groups) found in summary.json's
    "phase" of any job: {name: {"per_seed": ...}} and {group: {head: {"per_seed": ...}}}."""
    scalars, heads = {}, {}
    for j in jobs:
        for name, entry in (j.summary.get("phase") or {}).items():
            if name == PHASE_METRIC or not isinstance(entry, dict):
                continue
            if "per_seed" in entry:
                scalars[name] = True
            elif any(isinstance(v, dict) and "per_seed" in v for v in entry.values()):
                heads[name] = True
    return list(scalars), list(heads)


def _seed_phase(summary: dict, i: int, scalar_groups, head_groups) -> dict:
    phase = summary.get("phase") or {}
    p = _phase_entry(phase.get(PHASE_METRIC), i)
    detected = bool(p.get("detected")) if p else None
    out = {f"{PHASE_METRIC}_detected": detected,
           f"{PHASE_METRIC}_midpoint": p.get("midpoint") if detected else None,
           f"{PHASE_METRIC}_onset": p.get("onset") if detected else None,
           f"{PHASE_METRIC}_threshold_step": p.get("threshold_step") if p else None}
    for name in scalar_groups:
        q = _phase_entry(phase.get(name), i)
        out[f"{name}_midpoint"] = q.get("midpoint") if q and q.get("detected") else None
    for group in head_groups:
        best = None
        for head, entry in (phase.get(group) or {}).items():
            q = _phase_entry(entry, i)
            if q and q.get("detected") and q.get("midpoint") is not None and (best is None or q["midpoint"] < best[0]):
                best = (q["midpoint"], head)
        out[f"{group}_midpoint"] = best[0] if best else None
        out[f"{group}_head"] = best[1] if best else None
    out[f"{PHASE_METRIC}_reason"] = (p.get("reason") or None) if p and not detected else None
    return out


def _final_keys(jobs: list[_Job]) -> list[str]:
    keys = {}
    for j in jobs:
        if j.metrics:
            n = len(j.seeds)
            for k, v in j.metrics.items():
                if v.ndim == 2 and v.shape[1] == n and k != "step":
                    keys[k] = True
    return [k for k in MAIN_FINALS if k in keys] + [k for k in keys if k not in MAIN_FINALS]


def _number(x):
    """numpy scalars -> Python int / float (NaN kept), for CSV and JSON."""
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return float(x)
    return x


@dataclass
class Sweep:
    """A multirun directory read once: its jobs, swept parameters and one row per (job, seed)."""

    dir: Path
    jobs: list[_Job]
    swept: list[str]                    # swept parameters, seed keys left out
    common: list[str]                   # overrides every job shares
    command: list[str] | None           # the sweep's task overrides from multirun.yaml
    rows: list[dict] = field(default_factory=list)    # with private "_job", "_category" keys

    @property
    def public_rows(self) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith("_")} for r in self.rows]

    def counts(self) -> dict:
        by = {c: sum(j.category == c for j in self.jobs) for c in (COMPLETED, FAILED, INCOMPLETE)}
        detected = sum(bool(r[f"{PHASE_METRIC}_detected"]) for r in self.rows if r["_category"] == COMPLETED)
        seeds_done = sum(r["_category"] == COMPLETED for r in self.rows)
        return {"jobs": len(self.jobs), "seeds": len(self.rows), **by,
                "seeds_completed": seeds_done, "seeds_with_phase_change": detected}


def scan(sweep_dir) -> Sweep:
    """Read every job of a multirun directory. Raises SweepError when there are none."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SweepError(f"{sweep_dir}: no such directory")
    dirs = _job_dirs(sweep_dir)
    if not dirs:
        if (sweep_dir / "metrics.jsonl").is_file():
            raise SweepError(f"{sweep_dir} is a single run, not a multirun directory (lab-plot draws a run)")
        raise SweepError(f"{sweep_dir}: no job directories in it (subdirectories with .hydra/overrides.yaml, "
                         "metrics.jsonl or summary.json); give the directory `lab-train -m` wrote, "
                         "e.g. multirun/<date>/<time>")
    jobs = [_read_job(d) for d in dirs]
    swept_all = _swept_keys(jobs)
    swept = [k for k in swept_all if k not in SEED_KEYS]
    first = jobs[0].overrides
    common = [o for o in first if "=" in o and o.split("=", 1)[0].lstrip("+") not in swept_all
              and all(o in j.overrides for j in jobs)]
    multirun = _read_yaml(sweep_dir / "multirun.yaml")
    try:
        command = [str(o) for o in multirun["hydra"]["overrides"]["task"]]
    except (TypeError, KeyError):
        command = None
    sweep = Sweep(dir=sweep_dir, jobs=jobs, swept=swept, common=common, command=command)

    scalar_groups, head_groups = _phase_groups(jobs)
    finals = _final_keys(jobs)
    for j in jobs:
        last = j.metrics["step"][-1] if j.metrics else None
        for i, seed in enumerate(j.seeds):
            row = {"job": j.name, "seed": seed}
            row.update({k: j.params.get(k) for k in swept})
            row["status"] = j.status
            row.update(_seed_phase(j.summary, i, scalar_groups, head_groups))
            reason = row.pop(f"{PHASE_METRIC}_reason")
            row["last_step"] = None if last is None else int(last)
            for k in finals:
                v = j.metrics.get(k) if j.metrics else None
                ok = v is not None and v.ndim == 2 and i < v.shape[1]
                row[f"final_{k}"] = _number(v[-1, i]) if ok else None
            row["error"] = j.error
            row[f"{PHASE_METRIC}_reason"] = reason
            row["overrides"] = " ".join(j.overrides)
            row["run_dir"] = str(j.dir)
            row["_job"], row["_category"], row["_index"] = j, j.category, i
            sweep.rows.append(row)
    return sweep


def collect(sweep_dir) -> list[dict]:
    """One row per (job, seed) of the multirun in `sweep_dir`: job, seed, the swept parameters,
    status, the loss_repeat phase change (detected, midpoint, onset, threshold_step), the earliest
    detected midpoint of each per-head measure group (e.g. induction_midpoint, induction_head),
    last_step and final_<metric> for every per-seed metric, error, overrides and run_dir.
    Missing values are None. Raises SweepError when the directory holds no jobs."""
    return scan(sweep_dir).public_rows


# ----------------------------------------------------------------------------- formatting


def _fmt(value, key: str = "") -> str:
    if value is None or value is _UNSET:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if key.endswith(("_midpoint", "_onset", "_step")) or key == "last_step":
            return f"{value:.0f}"
        return f"{value:.4g}"
    return str(value)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _sort_values(values) -> list:
    return sorted(set(values), key=lambda v: (0, v, "") if _is_number(v) else (1, 0, str(v)))


def condition_label(row_or_params: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={_fmt(row_or_params.get(k))}" for k in keys) or "all jobs"


TEXT_COLUMNS = {"loss_repeat_detected": "phase?", "loss_repeat_midpoint": "midpoint",
                "loss_repeat_onset": "onset", "loss_repeat_threshold_step": "threshold"}


def text_table(sweep: Sweep) -> str:
    """The plain-text table lab-sweep prints: the main columns of every row."""
    rows = sweep.rows
    keys = ["job", "seed", *sweep.swept, "status", *TEXT_COLUMNS]
    keys += [k for k in rows[0] if k.endswith("_midpoint") and k not in keys and not k.startswith("_")]
    keys += [k for k in ("final_loss_repeat", "final_acc_repeat") if k in rows[0]]
    header = [TEXT_COLUMNS.get(k, k) for k in keys]
    cells = [[_fmt(r.get(k), k) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in [header] + cells) for i in range(len(keys))]
    line = lambda cs: "  ".join(c.ljust(w) for c, w in zip(cs, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(c) for c in cells])


# ----------------------------------------------------------------------------- rerun commands


def rerun_command(job: _Job) -> str:
    """The command that reruns one failed job, or resumes one killed with a checkpoint: the job's own
    overrides and its directory (a new `<job>-rerun` directory where the old one holds metrics)."""
    overrides = [o for o in job.overrides if not o.lstrip("+").startswith("train.resume=")]
    run_dir = job.dir.resolve()
    if job.category == INCOMPLETE and job.has_checkpoint:
        overrides.append("train.resume=true")
    elif job.metrics is not None or (job.dir / "metrics.jsonl").exists():
        run_dir = run_dir.with_name(run_dir.name + "-rerun")    # lab-train will not overwrite a run
    return " ".join(["lab-train", *map(shlex.quote, overrides), shlex.quote(f"hydra.run.dir={run_dir}")])


def multirun_command(jobs: list[_Job], sweep_dir: Path) -> str | None:
    """One `lab-train -m` command for these jobs when their overrides form a full grid (every
    combination of the values they use), else None."""
    if len(jobs) < 2:
        return None
    split = [dict(o.split("=", 1) for o in j.overrides if "=" in o) for j in jobs]
    keys = list(split[0])
    if any(list(s) != keys for s in split):
        return None
    values = {k: list(dict.fromkeys(s[k] for s in split)) for k in keys}
    combos = {tuple(s[k] for k in keys) for s in split}
    if len(combos) != len(jobs) or len(combos) != math.prod(len(v) for v in values.values()):
        return None
    args = [shlex.quote(f"{k}={','.join(v)}") for k, v in values.items()]
    out = Path(sweep_dir).resolve()
    return " ".join(["lab-train", "-m", *args, shlex.quote(f"hydra.sweep.dir={out.with_name(out.name + '-rerun')}")])


# ----------------------------------------------------------------------------- figures


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _colours(n: int, sequential: bool):
    if sequential:
        cmap = plt.get_cmap("viridis")
        return [cmap(0.08 + 0.8 * i / max(n - 1, 1)) for i in range(n)]
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


class _Axis:
    """Positions of one parameter's values on an x axis: numbers on a linear or log scale (log when
    they span a factor of 10 or more), anything else as evenly spaced categories."""

    def __init__(self, values):
        self.values = _sort_values(values)
        self.numeric = all(_is_number(v) for v in self.values)
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
        ax.set_xticks(ticks, [_fmt(v) for v in self.values],
                      rotation=30 if sum(len(_fmt(v)) for v in self.values) > 40 else 0)
        lo, hi = self.fwd(self.values[0]), self.fwd(self.values[-1])
        pad = 0.12 * self.span if self.numeric else 0.5
        ax.set_xlim(self.inv(lo - pad), self.inv(hi + pad))
        ax.set_xlabel(name)


def _completed_rows(sweep: Sweep) -> list[dict]:
    return [r for r in sweep.rows if r["_category"] == COMPLETED and r[f"{PHASE_METRIC}_detected"] is not None]


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
    mid_key = f"{PHASE_METRIC}_midpoint"
    ncols = min(3, len(params))
    nrows = math.ceil(len(params) / ncols)
    width = max(5.6 * ncols, 9.0)     # room for the legend below a single panel
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, 4.4 * nrows + 1.2), sharey=True,
                             squeeze=False, layout="constrained")
    in_band = []                       # (ax, x, colour, failed), placed once the y range is known
    detected_y = [r[mid_key] for r in done if r[mid_key] is not None]
    for ax, p in zip(axes.flat, params):
        xaxis = _Axis([r[p] for r in rows])
        others = [q for q in params if q != p]
        keys = _sort_values([condition_label(r, others) for r in rows]) if others else ["all"]
        pooled = len(keys) > MAX_GROUPS
        if pooled:
            keys = ["all"]
        group_of = lambda r: "all" if pooled or not others else condition_label(r, others)  # noqa: E731
        seq = len(others) == 1 and _Axis([r[others[0]] for r in rows]).numeric
        colours = dict(zip(keys, _colours(len(keys), seq) if len(keys) > 1 else ["tab:blue"]))
        dodge = 0.035 if xaxis.numeric else 0.12 / xaxis.span
        for gi, key in enumerate(keys):
            colour, g_off = colours[key], (gi - (len(keys) - 1) / 2) * dodge
            means = []
            for v in xaxis.values:
                cell = [r for r in rows if r[p] == v and group_of(r) == key]
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
                    means.append((xaxis.at(v, g_off), float(np.mean(mids)), float(np.std(mids))))
            if means:
                xs, ms, ss = zip(*means)
                # a line joins means only along a numeric axis; categories (e.g. clamps) have no order
                ax.errorbar(xs, ms, yerr=ss, color=colour, lw=2 if xaxis.numeric else 0, marker="D", ms=6.5,
                            mec="white", mew=0.8, capsize=4, elinewidth=1.4, zorder=3)
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
                          label="mean ± std over the seeds with a phase change"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles) if ncols > 1 else 2,
               frameon=False, fontsize=9)
    note = f"; {left_out} seeds of failed or unfinished jobs" if left_out else ""
    fig.suptitle(f"{_label(PHASE_METRIC)}: phase-change step vs swept parameters\n"
                 f"{n_det}/{len(done)} seeds of completed jobs with a phase change{note}", fontsize=12)
    return _save(fig, path)


def _condition_curves(sweep: Sweep):
    """[(label, key values, [(job, steps, values (N, S))])] in the order of the swept values."""
    conds: dict[str, dict] = {}
    for j in sweep.jobs:
        values = j.metrics.get(PHASE_METRIC) if j.metrics else None
        if values is None:
            continue
        values = values[:, None] if values.ndim == 1 else values
        if values.ndim != 2:
            continue
        label = condition_label(j.params, sweep.swept)
        entry = conds.setdefault(label, {"key": tuple(j.params.get(k) for k in sweep.swept), "runs": []})
        entry["runs"].append((j, j.metrics["step"], values))
    order = sorted(conds, key=lambda lb: [(0, v, "") if _is_number(v) else (1, 0, str(v)) for v in conds[lb]["key"]])
    return [(lb, conds[lb]["key"], conds[lb]["runs"]) for lb in order]


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
    return steps[keep], _seed_mean(m[keep]) if keep.any() else np.array([])


def _plot_curves(sweep: Sweep, path: Path) -> Path | None:
    """(b) loss_repeat of every condition: mean over seeds thick, seeds thin, one colour per
    condition, with the condition's mean phase-change midpoint dashed."""
    conds = _condition_curves(sweep)
    if not conds:
        return None
    seq = len(sweep.swept) == 1 and all(_is_number(k[0]) for _, k, _ in conds)
    colours = _colours(len(conds), seq)
    # two legend columns when the labels (with their ~45-character note) fit side by side in 11 inches
    legend_cols = 2 if max(len(lb) for lb, _, _ in conds) + 48 <= 75 else 1
    legend_rows = math.ceil((len(conds) + 4) / legend_cols)
    fig, ax = plt.subplots(figsize=(11, 4.6 + 0.21 * legend_rows), layout="constrained")
    handles = []
    for (label, _, runs), colour in zip(conds, colours):
        for j, steps, values in runs:
            ls = "-" if j.category == COMPLETED else ":"
            for k in range(values.shape[1]):
                ax.plot(steps, values[:, k], color=colour, lw=0.8, alpha=0.35, ls=ls)
        ms, mv = _mean_curve(runs)
        any_done = any(j.category == COMPLETED for j, _, _ in runs)
        ax.plot(ms, mv, color=colour, lw=2.4, zorder=3, ls="-" if any_done else ":")
        ids = {id(j) for j, _, _ in runs}
        mids = [r[f"{PHASE_METRIC}_midpoint"] for r in sweep.rows
                if id(r["_job"]) in ids and r["_category"] == COMPLETED]
        found = [m for m in mids if m is not None]
        if found:
            ax.axvline(float(np.mean(found)), color=colour, ls="--", lw=1.3, alpha=0.9, zorder=2)
            note = f"phase change {len(found)}/{len(mids)} seeds, mean step {np.mean(found):.0f}"
        else:
            note = f"no phase change, 0/{len(mids)} seeds" if mids else "no completed seeds"
        bad = sum(j.category != COMPLETED for j, _, _ in runs)
        if bad:
            note = ("" if not mids else note + "; ") + f"{bad} job{'s' if bad > 1 else ''} failed or unfinished: dotted"
        handles.append(Line2D([], [], color=colour, lw=2.4, ls="-" if any_done else ":", label=f"{label}  ({note})"))
    chance = {j.chance for j in sweep.jobs if j.chance is not None}
    threshold = {j.threshold for j in sweep.jobs if j.threshold is not None}
    if len(chance) == 1:
        ax.axhline(chance.pop(), color="0.45", ls="-.", lw=1)
        handles.append(Line2D([], [], color="0.45", ls="-.", lw=1, label="chance loss"))
    if len(threshold) == 1:
        ax.axhline(threshold.pop(), color="0.3", ls=":", lw=1)
        handles.append(Line2D([], [], color="0.3", ls=":", lw=1, label="detection threshold"))
    handles.append(Line2D([], [], color="0.35", lw=0.8, alpha=0.6, label="thin: single seeds"))
    handles.append(Line2D([], [], color="0.35", lw=1.3, ls="--", label="dashed: mean phase-change midpoint"))
    ax.set_xlabel(STEP_LABEL)
    ax.set_ylabel(_label(PHASE_METRIC))
    ax.grid(alpha=0.3)
    ax.set_title(f"{_label(PHASE_METRIC)} of {len(conds)} condition{'s' if len(conds) != 1 else ''} "
                 "(thick: mean over seeds)")
    fig.legend(handles=handles, loc="outside lower center", ncols=legend_cols, frameon=False, fontsize=9)
    return _save(fig, path)


def _plot_grid(sweep: Sweep, path: Path) -> Path | None:
    """(c) for each pair of swept parameters, a heatmap of the mean phase-change step (over the
    completed seeds with a phase change, pooled over other parameters), cells annotated with the
    number of seeds that had one, or with the failed seeds where no seed completed."""
    pairs = list(itertools.combinations(sweep.swept, 2))[:MAX_PAIRS]
    if not pairs or not _completed_rows(sweep):
        return None
    rows = sweep.rows
    mid_key = f"{PHASE_METRIC}_midpoint"
    grids = []
    for p, q in pairs:
        xs, ys = _sort_values([r[p] for r in rows]), _sort_values([r[q] for r in rows])
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
        ax.set_xticks(range(len(xs)), [_fmt(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_fmt(v) for v in ys])
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
    fig.suptitle(f"mean phase-change step of the {_label(PHASE_METRIC)}\n"
                 "cells: mean step, seeds with a phase change / completed seeds", fontsize=12)
    return _save(fig, path)


def plot_sweep(sweep: Sweep, out_dir: Path) -> dict[str, Path]:
    """Draw the sweep's figures into out_dir; figures without data (no swept parameter, fewer than
    two, no completed job) are skipped, and a stale copy from an earlier report is removed."""
    draw = {"phase_vs_params": _plot_phase_vs_params, "loss_curves": _plot_curves, "phase_grid": _plot_grid}
    written = {}
    with plt.rc_context(STYLE):
        for name in FIGURES:
            path = out_dir / f"{name}.png"
            result = draw[name](sweep, path)
            if result is not None:
                written[name] = result
            elif path.exists():
                path.unlink()
    return written


# ----------------------------------------------------------------------------- CSV, JSON, HTML


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _write_csv(rows: list[dict], path: Path) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
    return path


def _write_json(sweep: Sweep, path: Path) -> Path:
    doc = {"sweep_dir": str(sweep.dir), "command": sweep.command, "common_overrides": sweep.common,
           "swept": sweep.swept, "counts": sweep.counts(),
           "rows": [{k: _json_value(v) for k, v in r.items()} for r in sweep.public_rows]}
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    return path


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f;
       margin: 0; background: #f6f7f9; }
main { max-width: 1500px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 32px 0 10px; }
code, pre { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.sub { color: #555; margin: 0 0 14px; word-break: break-all; }
.cards { display: flex; gap: 10px; flex-wrap: wrap; margin: 12px 0; }
.card { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 8px 16px; min-width: 90px; }
.card b { display: block; font-size: 22px; } .card span { color: #555; font-size: 12.5px; }
.card.ok b { color: #1a7f37; } .card.bad b { color: #c62828; } .card.warn b { color: #b26a00; }
.meta { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; padding: 10px 14px; }
.meta div { margin: 2px 0; }
.tablewrap { overflow: auto; max-height: 70vh; border: 1px solid #dde1e6; border-radius: 8px; background: #fff; }
table { border-collapse: collapse; font-size: 12.5px; white-space: nowrap; }
th, td { padding: 4px 10px; border-bottom: 1px solid #eceef1; text-align: right; }
th { position: sticky; top: 0; background: #eef1f5; cursor: pointer; user-select: none; text-align: center; }
th:hover { background: #e0e6ee; }
th[data-order=asc]::after { content: " \\25B2"; } th[data-order=desc]::after { content: " \\25BC"; }
td.text { text-align: left; }
td.err { text-align: left; max-width: 460px; overflow: hidden; text-overflow: ellipsis; color: #8a1c1c; }
tbody tr:nth-child(even) { background: #fafbfc; } tbody tr:hover { background: #eef5ff; }
tr.failed td.status { color: #c62828; font-weight: 600; } tr.completed td.status { color: #1a7f37; }
tr.incomplete td.status { color: #b26a00; font-weight: 600; }
td.none { color: #aaa; }
figure { background: #fff; border: 1px solid #dde1e6; border-radius: 8px; margin: 0 0 20px; padding: 12px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #444; margin-top: 6px; font-size: 13px; }
.job { background: #fff; border: 1px solid #f0c7c7; border-left: 4px solid #c62828; border-radius: 6px;
       padding: 8px 12px; margin: 8px 0; }
.job.incomplete { border-color: #f1dcb5; border-left-color: #b26a00; }
.job .error { color: #8a1c1c; margin: 4px 0; }
pre { background: #f1f3f6; border-radius: 6px; padding: 8px 10px; overflow-x: auto; white-space: pre; margin: 6px 0; }
.note { color: #555; font-size: 13px; }
"""

SCRIPT = """
function cellValue(td) {
  const v = td.dataset.v;
  if (v === undefined || v === "") return null;
  const n = Number(v);
  return Number.isNaN(n) ? v.toLowerCase() : n;
}
document.querySelectorAll("table.sortable th").forEach((th, col) => {
  th.addEventListener("click", () => {
    const table = th.closest("table"), body = table.tBodies[0];
    const asc = th.dataset.order !== "asc";
    table.querySelectorAll("th").forEach(h => delete h.dataset.order);
    th.dataset.order = asc ? "asc" : "desc";
    const rows = Array.from(body.rows);
    rows.sort((a, b) => {
      const x = cellValue(a.cells[col]), y = cellValue(b.cells[col]);
      if (x === null || y === null) return (x === null) - (y === null);   // empty cells last
      const c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
      return asc ? c : -c;
    });
    rows.forEach(r => body.appendChild(r));
  });
});
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter(i => i.complete && i.naturalWidth > 0).length;
});
"""

CAPTIONS = {
    "phase_vs_params": "Phase-change step (sigmoid midpoint of the repeated-part loss) against each swept "
                       "parameter: small dots are seeds, diamonds the mean ± std over the seeds with a phase "
                       "change; in the grey top band, hollow markers are seeds without one and red crosses "
                       "seeds of failed or unfinished jobs.",
    "loss_curves": "Repeated-part loss of every condition (the job's overrides less the seed): thick lines "
                   "are means over seeds, thin lines single seeds, dashed verticals the mean phase-change step.",
    "phase_grid": "Mean phase-change step for each pair of swept parameters; each cell says how many of its "
                  "completed seeds had a phase change.",
}
HTML_HIDDEN = ("overrides", "run_dir", f"{PHASE_METRIC}_reason")


def _td(row: dict, key: str) -> str:
    v = row.get(key)
    classes = []
    if key == "status":
        classes.append("status text")
    elif key == "error":
        classes.append("err")
    elif isinstance(v, str) and not _is_number(v):
        classes.append("text")
    if v is None:
        classes.append("none")
    sort = "" if v is None else ("1" if v is True else "0" if v is False else str(v))
    title = ""
    if key == f"{PHASE_METRIC}_midpoint" and v is None and row.get(f"{PHASE_METRIC}_reason"):
        title = f' title="{html.escape(row[f"{PHASE_METRIC}_reason"])}"'
    elif key == "job":
        title = f' title="{html.escape(row["overrides"])}"'
    elif key in ("error", "status") and row.get("error"):
        title = f' title="{html.escape(row["error"])}"'
    cls = f' class="{" ".join(classes)}"' if classes else ""
    return f'<td{cls} data-v="{html.escape(sort)}"{title}>{html.escape(_fmt(v, key))}</td>'


def _html_table(sweep: Sweep) -> str:
    keys = [k for k in sweep.rows[0] if not k.startswith("_") and k not in HTML_HIDDEN]
    if not any(r["error"] for r in sweep.rows):
        keys.remove("error")
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    body = "\n".join(f'<tr class="{r["_category"]}">' + "".join(_td(r, k) for k in keys) + "</tr>"
                     for r in sweep.rows)
    return (f'<div class="tablewrap"><table class="sortable"><thead><tr>{head}</tr></thead>\n'
            f"<tbody>\n{body}\n</tbody></table></div>")


def _html_problems(sweep: Sweep) -> str:
    bad = [j for j in sweep.jobs if j.category != COMPLETED]
    if not bad:
        return "<h2>Failed jobs</h2><p>None: every job completed.</p>"
    parts = [f"<h2>Failed and unfinished jobs ({len(bad)})</h2>"]
    for j in bad:
        kind = "failed" if j.category == FAILED else "incomplete"
        overrides = html.escape(" ".join(j.overrides) or "(no overrides)")
        error = f'<div class="error">{html.escape(j.error)}</div>' if j.error else ""
        parts.append(f'<div class="job {kind}"><b>job {html.escape(j.name)}</b> — {html.escape(j.status)}'
                     f"{error}<div class=\"note\"><code>{overrides}</code></div></div>")
    failed = [j for j in bad if j.category == FAILED]
    parts.append("<p>Rerun only these jobs (one command each; a job whose directory holds a killed run's "
                 "checkpoint resumes with <code>train.resume=true</code>, one whose directory already holds "
                 "metrics reruns into <code>&lt;job&gt;-rerun</code>):</p>")
    parts.append("<pre>" + html.escape("\n".join(rerun_command(j) for j in bad)) + "</pre>")
    combined = multirun_command(failed, sweep.dir)
    if combined:
        parts.append("<p>or the failed ones as one multirun:</p><pre>" + html.escape(combined) + "</pre>")
    if failed:
        parts.append('<p class="note">A config error or a diverged run fails again with the same overrides: '
                     "change the value the error names (for a divergence e.g. a lower <code>optim.lr</code> or "
                     "<code>optim.grad_clip=1.0</code>) before rerunning.</p>")
    return "\n".join(parts)


def _html(sweep: Sweep, figures: dict[str, Path]) -> str:
    c = sweep.counts()
    cards = [(c["jobs"], "jobs", ""), (c["seeds"], "seeds (rows)", ""), (c[COMPLETED], "completed", "ok"),
             (c[FAILED], "failed", "bad" if c[FAILED] else ""),
             (c[INCOMPLETE], "unfinished", "warn" if c[INCOMPLETE] else ""),
             (f"{c['seeds_with_phase_change']}/{c['seeds_completed']}", "seeds with a phase change", "")]
    cards_html = "".join(f'<div class="card {cls}"><b>{html.escape(str(n))}</b><span>{html.escape(t)}</span></div>'
                         for n, t, cls in cards)
    meta = []
    if sweep.command:
        meta.append("<div>sweep: <code>" + html.escape(" ".join(["lab-train", "-m", *sweep.command])) + "</code></div>")
    meta.append("<div>swept: " + (", ".join(f"<code>{html.escape(k)}</code>" for k in sweep.swept) or "nothing but seeds")
                + "</div>")
    if sweep.common:
        meta.append("<div>common overrides: <code>" + html.escape(" ".join(sweep.common)) + "</code></div>")
    figs = []
    for name, path in figures.items():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        figs.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
                    f"<figcaption>{html.escape(CAPTIONS.get(name, name))}</figcaption></figure>")
    title = f"Sweep {sweep.dir}"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style></head>
<body><main>
<h1>Sweep report</h1>
<p class="sub">{html.escape(str(sweep.dir.resolve()))}</p>
<div class="cards">{cards_html}</div>
<div class="meta">{''.join(meta)}</div>
<h2>Table: one row per job and seed</h2>
<p class="note">Click a column to sort. Steps are training steps; <code>loss_repeat_*</code> is the repeated-part
loss phase change of that seed (midpoint and onset only where one was detected; hover a missing midpoint for the
reason), <code>&lt;group&gt;_midpoint</code> the earliest detected per-head phase change, <code>final_*</code>
the last logged values. Hover a job for its overrides.</p>
{_html_table(sweep)}
<h2>Figures</h2>
{''.join(figs) or '<p>No figures: no job logged metrics.</p>'}
{_html_problems(sweep)}
</main>
<script>{SCRIPT}</script>
</body></html>
"""


def write_report(sweep_dir, out_dir=None, sweep: Sweep | None = None) -> dict[str, Path]:
    """Write sweep.csv, sweep.json, the figures (phase_vs_params.png, loss_curves.png and, with two
    or more swept parameters, phase_grid.png) and a self-contained report.html into `out_dir`
    (default `<sweep_dir>/report`). Returns {"csv", "json", <figure names>, "html"} -> path."""
    sweep = sweep or scan(sweep_dir)
    out = Path(out_dir) if out_dir is not None else Path(sweep_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = {"csv": _write_csv(sweep.public_rows, out / "sweep.csv"), "json": _write_json(sweep, out / "sweep.json")}
    written.update(plot_sweep(sweep, out))
    html_path = out / "report.html"
    html_path.write_text(_html(sweep, {k: v for k, v in written.items() if k in FIGURES}), encoding="utf-8")
    written["html"] = html_path
    return written


# ----------------------------------------------------------------------------- CLI


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="lab-sweep",
        description="Collect a multirun (lab-train -m ...) into one table (CSV, JSON), figures and a "
                    "self-contained HTML report; list failed jobs with the commands that rerun them.")
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR",
                        help="the multirun directory, e.g. multirun/<date>/<time> (one subdirectory per job)")
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="write the report here (default SWEEP_DIR/report)")
    args = parser.parse_args(argv)
    if hasattr(signal, "SIGPIPE"):   # `lab-sweep ... | head` ends quietly, like other Unix tools
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            sweep = scan(args.sweep_dir)
            written = write_report(args.sweep_dir, args.out, sweep=sweep)
        except (SweepError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    for message in dict.fromkeys(str(w.message) for w in caught):
        print(f"warning: {message}", file=sys.stderr)

    c = sweep.counts()
    print(f"{sweep.dir}: {c['jobs']} jobs, {c['seeds']} seeds; {c[COMPLETED]} completed, {c[FAILED]} failed, "
          f"{c[INCOMPLETE]} unfinished; phase change in {c['seeds_with_phase_change']}/{c['seeds_completed']} "
          "completed seeds\n")
    print(text_table(sweep))
    bad = [j for j in sweep.jobs if j.category != COMPLETED]
    if bad:
        print(f"\nfailed or unfinished jobs ({len(bad)}):")
        for j in bad:
            print(f"  {j.name}: {j.error or j.status}")
        print("rerun them with:")
        for j in bad:
            print(f"  {rerun_command(j)}")
        combined = multirun_command([j for j in bad if j.category == FAILED], sweep.dir)
        if combined:
            print(f"or the failed ones as one multirun:\n  {combined}")
    print()
    for path in written.values():
        print(path)


if __name__ == "__main__":
    main()
