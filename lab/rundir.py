"""The run-directory format, read and written without JAX: a run directory holds config.yaml,
metrics.jsonl (one record per log step), summary.json, attention.npz, checkpoints/<step>/ and
callback_state/<step>.npz. Plots, the sweep table, the resume logic and the CLIs all read runs here.

| file | written by | read by |
|---|---|---|
| metrics.jsonl | `lab.train.callbacks.MetricsFile` | `load_metrics`, `read_records`, `records_up_to` |
| summary.json | `lab.app.run` | `load_summary` |
| config.yaml | `lab.app.run` | `load_run_config` (a dict), `lab.config.compose.saved_config` (typed) |
| attention.npz | `lab.train.callbacks.AttentionSnapshots` | `load_attention` |
| checkpoints/ | `lab.train.checkpoint` (orbax) | `checkpoint_steps`, `run_dir_problem` |
| llc.npz | `lab.train.callbacks.LLCFile` (online), `lab-llc` (offline) | `load_llc` |
| outputs.npz | `lab.train.callbacks.OutputTrajectory` | `load_outputs` |

llc.npz (local learning coefficient estimates, `lab.measures.llc`): `steps` (N,), `llc` (N, S) mean
over chains, `llc_std` (N, S) sample std over chains, `chains` (N, S, C) per-chain estimates,
`loss_trace` (N, S, C, M) L(w_t) - L(w*) on the same batch at every SGLD step (burn-in included),
`distance` (N, S, C, M) |w_t - w*|, `init_loss` (N, S, C) L(w*) on each chain's first batch, `nonfinite` (N, S, C) chains that blew up,
`not_settled` (N, S), `burn_in` (), `nbeta` (), `source` () "online" or "offline", `settings` ()
the estimator's settings as JSON.
outputs.npz (essential dynamics): `steps` (N,), `outputs` (N, S, D) the task's outputs on a fixed
slice of the probe at every log step (`Task.trajectory_outputs`), `kind` () what they are.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import yaml


def run_dirs_under(path: Path) -> list[Path]:
    """A run directory, or every run directory below a multirun/sweep directory."""
    path = Path(path)
    if (path / "metrics.jsonl").is_file():
        return [path]
    return sorted(p.parent for p in path.glob("*/metrics.jsonl"))


def checkpoint_steps(run_dir) -> list[int]:
    """The steps of the checkpoints a run directory holds, oldest first (orbax's folders are named by step)."""
    ckpt = Path(run_dir) / "checkpoints"
    if not ckpt.is_dir():
        return []
    return sorted(int(p.name) for p in ckpt.iterdir() if p.is_dir() and p.name.isdigit())


def run_dir_problem(run_dir: Path) -> Optional[str]:
    """Why `run_dir` cannot be loaded, checked without JAX; None if it has a config and a checkpoint."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        return f"{run_dir} is not a run directory: it has no config.yaml"
    if not checkpoint_steps(run_dir):
        return (f"{run_dir} holds no checkpoint (nothing in {run_dir / 'checkpoints'}); train it first, "
                "or wait until it writes one")
    return None


def records_up_to(path: Path, up_to: int) -> list[dict]:
    """The records of metrics.jsonl up to step `up_to`, for a resumed run; lines cut by a kill are skipped."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:   # a line cut by a kill
            continue
        if rec["step"] <= up_to:
            records.append(rec)
    return records


def records_to_arrays(records: list[dict]) -> dict[str, np.ndarray]:
    """Stack metrics records into arrays with a leading log-step axis (missing values -> NaN)."""
    keys = dict.fromkeys(k for r in records for k in r)
    out = {}
    for k in keys:
        vals = [r.get(k) for r in records]
        ref = next(np.asarray(v, float) for v in vals if v is not None)
        out[k] = np.stack([np.asarray(v, float) if v is not None else np.full_like(ref, np.nan) for v in vals])
    return out


def read_records(path: Path) -> list[dict]:
    """The records of a metrics.jsonl as written: a cut last line is skipped with a warning, a bad
    line elsewhere is an error."""
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    records = []
    for i, line in enumerate(lines):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # a killed run can leave half a line behind
                warnings.warn(f"{path}: skipping truncated last line")
                continue
            raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
        if not isinstance(rec, dict) or "step" not in rec:
            warnings.warn(f"{path}: skipping line {i + 1}, not a record with a 'step'")
            continue
        records.append(rec)
    return records


def load_metrics(run_dir) -> dict[str, np.ndarray]:
    """Read metrics.jsonl into arrays with the log step as the first axis.

    `step` is (N,); per-seed scalars (N, S); `loss_by_pos` (N, S, T-1); per-head measures
    (N, S, L, H); plain numbers such as `time` and `lr` (N,). A key missing from some
    records, or null, becomes NaN there; non-numeric or ragged keys are skipped.
    """
    path = Path(run_dir) / "metrics.jsonl"
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no complete records")

    steps = [int(r["step"]) for r in records]
    if any(b <= a for a, b in zip(steps, steps[1:])):
        # a resumed run may log a step twice; keep the latest record for each step
        warnings.warn(f"{path}: steps not strictly increasing; sorting, keeping the last of duplicates")
        by_step = {int(r["step"]): r for r in records}
        records = [by_step[s] for s in sorted(by_step)]

    keys = list(dict.fromkeys(k for r in records for k in r))
    out: dict[str, np.ndarray] = {"step": np.array([int(r["step"]) for r in records], dtype=np.int64)}
    for key in keys:
        if key == "step":
            continue
        arr = _stack_key(records, key)
        if arr is None:
            if not all(isinstance(r.get(key), (str, bool, dict)) or r.get(key) is None for r in records):
                warnings.warn(f"{path}: key {key!r} has no consistent numeric shape; not loaded")
            continue
        out[key] = arr
    return out


def _stack_key(records: list[dict], key: str) -> np.ndarray | None:
    values = []
    for r in records:
        v = r.get(key)
        if v is None:
            values.append(None)
            continue
        if isinstance(v, (str, bool, dict)):
            return None
        try:
            values.append(np.asarray(v, dtype=float))
        except (TypeError, ValueError):  # ragged or non-numeric
            return None
    shapes = {v.shape for v in values if v is not None}
    if len(shapes) != 1:
        return None
    shape = shapes.pop()
    return np.stack([np.full(shape, np.nan) if v is None else v for v in values])


def n_seeds(metrics: dict[str, np.ndarray]) -> int:
    for key in ("loss", "loss_repeat", "train_loss"):   # every task logs loss and train_loss
        if key in metrics and metrics[key].ndim == 2:
            return metrics[key].shape[1]
    dims = [a.shape[1] for a in metrics.values() if a.ndim >= 2]
    return max(set(dims), key=dims.count) if dims else 1


def load_summary(run_dir) -> dict:
    """summary.json, or {} when absent or unreadable (plots then carry no phase marks)."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        warnings.warn(f"{path}: not valid JSON; plotting without phase information")
        return {}


def load_run_config(run_dir) -> dict:
    """The run's resolved config.yaml as a dict; {} when absent or unreadable."""
    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return {}
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        warnings.warn(f"{path}: not valid YAML; plotting without config information")
        return {}
    if not isinstance(config, dict):
        warnings.warn(f"{path}: not a mapping; plotting without config information")
        return {}
    return config


def load_attention(run_dir) -> dict | None:
    """attention.npz (the probe-0 snapshots) as a dict; None when absent or malformed."""
    path = Path(run_dir) / "attention.npz"
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        att = {k: z[k] for k in ("steps", "patterns") if k in z}
        if set(att) != {"steps", "patterns"} or att["patterns"].ndim != 5:
            warnings.warn(f"{path}: needs 'steps' and a 5-d 'patterns'; skipping attention plot")
            return None
        try:
            att["labels"] = [str(s) for s in z["labels"]]
        except (KeyError, ValueError):  # absent, or saved as an object array
            att["labels"] = [""] * len(att["steps"])
        for k in ("repeat_start", "repeat_len", "n_repeats"):
            att[k] = int(z[k].item()) if k in z else None
    return att


LLC_KEYS = ("steps", "llc", "llc_std", "chains", "loss_trace", "distance", "init_loss", "nonfinite", "not_settled")


def _load_npz(path: Path, needed: tuple) -> dict | None:
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        warnings.warn(f"{path}: unreadable ({e}); skipping it")
        return None
    missing = [k for k in needed if k not in out]
    if missing:
        warnings.warn(f"{path}: lacks {', '.join(missing)}; skipping it")
        return None
    for k, v in list(out.items()):
        if v.ndim == 0 and v.dtype.kind in "US":
            out[k] = str(v)
    return out


def load_llc(run_dir) -> dict | None:
    """llc.npz (format above) as a dict of arrays; None when absent or malformed."""
    return _load_npz(Path(run_dir) / "llc.npz", LLC_KEYS)


def save_llc(run_dir, llc: dict) -> Path:
    """Write llc.npz atomically (a kill mid-write leaves the previous file)."""
    return _save_npz(Path(run_dir) / "llc.npz", llc)


def load_outputs(run_dir) -> dict | None:
    """outputs.npz (format above); None when absent or malformed."""
    return _load_npz(Path(run_dir) / "outputs.npz", ("steps", "outputs"))


def save_outputs(run_dir, outputs: dict) -> Path:
    return _save_npz(Path(run_dir) / "outputs.npz", outputs)


def _save_npz(path: Path, arrays: dict) -> Path:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
    tmp.replace(path)
    return path
