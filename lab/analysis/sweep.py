"""The sweep table: collect a Hydra multirun (`lab-train -m ...`) into one row per (job, seed).
`lab-sweep MULTIRUN_DIR` (lab/app/sweep.py) writes it with figures and an HTML report
(lab/plots/report.py).

A multirun directory holds one job directory per job (`0/`, `1/`, ...), each with
`.hydra/overrides.yaml`, `train.log` and, if training started, the run's files (metrics.jsonl,
summary.json, config.yaml). `collect` makes one row per (job, seed): the swept parameters (the
override keys whose values differ between jobs), the seed, the job's status (and error line), the
repeated-part loss phase change of that seed, the earliest per-head phase changes, its stage
boundaries where summary.json has "stages" (lab.analysis.development), and the seed's last logged
metrics. Failed and killed jobs get the command that reruns (or resumes) just them.
`fmt_value`, `is_number`, `sort_values` and `condition_label` format and order its values for the
printed table, the report and the figures.

Like the plots, everything is read from files, so the report can be redrawn while a sweep is still
running or after some of its jobs died.
"""
from __future__ import annotations

import json
import math
import re
import shlex
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from lab.analysis import stats
from lab.rundir import load_metrics, load_run_config, load_summary, n_seeds

PHASE_METRIC = "loss_repeat"   # the curve whose phase change the figures are about, unless summary.json names
                               # the task's own (main_metric), e.g. loss_query for in-context classification
SEED_KEYS = ("train.seed",)                  # overrides that pick seeds: the `seed` column covers them
MAIN_FINALS = ("loss_repeat", "acc_repeat", "loss", "train_loss")   # first among the final metrics
JOB_MARKERS = ("metrics.jsonl", "summary.json", ".hydra/overrides.yaml", "train.log")
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


def last_error_line(job_dir: Path) -> str | None:
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
    for config in (load_run_config(job_dir), _read_yaml(job_dir / ".hydra" / "config.yaml")):
        train = (config or {}).get("train") if isinstance(config, dict) else None
        if isinstance(train, dict) and isinstance(train.get("seed"), int) and isinstance(train.get("seeds"), int):
            return list(range(train["seed"], train["seed"] + max(train["seeds"], 1)))
    return None


def _read_job(job_dir: Path) -> _Job:
    raw = _read_yaml(job_dir / ".hydra" / "overrides.yaml")
    overrides = [str(o) for o in raw] if isinstance(raw, list) else []
    summary = load_summary(job_dir)
    metrics = None
    if (job_dir / "metrics.jsonl").is_file():
        try:
            metrics = load_metrics(job_dir)
        except ValueError as e:          # empty, or a corrupt line in the middle
            warnings.warn(f"{job_dir.name}: {e}")
    log_error = last_error_line(job_dir)

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
        seeds = [None] * (n_seeds(metrics) if metrics else 1)
    checkpoints = job_dir / "checkpoints"
    thresholds = summary.get("thresholds") or {}
    return _Job(dir=job_dir, overrides=overrides, params=parse_overrides(overrides), summary=summary,
                metrics=metrics, seeds=list(seeds), status=status, category=category, error=error,
                has_checkpoint=checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()),
                chance=summary.get("chance_loss"), threshold=thresholds.get(main_metric(summary)))


# ----------------------------------------------------------------------------- the table


def _same(values) -> bool:
    return len({json.dumps(v, sort_keys=True, default=str) if v is not _UNSET else "\0unset" for v in values}) <= 1


def _swept_keys(jobs: list[_Job]) -> list[str]:
    """Override keys whose values differ between jobs, in the order they first appear."""
    keys = list(dict.fromkeys(k for j in jobs for k in j.params))
    return [k for k in keys if not _same(j.params.get(k, _UNSET) for j in jobs)]


def main_metric(summary: dict) -> str:
    return summary.get("main_metric") or PHASE_METRIC


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
            if name == main_metric(j.summary) or not isinstance(entry, dict):
                continue
            if "per_seed" in entry:
                scalars[name] = True
            elif any(isinstance(v, dict) and "per_seed" in v for v in entry.values()):
                heads[name] = True
    return list(scalars), list(heads)


def _seed_phase(summary: dict, i: int, scalar_groups, head_groups, metric: str) -> dict:
    phase = summary.get("phase") or {}
    p = _phase_entry(phase.get(metric), i)
    detected = bool(p.get("detected")) if p else None
    out = {f"{metric}_detected": detected,
           f"{metric}_midpoint": p.get("midpoint") if detected else None,
           f"{metric}_onset": p.get("onset") if detected else None,
           f"{metric}_threshold_step": p.get("threshold_step") if p else None}
    # change points: how many transitions (stages - 1) and when the largest one started
    entry = phase.get(metric)
    st = entry.get("stages") if isinstance(entry, dict) else None
    st = st[i] if isinstance(st, list) and i < len(st) and isinstance(st[i], dict) else None
    out[f"{metric}_transitions"] = len(st["transitions"]) if st else None
    biggest = max(st["transitions"], key=lambda t: abs(t["change"])) if st and st["transitions"] else None
    out[f"{metric}_stage_onset"] = biggest["onset"] if biggest else None
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
    out[f"{metric}_reason"] = (p.get("reason") or None) if p and not detected else None
    return out


