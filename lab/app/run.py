"""Run one config end to end: train, write metrics/TensorBoard/checkpoints, detect phase changes,
write summary.json and plots. `run(cfg)` is the notebook entry point (`lab.run`); `lab-train` calls it."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import jax
from omegaconf import OmegaConf

from lab.analysis.development import stage_report
from lab.analysis.summary import summarize
from lab.core import ConfigError
from lab.plots.run import plot_run
from lab.rundir import load_llc, load_outputs, records_to_arrays, records_up_to
from lab.train.callbacks import (AttentionSnapshots, Checkpointer, LLCFile, MetricsFile, OutputTrajectory,
                                 ProgressBar, TensorBoard)
from lab.train.checkpoint import Checkpoints
from lab.train.runtime import configure_compile_cache
from lab.train.trainer import RunResult, Trainer

log = logging.getLogger(__name__)


# Keys that may change when a run is continued (e.g. more steps, another cache location).
RESUMABLE_CHANGES = ("train.resume", "train.steps", "train.progress", "train.tensorboard", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.compile_cache", "train.xla_cpu_threads", "train.gpus_per_job", "model.fused_attention",
                     "out_dir")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _check_same_config(run_dir: Path, cfg) -> None:
    """A run continues only with the config it started with (up to RESUMABLE_CHANGES)."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved = _flat(OmegaConf.to_container(OmegaConf.load(saved_path), resolve=True))
    now = _flat(OmegaConf.to_container(cfg, resolve=True))
    # keys the saved config lacks were added to the lab since; they take their defaults
    diff = [k for k in sorted(saved) if saved[k] != now.get(k) and k not in RESUMABLE_CHANGES]
    if diff:
        shown = "; ".join(f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in diff[:3])
        raise ConfigError(f"{run_dir} holds a run with another config ({shown}); continue it with its own "
                          "overrides, or choose another output directory")


def _continues_unfinished_run(run_dir: Path, checkpoints, cfg) -> bool:
    """Rerunning into a directory continues an unfinished run that has a checkpoint; a finished
    run is never overwritten."""
    metrics, summary = run_dir / "metrics.jsonl", run_dir / "summary.json"
    if not metrics.exists() or not metrics.stat().st_size:
        return False
    status = json.loads(summary.read_text()).get("status", "") if summary.exists() else "killed"
    if status == "completed":
        raise ConfigError(f"{run_dir} already holds a finished run; choose another output directory "
                          "(or set train.resume=true with more train.steps to extend it)")
    if checkpoints.latest_step() is None:
        return False
    log.info("%s holds an unfinished run (%s); continuing it from its checkpoint", run_dir, status)
    return True


def stages_of_run(summary: dict, run_dir: Path) -> dict:
    """The stage-boundary report (lab/analysis/development.py) from the summary and the run's
    llc.npz and outputs.npz; a failure here is logged and noted, never losing the summary."""
    try:
        return stage_report(summary, load_llc(run_dir), load_outputs(run_dir))
    except Exception as e:   # an analysis bug must not cost the run its summary.json
        log.warning("stage report failed (%s: %s); summary.json is written without it", type(e).__name__, e)
        return {"error": f"{type(e).__name__}: {e}"}


def run(cfg, run_dir: Optional[str | Path] = None, plots: bool = True, extra_callbacks: Sequence = ()) -> RunResult:
    """Train `cfg`. With `run_dir`, write every output there (and resume from it if train.resume).
    `extra_callbacks` (lab.train.callbacks.Callback) run between compiled chunks after the built-in ones."""
    configure_compile_cache(cfg.train)
    trainer = Trainer(cfg)
    mesh = dict(trainer.mesh.shape) if trainer.mesh is not None else "none (one device)"
    log.info("%d XLA %s device(s); seeds x batch mesh: %s", jax.device_count(), jax.default_backend(), mesh)
    snapshots = AttentionSnapshots()
    callbacks = [snapshots]
    checkpoints = None
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        metrics_path = run_dir / "metrics.jsonl"
        checkpoints = Checkpoints(run_dir / "checkpoints", cfg.train.keep_checkpoints)
        resume = cfg.train.resume or _continues_unfinished_run(run_dir, checkpoints, cfg)
        if resume:
            _check_same_config(run_dir, cfg)
            try:
                step, state = checkpoints.restore(jax.eval_shape(trainer.init_state)) \
                    if checkpoints.latest_step() is not None else (None, None)
            except FileNotFoundError as e:
                raise ConfigError(f"train.resume=true but {e}; start the run again in another directory") from None
            if step is None:
                raise ConfigError(f"train.resume=true but {run_dir / 'checkpoints'} holds no checkpoint; "
                                  "drop train.resume or point hydra.run.dir at the run to resume")
            trainer.state, trainer.step = state, step
            trainer.records = records_up_to(metrics_path, step) if metrics_path.exists() else []
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in trainer.records))
            log.info("resumed from step %d", step)
        elif metrics_path.exists() and metrics_path.stat().st_size:
            log.warning("%s holds an unfinished run without a checkpoint; starting it again", run_dir)
            metrics_path.write_text("")
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        callbacks.append(MetricsFile(metrics_path))
        # before the Checkpointer, so the callback state saved at a step holds that step's record
        if cfg.measures.enabled and cfg.measures.outputs:
            callbacks.append(OutputTrajectory(run_dir / "outputs.npz", trainer.task.trajectory_kind))
        if trainer.llc is not None:
            callbacks.append(LLCFile(run_dir, trainer.llc))
        callbacks.append(Checkpointer(checkpoints, cfg.train.checkpoint_every))
        if cfg.train.tensorboard:
            callbacks.append(TensorBoard(run_dir / "tensorboard"))
    if cfg.train.progress:
        callbacks.append(ProgressBar())
    trainer.callbacks = callbacks + list(extra_callbacks)
    if checkpoints is not None and trainer.step:
        checkpoints.load_callback_state(trainer.step, trainer.all_callbacks)
    try:
        trainer.fit()
    finally:
        summary = summarize(records_to_arrays(trainer.records), cfg, trainer.task,
                            trainer.seeds, trainer.status) if trainer.records else {"status": trainer.status}
        if trainer.clamps:
            summary["clamps"] = trainer.clamps.describe()
        if cfg.train.on_nonfinite == "skip":
            summary["skipped_updates"] = [int(sum(r["skipped_updates"][i] for r in trainer.records
                                                  if "skipped_updates" in r)) for i in range(len(trainer.seeds))]
        if run_dir is not None:
            if trainer.records:
                summary["stages"] = stages_of_run(summary, run_dir)
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            snapshots.save(run_dir / "attention.npz", summary, jax.device_get(trainer.task.snapshot_info(trainer.probe)))
            if plots and trainer.records:
                plot_run(run_dir)
    return RunResult(cfg, trainer, summary, run_dir, trainer.metrics())
