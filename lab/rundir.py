"""The run-directory format, read and written without JAX: a run directory holds config.yaml,
metrics.jsonl (one record per log step), summary.json, attention.npz, checkpoints/<step>/,
callback_state/<step>.npz and checkpoints.json (why each checkpoint was kept). Plots, the sweep table, the resume logic and the CLIs all read runs here.

| file | written by | read by |
|---|---|---|
| metrics.jsonl | `lab.train.callbacks.MetricsFile` | `load_metrics`, `read_records`, `records_up_to` |
| summary.json | `lab.app.run` | `load_summary` |
| config.yaml | `lab.app.run` | `load_run_config` (a dict), `lab.config.compose.saved_config` (typed) |
| .hydra/overrides.yaml | `lab.app.cli` (the command line's overrides) | `load_overrides`, `lab.analysis.sweep` |
| attention.npz | `lab.train.callbacks.AttentionSnapshots` | `load_attention` |
| checkpoints/ | `lab.train.checkpoint` (orbax) | `checkpoint_steps`, `run_dir_problem` |
| callback_state/<step>.npz | `lab.train.checkpoint.Checkpoints.save_callback_state` | `Checkpoints.load_callback_state` |
| checkpoint_manifests/<step>.json | `lab.train.checkpoint` (SHA-256 and size of every file of a checkpoint and its callback state) | `Checkpoints.restore`, which skips a damaged checkpoint |
| checkpoints.json | `lab.train.checkpoint.Checkpoints` via `save_checkpoint_index` (why each checkpoint was kept; the transitions seen online) | `load_checkpoint_index`, `Checkpoints` (which steps `train.keep_checkpoints` may prune) |
| run.lock | `lock_run_dir` (the writer's pid and host; the lock is flock(2) on the directory) | `lock_run_dir` of a second writer, for its message |
| llc.npz | `lab.train.callbacks.LLCFile` (online), `lab-llc` (offline) | `load_llc` |
| outputs.npz | `lab.train.callbacks.OutputTrajectory` | `load_outputs` |

llc.npz (local learning coefficient estimates, `lab.measures.llc`): `steps` (N,), `llc` (N, S) mean
over chains, `llc_std` (N, S) sample std over chains, `chains` (N, S, C) per-chain estimates,
`loss_trace` (N, S, C, M) L(w_t) - L(w*) on the same batch at every SGLD step (burn-in included),
`distance` (N, S, C, M) |w_t - w*|, `init_loss` (N, S, C) L(w*) on each chain's first batch, `nonfinite` (N, S, C) chains that blew up,
`not_settled` (N, S), `burn_in` (), `nbeta` (), `source` () "online" or "offline", `settings` ()
the estimator's settings as JSON.
checkpoints.json: `format` (1), `checkpoints` {step: reasons}, each reason one of "periodic"
(`train.checkpoint_every`), "final", "interrupted" (the rolling ones: the newest `train.keep_checkpoints`
of them are kept), "schedule" (the log-plus-linear grid), "transition" (around a transition the online
detector saw; lab/train/schedule.py); and `transitions`, a list of {onset, end (null while under way),
seeds (indices into the run's seeds)}. A step may list several reasons; a checkpoint on disk that the
index does not list (written by an older lab) counts as rolling; an unreadable index gives every
checkpoint the reason "unknown", which is never pruned.
outputs.npz (essential dynamics): `steps` (N,), `outputs` (N, S, D) the task's outputs on a fixed
slice of the probe at every log step (`Task.trajectory_outputs`), `kind` () what they are.
"""
from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import yaml

from lab.core import RunLoadError


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


CHECKPOINT_INDEX = "checkpoints.json"


def load_checkpoint_index(run_dir) -> dict:
    """checkpoints.json (format above) for the checkpoints on disk: {"checkpoints": {step: reasons},
    "transitions": [...]}, steps as ints, oldest first; a checkpoint the index does not list gets no
    reasons ([]). Without an index (an older lab's run) no checkpoint has reasons; with an unreadable
    one, every checkpoint has the reason "unknown" (kept for good: it may have been a transition's)."""
    path = Path(run_dir) / CHECKPOINT_INDEX
    index = {}
    if path.is_file():
        try:
            index = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            warnings.warn(f"{path} is unreadable ({type(e).__name__}); its checkpoints are kept for good, "
                          "as reason 'unknown'")
            return {"checkpoints": {s: ["unknown"] for s in checkpoint_steps(run_dir)}, "transitions": []}
    listed = index.get("checkpoints", {}) if isinstance(index, dict) else {}
    listed = listed if isinstance(listed, dict) else {}
    reasons = {int(k): [str(r) for r in v] for k, v in listed.items() if str(k).isdigit() and isinstance(v, list)}
    transitions = index.get("transitions", []) if isinstance(index, dict) else []
    return {"checkpoints": {s: reasons.get(s, []) for s in checkpoint_steps(run_dir)},
            "transitions": transitions if isinstance(transitions, list) else []}