STAGE_COLUMNS = ("llc_first_step", "llc_first_kind", "ed_first_step", "llc_in_window", "ed_in_window",
                 "llc_steepest_step", "llc_steepest_in_window", "ed_fastest_step", "ed_fastest_in_window")


def _seed_stages(summary: dict, i: int) -> dict:
    """One seed's stage boundaries from summary.json's "stages" (lab.analysis.development.stage_report):
    the first LLC critical point (step, and its kind: max, min, steepest or plateau) and the first ED
    turning point (steps), whether an LLC / ED boundary falls in a loss transition's window, the
    LLC's steepest change and the ED's fastest step and whether each falls in such a window (None:
    not measured, e.g. no timed loss transition, or a stage report written before these existed)."""
    stages = summary.get("stages")
    per_seed = stages.get("per_seed") if isinstance(stages, dict) else None
    seed = per_seed[i] if isinstance(per_seed, list) and i < len(per_seed) and isinstance(per_seed[i], dict) else {}
    bounds = seed.get("boundaries") or {}
    in_window = seed.get("in_loss_window") or {}
    llc = [c for c in bounds.get("llc") or [] if isinstance(c, dict) and c.get("step") is not None]
    first = min(llc, key=lambda c: c["step"]) if llc else None
    ed = [b for b in bounds.get("essential_dynamics") or [] if b is not None]
    steepest, fastest = seed.get("llc_steepest"), seed.get("ed_fastest")
    return {"llc_first_step": float(first["step"]) if first else None,
            "llc_first_kind": first.get("kind") if first else None,
            "ed_first_step": float(min(ed)) if ed else None,
            "llc_in_window": in_window.get("llc"), "ed_in_window": in_window.get("essential_dynamics"),
            "llc_steepest_step": float(steepest) if steepest is not None else None,
            "llc_steepest_in_window": seed.get("llc_steepest_in_loss_window"),
            "ed_fastest_step": float(fastest) if fastest is not None else None,
            "ed_fastest_in_window": seed.get("ed_fastest_in_loss_window")}


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
    launcher: list[str] = field(default_factory=list)  # its launcher overrides (hydra/launcher=..., hydra.launcher.*)
    rows: list[dict] = field(default_factory=list)    # with private "_job", "_category" keys
    phase_metric: str = PHASE_METRIC    # the jobs' main metric (their task's), e.g. loss_repeat
    has_stages: bool = False            # some job's summary.json has "stages" (LLC / ED boundaries): STAGE_COLUMNS

    @property
    def cluster_launcher(self) -> list[str]:
        """The launcher overrides when the sweep ran on a cluster (SLURM, Ray), so reruns go there too."""
        local = ("hydra/launcher=basic", "hydra/launcher=joblib", "hydra/launcher=submitit_local")
        chosen = [o.lstrip("+") for o in self.launcher if o.lstrip("+").startswith("hydra/launcher=")]
        return self.launcher if chosen and chosen[-1] not in local else []

    @property
    def public_rows(self) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith("_")} for r in self.rows]

    def counts(self) -> dict:
        by = {c: sum(j.category == c for j in self.jobs) for c in (COMPLETED, FAILED, INCOMPLETE)}
        detected = sum(bool(r[f"{self.phase_metric}_detected"]) for r in self.rows if r["_category"] == COMPLETED)
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
    try:
        launcher = [str(o) for o in multirun["hydra"]["overrides"]["hydra"]
                    if str(o).lstrip("+").startswith(("hydra/launcher=", "hydra.launcher."))]
    except (TypeError, KeyError):
        launcher = []
    mains = [main_metric(j.summary) for j in jobs if j.summary]
    metric = max(set(mains), key=mains.count) if mains else PHASE_METRIC   # one task per sweep, as a rule
    sweep = Sweep(dir=sweep_dir, jobs=jobs, swept=swept, common=common, command=command, launcher=launcher,
                  phase_metric=metric,
                  has_stages=any(isinstance(j.summary.get("stages"), dict) for j in jobs))

    scalar_groups, head_groups = _phase_groups(jobs)
    finals = _final_keys(jobs)
    for j in jobs:
        last = j.metrics["step"][-1] if j.metrics else None
        for i, seed in enumerate(j.seeds):
            row = {"job": j.name, "seed": seed}
            row.update({k: j.params.get(k) for k in swept})
            row["status"] = j.status
            row.update(_seed_phase(j.summary, i, scalar_groups, head_groups, metric))
            if sweep.has_stages:
                row.update(_seed_stages(j.summary, i))
            reason = row.pop(f"{metric}_reason")
            row["last_step"] = None if last is None else int(last)
            for k in finals:
                v = j.metrics.get(k) if j.metrics else None
                ok = v is not None and v.ndim == 2 and i < v.shape[1]
                row[f"final_{k}"] = _number(v[-1, i]) if ok else None
            row["error"] = j.error
            row[f"{metric}_reason"] = reason
            row["overrides"] = " ".join(j.overrides)
            row["run_dir"] = str(j.dir)
            row["_job"], row["_category"], row["_index"] = j, j.category, i
            sweep.rows.append(row)
    return sweep


