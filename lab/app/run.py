"""Run one config end to end: train, write metrics/TensorBoard/checkpoints, detect phase changes,
write summary.json and plots. `run(cfg)` is the notebook entry point (`lab.run`); `lab-train` calls it."""
from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

import jax
from omegaconf import OmegaConf

from lab.config.compose import RETIRED_KEYS, load_config
from lab.core import AnalysisInterrupted, ConfigError
from lab.rundir import (RunDirBusy, checkpoint_steps, load_summary, lock_run_dir,
                        records_up_to, unlock_run_dir, write_text_atomic)
from lab.train.callbacks import (AttentionSnapshots, Callback, Checkpointer, LLCFile, LogLines, MetricsFile,
                                 OutputTrajectory, ProgressBar, TensorBoard, WandbLogger, check_wandb)
from lab.train.checkpoint import Checkpoints
from lab.train.programs import ProgramCache
from lab.train.runtime import configure_compile_cache
from lab.train.schedule import grid_steps
from lab.train.trainer import RunResult, Trainer

log = logging.getLogger(__name__)


# Keys that may change when a run is continued: its length, and how it logs, checkpoints and compiles
# (none changes what is trained). Any other difference, a key added included, is refused.
# The checkpointing keys choose which states are saved, never what is trained; a changed grid or
# transition budget applies from the resumed step on (the online detector's state is saved whatever
# the budget, so turning it on later finds it whole), and what was kept before stays.
RESUMABLE_CHANGES = ("train.resume", "train.steps", "train.progress", "train.tensorboard", "train.wandb",
                     "train.wandb_mode", "train.wandb_project", "train.checkpoint_every",
                     "train.keep_checkpoints", "train.checkpoint_log_points", "train.checkpoint_linear_points",
                     "train.checkpoints_around_transition", "train.log_every", "train.compile_cache",
                     "train.xla_cpu_threads", "train.gpus_per_job", "model.fused_attention")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flat(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _check_same_config(run_dir: Path, cfg) -> None:
    """A run continues only with the config it started with (up to RESUMABLE_CHANGES). A key the saved
    config lacks is either one the lab added since (it takes its default, which is what the run ran with)
    or one the command adds (a clamp, a group): the first passes, the second is refused. A key the lab no
    longer has is named, with the fix that works."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved_cfg = OmegaConf.load(saved_path)
    saved = {k: v for k, v in _flat(OmegaConf.to_container(saved_cfg, resolve=True)).items() if k not in RETIRED_KEYS}
    now = _flat(OmegaConf.to_container(cfg, resolve=True))
    task = OmegaConf.select(saved_cfg, "task.name")   # the defaults of the saved run's own task
    defaults = _flat(OmegaConf.to_container(load_config([f"task={task}"] if task else []), resolve=True))
    dropped = [k for k in saved if k not in now and k not in defaults and not k.startswith("clamps.")]
    if dropped:
        raise ConfigError(f"{saved_path} has keys this version of the lab no longer has ({', '.join(dropped[:5])}); "
                          "delete those lines from it to continue the run with this version, or continue it with "
                          "the version that wrote it")
    changed = [k for k in sorted(saved) if saved[k] != now.get(k) and k not in RESUMABLE_CHANGES]
    added = [k for k in sorted(now) if k not in saved and k not in RESUMABLE_CHANGES
             and (k not in defaults or defaults[k] != now[k])]
    if changed or added:
        shown = "; ".join([f"{k}: {saved.get(k)!r} then, {now.get(k)!r} now" for k in changed] +
                          [f"{k}: absent then, {now[k]!r} now" for k in added][:3])
        raise ConfigError(f"{run_dir} holds a run with another config ({shown}); continue it with its own "
                          "overrides, or choose another output directory")


def _continues_unfinished_run(run_dir: Path, cfg) -> bool:
    """Rerunning into a directory continues an unfinished run that has a checkpoint; a finished
    run is never overwritten. Checked before anything is written (checkpoint_steps reads folder names)."""
    metrics = run_dir / "metrics.jsonl"
    if not metrics.exists() or not metrics.stat().st_size:
        return False
    status = str(load_summary(run_dir).get("status", "killed")) if (run_dir / "summary.json").exists() else "killed"
    if status == "completed":
        raise ConfigError(f"{run_dir} already holds a finished run; choose another output directory "
                          "(or set train.resume=true with more train.steps to extend it)")
    return bool(checkpoint_steps(run_dir))


def _check_extends(run_dir: Path, cfg) -> None:
    """train.resume=true continues an unfinished run or extends a finished one; it never trains backwards."""
    steps = checkpoint_steps(run_dir)
    if steps and steps[-1] > cfg.train.steps:
        raise ConfigError(f"train.steps={cfg.train.steps} is below the run's newest checkpoint (step {steps[-1]}) in "
                          f"{run_dir}; set train.steps above {steps[-1]} to extend it, or load a step of it with "
                          f"lab.load_run({str(run_dir)!r}, step=N)")
    status = str(load_summary(run_dir).get("status", ""))
    if status == "completed" and steps and steps[-1] == cfg.train.steps:
        raise ConfigError(f"{run_dir} already finished its {cfg.train.steps} steps; set train.steps higher to extend it")


def _intact_up_to(records: list[dict], chunk: int) -> int:
    """The last step up to which metrics.jsonl holds every record; -1 if none. A jump between
    consecutive steps longer than `chunk` (the longest log interval) is a gap: lines lost from a cut or
    damaged file."""
    last = 0 if not records else -1
    for r in records:
        if r["step"] - max(last, 0) > chunk:
            break
        last = r["step"]
    return last


def _restore(run_dir: Path, cfg, trainer, checkpoints, metrics_path: Path) -> None:
    """Restore the newest intact checkpoint whose step the metrics file covers, and the records up to it.
    A checkpoint newer than a gap in metrics.jsonl is passed over for one before the gap (or a fresh
    start), so the run's records are rewritten from there: the same command gives the same metrics."""
    records = records_up_to(metrics_path, 10**12) if metrics_path.exists() else []
    saved = OmegaConf.load(run_dir / "config.yaml") if (run_dir / "config.yaml").exists() else cfg
    chunk = max(cfg.train.log_every, OmegaConf.select(saved, "train.log_every", default=cfg.train.log_every))
    intact = _intact_up_to(records, chunk)
    like = jax.eval_shape(trainer.init_state)
    try:
        step, state = checkpoints.restore(like)
    except FileNotFoundError as e:
        raise ConfigError(f"cannot continue the run: {e}; start it again in another directory") from None
    if step > intact:
        try:   # the newest intact checkpoint the records cover; none: the run starts again
            older = checkpoints.restore(like, up_to=intact) if intact >= 0 else None
        except FileNotFoundError:
            older = None
        log.warning("%s lacks records after step %d (cut or damaged), though a checkpoint is at step %d; "
                    "continuing from %s and rewriting the records from there", metrics_path, max(intact, 0), step,
                    f"step {older[0]}" if older else "the start")
        if older is None:
            return
        step, state = older
    trainer.state, trainer.step = state, step
    trainer.records = [r for r in records if r["step"] <= step]
    log.info("resumed from step %d", step)


def _import_after():
    import lab.app.after as after   # deliberate, and on a thread: see AfterTraining
    return after


class AfterTraining(Callback):
    """`lab.app.after` (summary, fits, plots), imported on a background thread once the first chunk of
    training is logged. Its imports (scipy, ruptures, matplotlib: seconds on a laptop) then overlap
    training, where the main thread waits on XLA, instead of delaying the first training step or adding
    to the wait after the last one. Started later than that, they would hold the GIL while the first
    programs are traced; `module()` waits for the import (or imports at once if training never got
    that far)."""

    def __init__(self):
        self._thread: Optional[threading.Thread] = None
        self._module = None

    def start(self) -> None:
        if self._thread is None and "lab.app.after" not in sys.modules:
            self._thread = threading.Thread(target=self._load, name="lab-import-after", daemon=True)
            self._thread.start()

    def _load(self) -> None:
        try:
            self._module = _import_after()
        except BaseException:   # imported again by module(), which raises it where it can be reported
            pass

    def on_log(self, trainer, record, outputs) -> None:
        if record["step"] > 0:
            self.start()

    def module(self):
        if self._thread is not None:
            self._thread.join()
        return self._module or _import_after()


def run(cfg, run_dir: Optional[str | Path] = None, plots: bool = True, extra_callbacks: Sequence = (),
        before_training: Optional[Callable[[Path], None]] = None, reuse_programs: bool = False) -> RunResult:
    """Train `cfg`. With `run_dir`, write every output there (and resume from it if train.resume, or if
    it holds an unfinished run). The directory is locked for this process (lab.rundir.lock_run_dir);
    every check that can refuse the run comes before the first write; `before_training(run_dir)` then
    runs (lab-train writes Hydra's .hydra/ files there). `extra_callbacks` (lab.train.callbacks.Callback)
    run between compiled chunks after the built-in ones. `reuse_programs`: load and save the compiled
    programs whole (lab-train's; lab/train/programs.py says why only there)."""
    check_wandb(cfg.train)
    configure_compile_cache(cfg.train)
    trainer = Trainer(cfg, programs=ProgramCache.for_config(cfg) if reuse_programs else None)
    if run_dir is None:
        return _train(cfg, trainer, None, None, plots, extra_callbacks)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        lock_run_dir(run_dir)
    except RunDirBusy as e:
        raise ConfigError(str(e)) from None
    try:
        metrics_path = run_dir / "metrics.jsonl"
        resume = cfg.train.resume or _continues_unfinished_run(run_dir, cfg)
        if resume:
            _check_same_config(run_dir, cfg)
            if not checkpoint_steps(run_dir):
                raise ConfigError(f"train.resume=true but {run_dir / 'checkpoints'} holds no checkpoint; "
                                  "drop train.resume or point hydra.run.dir at the run to resume")
            _check_extends(run_dir, cfg)
        checkpoints = Checkpoints(run_dir / "checkpoints", cfg.train.keep_checkpoints)
        if resume and not cfg.train.resume:
            log.info("%s holds an unfinished run (%s); continuing it from its checkpoint", run_dir,
                     load_summary(run_dir).get("status", "killed"))
        if resume:
            _restore(run_dir, cfg, trainer, checkpoints, metrics_path)
        elif metrics_path.exists() and metrics_path.stat().st_size:
            log.warning("%s holds an unfinished run without a checkpoint; starting it again", run_dir)
        if before_training is not None:
            before_training(run_dir)
        write_text_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in trainer.records))
        write_text_atomic(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
        return _train(cfg, trainer, run_dir, checkpoints, plots, extra_callbacks)
    finally:
        unlock_run_dir(run_dir)


def _train(cfg, trainer, run_dir: Optional[Path], checkpoints, plots: bool, extra_callbacks) -> RunResult:
    mesh = dict(trainer.mesh.shape) if trainer.mesh is not None else "none (one device)"
    log.info("%d XLA %s device(s); seeds x batch mesh: %s", jax.device_count(), jax.default_backend(), mesh)
    snapshots, after = AttentionSnapshots(), AfterTraining()
    callbacks = [snapshots, after]
    if run_dir is not None:
        callbacks.append(MetricsFile(run_dir / "metrics.jsonl"))
        # before the Checkpointer, so the callback state saved at a step holds that step's record
        if cfg.measures.enabled and cfg.measures.outputs:
            callbacks.append(OutputTrajectory(run_dir / "outputs.npz", trainer.task.trajectory_kind))
        if trainer.llc is not None:
            callbacks.append(LLCFile(run_dir, trainer.llc))
        tr = cfg.train
        callbacks.append(Checkpointer(checkpoints, tr.checkpoint_every,
                                      grid_steps(tr.steps, tr.checkpoint_log_points, tr.checkpoint_linear_points),
                                      tr.checkpoints_around_transition))
        if cfg.train.tensorboard:
            callbacks.append(TensorBoard(run_dir / "tensorboard", run_dir))
        if cfg.train.wandb:
            callbacks.append(WandbLogger(run_dir, OmegaConf.to_container(cfg, resolve=True), cfg.train.wandb_mode,
                                         cfg.train.wandb_project))
        log_lines = LogLines(run_dir / "train.log", console=not cfg.train.progress)
        callbacks.append(log_lines)
    if cfg.train.progress:
        callbacks.append(ProgressBar())
    trainer.callbacks = callbacks + list(extra_callbacks)
    if checkpoints is not None and trainer.step:
        checkpoints.load_callback_state(trainer.step, trainer.all_callbacks)
    try:
        trainer.fit()
    finally:
        summary, cut_short = after.module().after_training(cfg, trainer, run_dir, snapshots,
                                                            log_lines if run_dir else None, plots)
    if cut_short:
        raise AnalysisInterrupted(f"stopped during the analysis after training; lab-plot {run_dir} draws the plots")
    return RunResult(cfg, trainer, summary, run_dir, trainer.metrics())