def save_checkpoint_index(run_dir, checkpoints: dict, transitions: list) -> Path:
    """Write checkpoints.json atomically: `checkpoints` {step: reasons}, `transitions` as listed above."""
    body = {"format": 1, "checkpoints": {str(s): list(r) for s, r in sorted(checkpoints.items())},
            "transitions": transitions}
    return write_text_atomic(Path(run_dir) / CHECKPOINT_INDEX, json.dumps(body, indent=1))


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
    """The records of a metrics.jsonl as written, at least one: a cut last line is skipped with a
    warning, and so is a line that is not a record with an integer 'step'. A file without a complete
    record, a bad line elsewhere (not JSON, or not text at all) or an unreadable file is a RunLoadError,
    whose one-line message says what to do."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RunLoadError(f"cannot read {path}: {e.strerror or e}; check that it is a readable file") from None
    numbered = [(n, ln) for n, ln in enumerate(data.split(b"\n"), start=1) if ln.strip()]
    records, skipped, cut = [], [], False
    for i, (n, raw) in enumerate(numbered):
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:   # not UTF-8, not JSON, or JSON nested beyond reason
            if i == len(numbered) - 1:  # a killed run can leave half a line behind
                cut = True
                continue
            what = "is not text (bytes that are not UTF-8)" if isinstance(e, UnicodeDecodeError) else "is not valid JSON"
            raise RunLoadError(f"{path}: line {n} {what}, so the file is damaged (only a killed run's last line may be "
                               "cut); restore it from a copy, or train the run again") from None
        step = rec.get("step") if isinstance(rec, dict) else None
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not float(step).is_integer():
            skipped.append(n)
            continue
        records.append(rec)
    if not records:
        why = ("it is empty" if not numbered else "its only line is cut or not JSON" if len(numbered) == 1 and cut
               else "no line of it is a record with an integer 'step'")
        raise RunLoadError(f"{path} holds no complete record ({why}); wait until the run logs its first step "
                           "(train.log_every), or train it again if it was killed or the file is damaged")
    if cut:
        warnings.warn(f"{path}: skipping truncated last line")
    if skipped:
        warnings.warn(f"{path}: skipping line{'s' * (len(skipped) > 1)} {', '.join(map(str, skipped[:5]))}"
                      f"{' ...' if len(skipped) > 5 else ''}: not a record with an integer 'step'")
    return records


def load_metrics(run_dir) -> dict[str, np.ndarray]:
    """Read metrics.jsonl into arrays with the log step as the first axis.

    `step` is (N,); per-seed scalars (N, S); `loss_by_pos` (N, S, T-1); per-head measures
    (N, S, L, H); plain numbers such as `time` and `lr` (N,). A key missing from some
    records, or null, becomes NaN there; non-numeric or ragged keys are skipped.
    """
    path = Path(run_dir) / "metrics.jsonl"
    records = read_records(path)   # at least one

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


def load_summary(run_dir, strict: bool = False) -> dict:
    """summary.json, or {} when absent. An unusable one (cut by a kill, not text, not a JSON object)
    is {} with a warning (plots then carry no phase marks), or with `strict` a RunLoadError saying so."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return {}
    problem = None
    try:
        summary = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:
        problem = f"cannot be read ({e.strerror or e})"
    except UnicodeDecodeError:
        problem = "is damaged: it is not text (bytes that are not UTF-8)"
    except json.JSONDecodeError as e:
        problem = f"is cut or damaged: not valid JSON ({e.msg}: line {e.lineno}, column {e.colno})"
    except RecursionError:
        problem = "is damaged: JSON nested too deeply to read"
    else:
        if not isinstance(summary, dict):
            problem = f"is damaged: it holds a JSON {type(summary).__name__}, not an object"
    if problem is None:
        return summary
    if strict:
        raise RunLoadError(f"{path} {problem}; move it aside to use the run without its summary "
                           "(plots then carry no phase marks)")
    warnings.warn(f"{path} {problem}; plotting without phase information")
    return {}