def collect(sweep_dir) -> list[dict]:
    """One row per (job, seed) of the multirun in `sweep_dir`: job, seed, the swept parameters,
    status, the main metric's phase change (e.g. loss_repeat_detected, _midpoint, _onset, _threshold_step), the earliest
    detected midpoint of each per-head measure group (e.g. induction_midpoint, induction_head),
    when some run's summary.json has "stages" the seed's STAGE_COLUMNS (first LLC critical point of any
    kind and its kind, first ED turning point, LLC / ED boundary in a loss window, the LLC's steepest
    change and the ED's fastest step and each in a loss window), last_step and final_<metric> for
    every per-seed metric, error, overrides and run_dir.
    Missing values are None. Raises SweepError when the directory holds no jobs."""
    return scan(sweep_dir).public_rows


# ----------------------------------------------------------------------------- formatting


def fmt_value(value, key: str = "") -> str:
    """A table cell's text: '—' for a missing value, yes/no, steps (`key` ending in _midpoint, _onset,
    _step, or last_step) as whole numbers, other floats to 4 significant digits."""
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


def is_number(v) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def sort_values(values) -> list:
    """The distinct values, numbers first in numeric order, then the rest by their text."""
    return sorted(set(values), key=lambda v: (0, v, "") if is_number(v) else (1, 0, str(v)))


def condition_label(row_or_params: dict, keys: list[str]) -> str:
    """'key=value, ...' for `keys` (a job's swept settings), or 'all jobs' when nothing is swept."""
    return ", ".join(f"{k}={fmt_value(row_or_params.get(k))}" for k in keys) or "all jobs"


TEXT_COLUMNS = {"_detected": "phase?", "_midpoint": "midpoint", "_onset": "onset", "_threshold_step": "threshold",
                "_transitions": "transitions", "_stage_onset": "stage onset"}


def text_table(sweep: Sweep) -> str:
    """The plain-text table lab-sweep prints: the main columns of every row."""
    rows = sweep.rows
    phase_columns = {f"{sweep.phase_metric}{k}": v for k, v in TEXT_COLUMNS.items()}
    keys = ["job", "seed", *sweep.swept, "status", *phase_columns]
    keys += [k for k in rows[0] if k.endswith("_midpoint") and k not in keys and not k.startswith("_")]
    main_acc = next((j.summary.get("main_accuracy") for j in sweep.jobs if j.summary.get("main_accuracy")), "acc_repeat")
    keys += [k for k in (f"final_{sweep.phase_metric}", f"final_{main_acc}") if k in rows[0]]
    header = [phase_columns.get(k, k) for k in keys]
    cells = [[fmt_value(r.get(k), k) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in [header] + cells) for i in range(len(keys))]
    line = lambda cs: "  ".join(c.ljust(w) for c, w in zip(cs, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(c) for c in cells])