def flat_config(d: dict, prefix: str = "") -> dict:
    """{"model": {"n_layers": 2}} -> {"model.n_layers": 2}; an empty group stays one value ({})."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def load_run_config(run_dir, strict: bool = False) -> dict:
    """The run's resolved config.yaml as a dict; {} when absent. An unusable one (not text, not YAML,
    not a mapping, or cut: lab-train writes it whole, ending in a newline) is {} with a warning, or with
    `strict` a RunLoadError saying so; `strict` also wants the task, model and train sections."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    problem, config = None, None
    try:
        text = path.read_bytes().decode("utf-8")
        config = yaml.safe_load(text)
    except OSError as e:
        problem = f"cannot be read ({e.strerror or e})"
    except UnicodeDecodeError:
        problem = "is damaged: it is not text (bytes that are not UTF-8)"
    except (yaml.YAMLError, RecursionError) as e:
        problem = f"is cut or damaged: not valid YAML ({str(e).splitlines()[0]})"
    else:
        if text and not text.endswith("\n"):
            problem = "is cut: its last line is incomplete"
        elif not isinstance(config, dict):
            problem = "is empty" if config is None else f"is damaged: it holds a YAML {type(config).__name__}, not a mapping"
        elif strict:
            missing = [k for k in ("task", "model", "train") if not isinstance(config.get(k), dict)]
            if missing:
                problem = f"is cut or damaged: it lacks the {', '.join(missing)} section{'s' * (len(missing) > 1)}"
    if problem is None:
        return config
    if strict:
        hydra = run_dir / ".hydra" / "config.yaml"
        source = f" (Hydra's copy of the composed config is {hydra})" if hydra.is_file() else ""
        raise RunLoadError(f"{path} {problem}; restore it from a copy{source}, or train the run again")
    warnings.warn(f"{path} {problem}; plotting without config information")
    return {}


def load_overrides(run_dir) -> list[str] | None:
    """The run's command-line overrides (.hydra/overrides.yaml, e.g. ["task=markov", "train.steps=600"]),
    or None when the file is absent or unusable (a run made by `lab.run()` from Python has none)."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return None
    return [str(o) for o in raw] if isinstance(raw, list) else None


def load_attention(run_dir) -> dict | None:
    """attention.npz (the probe-0 snapshots) as a dict; None when absent or malformed."""
    path = Path(run_dir) / "attention.npz"
    if not path.exists():
        return None
    try:   # our own handle: np.load leaves its own open when the zip is bad
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
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
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:   # cut by a kill, or not an npz at all
        warnings.warn(f"{path}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                      "skipping attention plot")
        return None
    return att


LLC_KEYS = ("steps", "llc", "llc_std", "chains", "loss_trace", "distance", "init_loss", "nonfinite", "not_settled")


def _load_npz(path: Path, needed: tuple) -> dict | None:
    if not path.exists():
        return None
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:   # our handle: closed on a bad zip too
            out = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:   # cut by a kill, or not an npz at all
        warnings.warn(f"{path}: unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__}); skipping it")
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


# ---- one writer per run directory ----
_held: dict[str, list] = {}   # resolved path -> [fd, depth]: re-entrant within a process (lab-train, then run())
OWNER_FILE = "run.lock"       # who holds the lock: "pid host time"; removed on release


class RunDirBusy(RuntimeError):
    """Another process is writing the run directory; the message is one line."""


def lock_run_dir(run_dir) -> None:
    """Take the advisory lock of `run_dir` (an existing directory) for this process, or raise RunDirBusy
    naming the owner. The lock is flock(2) on the directory itself, so taking it writes nothing (a refused
    command leaves no trace) and the kernel releases it when the owner dies: a stale lock cannot block.
    Re-entrant: each call needs an `unlock_run_dir`."""
    import fcntl
    import os
    import socket
    import time
    key = str(Path(run_dir).resolve())
    if key in _held:
        _held[key][1] += 1
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        owner = _read_owner(Path(key))
        raise RunDirBusy(f"{run_dir} is in use by another run ({owner}); wait for it to end, or choose "
                         "another output directory (hydra.run.dir)") from None
    except OSError:   # a filesystem without flock on directories: run unlocked rather than not at all
        warnings.warn(f"{run_dir}: cannot lock it here (no flock); two runs could write it at once")
    stale = _read_owner(Path(key))
    _held[key] = [fd, 1]
    try:
        (Path(key) / OWNER_FILE).write_text(f"pid {os.getpid()} on {socket.gethostname()} since "
                                            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    except OSError:
        pass   # the lock holds without its label
    if stale != "owner unknown":
        warnings.warn(f"{run_dir}: took over the lock of a run that ended without releasing it ({stale})")


def unlock_run_dir(run_dir) -> None:
    import os
    key = str(Path(run_dir).resolve())
    held = _held.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1]:
        return
    del _held[key]
    (Path(key) / OWNER_FILE).unlink(missing_ok=True)
    os.close(held[0])   # closing the descriptor releases the flock


def _read_owner(run_dir: Path) -> str:
    try:
        return (run_dir / OWNER_FILE).read_text().strip() or "owner unknown"
    except OSError:
        return "owner unknown"


def write_text_atomic(path, text: str) -> Path:
    """Write `path` whole or not at all (a temporary file renamed into place): a kill or a full disk
    mid-write leaves the previous version, never half a summary."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