def condition_rows(sweep: Sweep) -> list[dict]:
    """One row per condition (a setting of the swept parameters), over its completed seeds: the
    seeds with a transition in the main metric (either detector) as k of n with an exact binomial
    95 % interval, and for the change-point onset of that transition, its midpoint and the final
    main metric: mean, sample std (ddof 1) and bootstrap 95 % interval over seeds. A condition's
    value is a statistic over its own seeds; conditions are never pooled as if they were seeds.
    When runs carry stage reports (`Sweep.has_stages`), also the first LLC critical point (any kind),
    first ED turning point, the LLC's steepest change and the ED's fastest step (llc_first_*,
    ed_first_*, llc_steepest_*, ed_fastest_*: n, mean, std, ci95) and the seeds whose LLC / ED
    boundary, LLC steepest change or ED fastest step falls in a loss transition's window
    (llc_in_window: k, llc_in_window_n: seeds measured, llc_in_window_ci95: exact binomial;
    ed_in_window, llc_steepest_in_window, ed_fastest_in_window likewise)."""
    metric = sweep.phase_metric
    groups: dict[str, list[dict]] = {}
    for r in sweep.rows:
        if r["_category"] == COMPLETED:
            groups.setdefault(condition_label(r, sweep.swept), []).append(r)
    out = []
    for label, rows in groups.items():
        hit = [r[f"{metric}_detected"] or bool(r.get(f"{metric}_transitions")) for r in rows]
        onset = [r.get(f"{metric}_stage_onset") if r.get(f"{metric}_stage_onset") is not None
                 else r.get(f"{metric}_onset") for r in rows]
        row = {"condition": label, "seeds": len(rows), "with_transition": sum(hit),
               "with_transition_ci95": stats.binomial_ci(sum(hit), len(rows))}
        for name, values in (("onset", onset), ("final", [r.get(f"final_{metric}") for r in rows])):
            d = stats.describe(values)
            row.update({f"{name}_{k}": d[k] for k in ("n", "mean", "std", "ci95")})
        if sweep.has_stages:
            for name in ("llc_first", "ed_first", "llc_steepest", "ed_fastest"):
                d = stats.describe(r.get(f"{name}_step") for r in rows)
                row.update({f"{name}_{k}": d[k] for k in ("n", "mean", "std", "ci95")})
            for name in ("llc_in_window", "ed_in_window", "llc_steepest_in_window", "ed_fastest_in_window"):
                measured = [r.get(name) for r in rows if r.get(name) is not None]
                row.update({name: sum(map(bool, measured)), f"{name}_n": len(measured),
                            f"{name}_ci95": stats.binomial_ci(sum(map(bool, measured)), len(measured))})
        out.append(row)
    return out


def condition_text(row: dict, name: str, digits: str = ".4g") -> str:
    """'mean ± std [lo, hi] (n)' of one statistic of a condition row; '—' without values."""
    if row[f"{name}_mean"] is None:
        return "—"
    text = f"{row[f'{name}_mean']:{digits}}"
    if row[f"{name}_std"] is not None:
        lo, hi = row[f"{name}_ci95"]
        text += f" ± {row[f'{name}_std']:{digits}} [{lo:{digits}}, {hi:{digits}}]"
    return text + f" (n={row[f'{name}_n']})"


def _count_text(k: int, n: int, ci) -> str:
    """'k/n [lo, hi]', or '—' when no seed was measured."""
    return f"{k}/{n} [{ci[0]:.2f}, {ci[1]:.2f}]" if n and ci else "—"


def condition_cells(row: dict) -> list[str]:
    """A condition row's cells, in the order of condition_header."""
    cells = [row["condition"], _count_text(row["with_transition"], row["seeds"], row["with_transition_ci95"]),
             condition_text(row, "onset", ".0f"), condition_text(row, "final")]
    if "llc_first_mean" in row:          # the sweep's runs carry stage reports
        cells += [condition_text(row, "llc_first", ".0f"), condition_text(row, "ed_first", ".0f")]
        cells += [_count_text(row[name], row[f"{name}_n"], row[f"{name}_ci95"])
                  for name in ("llc_in_window", "ed_in_window")]
        if "llc_steepest_mean" in row:
            cells += [condition_text(row, "llc_steepest", ".0f"),
                      _count_text(row["llc_steepest_in_window"], row["llc_steepest_in_window_n"],
                                  row["llc_steepest_in_window_ci95"])]
    return cells


def condition_header(sweep: Sweep) -> list[str]:
    header = ["condition", "seeds with a transition [95 % CI]", "onset (steps)", f"final {sweep.phase_metric}"]
    if sweep.has_stages:
        header += ["first LLC critical point (steps)", "first ED turning point (steps)",
                   "LLC boundary in the loss window [95 % CI]", "ED boundary in the loss window [95 % CI]",
                   "LLC steepest change (steps)", "LLC steepest change in the loss window [95 % CI]"]
    return header


def condition_table(sweep: Sweep) -> str:
    """The per-condition statistics as plain text (lab-sweep prints it under the per-seed table)."""
    rows = condition_rows(sweep)
    if not rows:
        return ""
    header = condition_header(sweep)
    cells = [condition_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in [header] + cells) for i in range(len(header))]
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


def multirun_command(jobs: list[_Job], sweep_dir: Path, launcher: list[str] = ()) -> str | None:
    """One `lab-train -m` command for these jobs when their overrides form a full grid (every
    combination of the values they use), else None. With the sweep's `launcher` overrides (a cluster's,
    e.g. hydra/launcher=submitit_slurm and its partition), the jobs run where the sweep ran, so one job
    is worth a command too."""
    if len(jobs) < (1 if launcher else 2):
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
    return " ".join(["lab-train", "-m", *args, *map(shlex.quote, launcher),
                     shlex.quote(f"hydra.sweep.dir={out.with_name(out.name + '-rerun')}")])
