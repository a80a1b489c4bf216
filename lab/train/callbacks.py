"""Host-side callbacks, run between compiled chunks: metrics file, TensorBoard, progress bar,
checkpoints, attention snapshots, and the choice of `heads: auto` clamps' heads. A callback sees the trainer and the newest record; it must not
block long, since the device waits for it."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import jax
import numpy as np
import yaml

from lab.core import ConfigError
from lab.rundir import flat_config, load_overrides, save_llc, save_outputs
from lab.train.schedule import ONSET_FRAC, TransitionDetector, TransitionPlan, due, load_state_array, state_array

log = logging.getLogger(__name__)


class Callback:
    def on_start(self, trainer) -> None: ...
    def on_log(self, trainer, record: dict, outputs: dict) -> None: ...
    def on_end(self, trainer) -> None: ...

    # State that must survive a kill: saved next to every checkpoint, restored on resume.
    def state_dict(self) -> dict | None:
        return None

    def load_state_dict(self, state: dict) -> None: ...


class MetricsFile(Callback):
    """metrics.jsonl: one JSON record per log step, flushed at once so a killed run keeps its curve."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.file = None

    def on_start(self, trainer):
        self.file = open(self.path, "a")

    def on_log(self, trainer, record, outputs):
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def on_end(self, trainer):
        if self.file:
            self.file.close()


def override_hparams(overrides: list[str] | None) -> dict:
    """The hyper-parameters a run's command line set (.hydra/overrides.yaml, Hydra's own left out) as
    TensorBoard's HPARAMS tab takes them: {key: bool, int, float or str}."""
    out = {}
    for o in overrides or []:
        key, sep, text = str(o).partition("=")
        key = key.lstrip("+~")
        if not sep or key.startswith("hydra"):
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if isinstance(value, float) and not math.isfinite(value):
            value = text
        out[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value, default=str)
    return out


class TensorBoard(Callback):
    """Event files readable by TensorBoard, one sub-directory per seed so seeds overlay. At the end each
    seed also writes its hyper-parameters (the run's overrides, `run_dir`/.hydra/overrides.yaml, and its
    seed) and its final per-seed scalars as `final/<metric>` with `add_hparams` (`seed_<s>/hparams/`), so
    TensorBoard's HPARAMS tab compares the jobs of a sweep (`tensorboard --logdir <multirun dir>`)."""

    def __init__(self, directory: Path, run_dir: Path | None = None):
        self.directory = Path(directory)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.writers = []

    def on_start(self, trainer):
        from tensorboardX import SummaryWriter
        # on resume, TensorBoard drops the killed run's events after the checkpoint
        purge = trainer.step + 1 if trainer.step else None
        self.writers = [SummaryWriter(str(self.directory / f"seed_{s}"), purge_step=purge) for s in trainer.seeds]

    def on_log(self, trainer, record, outputs):
        step = record["step"]
        for i, w in enumerate(self.writers):
            w.add_scalar("lr", record["lr"], step)
            for k, v in record.items():
                if not isinstance(v, list):
                    continue
                v = np.asarray(v[i])
                if v.ndim == 0:
                    w.add_scalar(f"loss/{k}" if "loss" in k else k, float(v), step)
                elif v.ndim == 2:   # (L, H) per-head score
                    for l in range(v.shape[0]):
                        for h in range(v.shape[1]):
                            w.add_scalar(f"{k}/L{l}H{h}", float(v[l, h]), step)

    def on_end(self, trainer):
        hparams = override_hparams(load_overrides(self.run_dir)) if self.run_dir is not None else {}
        last = trainer.records[-1] if trainer.records else None
        for i, w in enumerate(self.writers):
            if last is not None:
                final = {}
                for k, v in last.items():
                    if isinstance(v, list) and isinstance(v[i], (int, float)) and math.isfinite(v[i]):
                        final[f"final/{k}"] = float(v[i])
                w.add_hparams({**hparams, "train.seed": int(trainer.seeds[i])}, final, name="hparams",
                              global_step=int(last["step"]))
            w.close()


WANDB_MODES = ("offline", "online", "disabled")
WANDB_MISSING = ("train.wandb=true needs the wandb package, which is not installed: pip install "
                 "'induction-lab[wandb]' (or drop train.wandb)")


def check_wandb(train_cfg) -> None:
    """With train.wandb: a one-line ConfigError, before anything is written, when wandb is not installed
    or train.wandb_mode is not one of WANDB_MODES."""
    if not train_cfg.wandb:
        return
    if train_cfg.wandb_mode not in WANDB_MODES:
        raise ConfigError(f"train.wandb_mode={train_cfg.wandb_mode!r}: choose one of {', '.join(WANDB_MODES)}")
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ConfigError(WANDB_MISSING) from None


class WandbLogger(Callback):
    """Weights & Biases, beside TensorBoard (train.wandb=true): one W&B run per lab run, offline by default
    (train.wandb_mode; `wandb sync <dir>/wandb/offline-run-*` uploads it later), its config the run's
    flattened config, the same values TensorBoard gets as `seed_<s>/<metric>` and `seed_<s>/<measure>/L<l>H<h>`,
    and `lr`. Files go to $WANDB_DIR if set, else into the run directory (`<run_dir>/wandb/`)."""

    def __init__(self, run_dir: Path, config: dict, mode: str = "offline", project: str = "induction-lab"):
        self.run_dir, self.config, self.mode, self.project = Path(run_dir), config, mode, project
        self.run = None

    def on_start(self, trainer):
        import wandb
        directory = None if os.environ.get("WANDB_DIR") else str(self.run_dir)
        self.run = wandb.init(project=self.project, name=self.run_dir.name, mode=self.mode, dir=directory,
                              config=flat_config(self.config), settings=wandb.Settings(console="off", silent=True),
                              reinit="create_new")

    def on_log(self, trainer, record, outputs):
        if self.run is None:
            return
        values = {"lr": float(record["lr"])}
        for i, seed in enumerate(trainer.seeds):
            for k, v in record.items():
                if not isinstance(v, list):
                    continue
                v = np.asarray(v[i])
                if v.ndim == 0:
                    values[f"seed_{seed}/{k}"] = float(v)
                elif v.ndim == 2:   # (L, H) per-head score
                    values.update({f"seed_{seed}/{k}/L{l}H{h}": float(v[l, h])
                                   for l in range(v.shape[0]) for h in range(v.shape[1])})
        self.run.log(values, step=int(record["step"]))

    def on_end(self, trainer):
        if self.run is not None:
            self.run.finish()
            self.run = None


def progress_values(trainer, record: dict, llc):
    """What the progress shows at a log step, seed means: the training loss, the task's main loss, the
    best induction score, and the latest LLC estimate (`llc`, carried until the next); returns
    (values, llc)."""
    values = {"loss": np.mean(record["train_loss"])} if "train_loss" in record else {}
    main = trainer.task.main_metric
    if main in record:
        values["main_loss" if main != "loss_repeat" else "rep_loss"] = np.mean(record[main])
    if "induction" in record:
        values["induction"] = np.max(np.mean(record["induction"], 0))
    if "llc" in record:
        llc = np.mean(record["llc"])
    if llc is not None:
        values["llc"] = llc
    return values, llc


class ProgressBar(Callback):
    def __init__(self):
        self.bar, self.llc = None, None

    def on_start(self, trainer):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=trainer.cfg.train.steps, initial=trainer.step, unit="step", dynamic_ncols=True,
                        desc=f"train ({len(trainer.seeds)} seed{'s' if len(trainer.seeds) > 1 else ''})")

    def on_log(self, trainer, record, outputs):
        self.bar.update(record["step"] - self.bar.n)
        post, self.llc = progress_values(trainer, record, self.llc)
        self.bar.set_postfix({k: f"{v:.3f}" for k, v in post.items()}, refresh=False)

    def on_end(self, trainer):
        if self.bar:
            self.bar.close()


class LogLines(Callback):
    """One line per log step in the run's train.log (step, losses, induction score, LLC), so `tail -f`
    or a scheduler's log shows how a run goes; on the terminal too when there is no progress bar
    (`console`). Its own logger ("lab.progress", not propagated): the progress bar stays clean."""

    def __init__(self, path: Path, console: bool):
        self.path, self.console, self.llc, self.handlers = path, console, None, []
        self.log = logging.getLogger("lab.progress")

    def _open(self, console: bool) -> None:
        import sys
        fmt = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
        self.handlers = [logging.FileHandler(self.path, delay=True)] + ([logging.StreamHandler(sys.stderr)]
                                                                         if console else [])
        for h in self.handlers:
            h.setFormatter(fmt)
            self.log.addHandler(h)
        self.log.setLevel(logging.INFO)
        self.log.propagate = False

    def note(self, message: str, console: bool) -> None:
        """One more line after training (the run's status and verdict)."""
        self._open(console)
        self.log.info("%s", message)
        self.on_end(None)

    def on_start(self, trainer):
        self._open(self.console)

    def on_log(self, trainer, record, outputs):
        values, self.llc = progress_values(trainer, record, self.llc)
        self.log.info("step %d/%d: %s", record["step"], trainer.cfg.train.steps,
                      " ".join(f"{k}={v:.4g}" for k, v in values.items()))

    def on_end(self, trainer):
        for h in self.handlers:
            self.log.removeHandler(h)
            h.close()
        self.handlers = []


class Checkpointer(Callback):
    """Saves at log steps: every `every` steps (0: never) and at the end, keeping the newest `keep`
    of those (`Checkpoints`); at the log step at or after each step of `grid` (lab/train/schedule.py);
    and around each transition of the task's main metric that the online detector sees, at most
    `around_transition` per transition (0: none; the detector runs anyway, so its state is whole when a
    resumed run turns them on). The last two kinds are kept for good. The detector and the plan are this
    callback's state, saved with every checkpoint: a resumed run saves the same checkpoints as an
    uninterrupted one. With several seeds (one checkpoint holds them all) a transition runs from the
    first seed's onset until no seed is still in its transition."""

    def __init__(self, checkpoints, every: int, grid=(), around_transition: int = 0):
        self.checkpoints, self.every, self.last = checkpoints, every, None
        self.grid = list(grid)
        self.detector, self.plan = None, TransitionPlan(around_transition)
        self.pending_state = None

    def on_start(self, trainer):
        _, min_drop = trainer.task.phase_threshold(trainer.cfg.measures.phase)
        smooth = max(int(trainer.cfg.measures.phase.smooth), 2)
        self.detector = TransitionDetector(len(trainer.seeds), ONSET_FRAC * min_drop, fit_points=2 * smooth,
                                           end_points=smooth)
        if self.pending_state is not None:   # restored before on_start (lab.app.run loads callback state first)
            load_state_array(self.pending_state, self.detector, self.plan)
            self.pending_state = None
        self.checkpoints.transitions = self.plan.transitions   # resumed: those seen up to its checkpoint

    def on_log(self, trainer, record, outputs):
        step = record["step"]
        reasons = []
        if step and self.every and step % self.every == 0:
            reasons.append("periodic")
        previous = trainer.records[-2]["step"] if len(trainer.records) > 1 else 0
        if step and due(self.grid, previous, step):
            reasons.append("schedule")
        main = trainer.task.main_metric
        if main in record:
            onsets, ends = self.detector.update(step, trainer.task.phase_curve(np.asarray(record[main], float)))
            for i in onsets:
                log.info("%s: a transition starts at step %d (seed %d); checkpoints around it", main, step,
                         trainer.seeds[i])
            for i in ends:
                log.info("%s: the transition of seed %d ended at step %d", main, trainer.seeds[i], step)
            save, drop = self.plan.decide(step, onsets, any(self.detector.in_transition))
            self.checkpoints.transitions = self.plan.transitions
            # dropped before the new one is saved: killed in between, the run resumes from an older
            # checkpoint whose plan still lists them, and drops them again (already gone) at this step
            for old in drop:
                self.checkpoints.drop_reason(old, "transition")
            if save:
                reasons.append("transition")
        if reasons:
            self._save(trainer, reasons)

    def _save(self, trainer, reasons):
        if self.last != trainer.step:
            # callback state first: a kill between the two writes must not leave a checkpoint whose
            # callback state is missing (the resumed run would silently lose its attention snapshots)
            self.checkpoints.save_callback_state(trainer.step, trainer.all_callbacks)
            self.checkpoints.save(trainer.step, trainer.state, reasons)
            self.last = trainer.step

    def on_end(self, trainer):
        # A diverged run keeps its last good checkpoint instead of saving NaNs over it; a run stopped
        # inside a chunk (a second signal) has no state that matches its step and records.
        if trainer.state is not None and not trainer.status.startswith("failed") and trainer.step:
            if trainer.state_logged:
                reason = "final" if trainer.status == "completed" else "interrupted"
                if self.last == trainer.step:   # saved at this log step already: the reason is added
                    self.checkpoints.add_reasons(trainer.step, [reason])
                self._save(trainer, [reason])
            else:
                log.warning("stopped inside a chunk: nothing saved past the newest checkpoint (step %s), "
                            "where the run continues", self.checkpoints.latest_step())
        self.checkpoints.close()

    def state_dict(self):
        return {"plan": state_array(self.detector, self.plan)} if self.detector is not None else None

    def load_state_dict(self, state):
        if self.detector is None:
            self.pending_state = state["plan"]
        else:
            load_state_array(state["plan"], self.detector, self.plan)


class AttentionSnapshots(Callback):
    """Keeps the attention of probe sequence 0 (seed 0) at every log step, in float16, so the
    patterns before and after the transition can be plotted once it has been detected."""

    def __init__(self, max_kept: int = 400):
        self.steps, self.patterns, self.max_kept = [], [], max_kept

    def on_log(self, trainer, record, outputs):
        if "attention" not in outputs:
            return
        self.steps.append(record["step"])
        self.patterns.append(np.asarray(outputs["attention"][0], np.float16))
        if len(self.steps) > self.max_kept:   # thin out evenly, always keeping the first
            self.steps, self.patterns = self.steps[::2], self.patterns[::2]

    def state_dict(self):
        return {"steps": np.asarray(self.steps), "patterns": np.asarray(self.patterns)} if self.steps else None

    def load_state_dict(self, state):
        self.steps, self.patterns = list(state["steps"].tolist()), list(state["patterns"])

    def select(self, summary: dict) -> tuple[list[int], list[str]]:
        """Indices and labels: start, before and after the loss transition (if any), final."""
        steps = np.asarray(self.steps)
        picks = [(0, "start")]
        main = summary.get("main_metric", "loss_repeat")
        agg = summary.get("phase", {}).get(main, {}).get("per_seed", [{}])[0]
        if agg.get("detected"):
            before = np.flatnonzero(steps <= agg["onset"])
            after = np.flatnonzero(steps >= agg["end"])
            if len(before):
                picks.append((int(before[-1]), "before"))
            if len(after):
                picks.append((int(after[0]), "after"))
        else:
            picks.append((len(steps) // 2, "middle"))
        picks.append((len(steps) - 1, "final"))
        first = {}   # each snapshot once, under the first label it was picked for
        for i, lab in picks:
            first.setdefault(i, lab)
        return list(first), list(first.values())

    def save(self, path: Path, summary: dict, info: dict) -> None:
        """`info`: the task's snapshot_info of the probe (tokens of sequence 0, structure to outline)."""
        if not self.steps:
            return
        idx, labels = self.select(summary)
        np.savez_compressed(path, steps=np.asarray(self.steps)[idx],
                            patterns=np.stack([self.patterns[i] for i in idx]).astype(np.float32),
                            labels=np.asarray(labels), **{k: np.asarray(v) for k, v in info.items()})


class OutputTrajectory(Callback):
    """Keeps the task's outputs on a fixed slice of the probe (`Task.trajectory_outputs`, every
    seed) at every log step, for essential dynamics; written to outputs.npz at the end, carried
    across a resume in the checkpoints' callback state. Past `max_kept` steps, every other one is
    dropped (the first always kept)."""

    def __init__(self, path: Path, kind: str, max_kept: int = 1000):
        self.path, self.kind, self.max_kept = Path(path), kind, max_kept
        self.steps, self.outputs = [], []

    def on_log(self, trainer, record, outputs):
        if "trajectory_outputs" not in outputs:
            return
        self.steps.append(record["step"])
        self.outputs.append(np.asarray(outputs["trajectory_outputs"], np.float32))
        if len(self.steps) > self.max_kept:
            self.steps, self.outputs = self.steps[::2], self.outputs[::2]

    def state_dict(self):
        return {"steps": np.asarray(self.steps), "outputs": np.asarray(self.outputs)} if self.steps else None

    def load_state_dict(self, state):
        self.steps, self.outputs = list(state["steps"].tolist()), list(state["outputs"])

    def on_end(self, trainer):
        if self.steps:
            save_outputs(self.path.parent, {"steps": np.asarray(self.steps), "outputs": np.stack(self.outputs),
                                            "kind": self.kind})


class LLCFile(Callback):
    """llc.npz (format in lab/rundir.py): every online LLC estimate with its chains' traces,
    rewritten after each estimate (they are few), carried across a resume in the callback state."""

    KEYS = ("llc", "llc_std", "chains", "delta", "distance", "init_loss", "finite", "not_settled")

    def __init__(self, run_dir: Path, settings):
        self.run_dir, self.settings = Path(run_dir), settings
        self.steps, self.rows = [], []

    def on_log(self, trainer, record, outputs):
        if "llc_samples" not in outputs:
            return
        self.steps.append(record["step"])
        self.rows.append({k: np.asarray(outputs["llc_samples"][k]) for k in self.KEYS})
        self.write()

    def write(self):
        stack = {k: np.stack([r[k] for r in self.rows]) for k in self.KEYS}
        save_llc(self.run_dir, llc_arrays(self.steps, stack, self.settings, "online"))

    def state_dict(self):
        if not self.steps:
            return None
        return {"steps": np.asarray(self.steps), **{k: np.stack([r[k] for r in self.rows]) for k in self.KEYS}}

    def load_state_dict(self, state):
        self.steps = list(state["steps"].tolist())
        self.rows = [{k: state[k][i] for k in self.KEYS} for i in range(len(self.steps))]


def llc_arrays(steps, stack: dict, settings, source: str) -> dict:
    """llc.npz's arrays from stacked estimates (`lab.measures.llc.sample` + `estimates` outputs,
    leading axes (steps, seeds))."""
    return {"steps": np.asarray(steps), "llc": stack["llc"], "llc_std": stack["llc_std"], "chains": stack["chains"],
            "loss_trace": stack["delta"], "distance": stack["distance"], "init_loss": stack["init_loss"],
            "nonfinite": ~np.asarray(stack["finite"], bool), "not_settled": stack["not_settled"],
            "burn_in": settings.burn_in, "nbeta": settings.nbeta_value, "source": source,
            "settings": settings.to_json()}


class AutoHeads(Callback):
    """Chooses the heads of `heads: auto` clamps: from a source run's checkpoint at the start, or
    from this run's measures at the first log step >= auto_step. Changes only traced arrays."""

    def on_start(self, trainer):
        clamps = trainer.clamps
        for name, info in clamps.auto.items():
            if info["source"] is not None:
                model, params = clamps.sources[info["source"]]
                measure = jax.jit(jax.vmap(lambda p: trainer.probe_scores(model, p)))(params)
                scores = np.asarray(measure[info["measure"]])[:, info["layer"]]
                scores = np.broadcast_to(scores, (len(trainer.seeds), scores.shape[-1])) if len(scores) == 1 \
                    else scores[:len(trainer.seeds)]
                trainer.clamp_args = clamps.choose_heads(trainer.clamp_args, name, scores, None)
            else:   # resumed: choose again from the restored records
                for record in trainer.records:
                    self.on_log(trainer, record, {})

    def on_log(self, trainer, record, outputs):
        clamps = trainer.clamps
        for name, info in clamps.auto.items():
            if info["heads_per_seed"] is None and info["step"] is not None and record["step"] >= info["step"]:
                if info["measure"] not in record:
                    raise ConfigError(f"clamps.{name}.auto_measure={info['measure']!r} is not a logged per-head measure")
                scores = np.asarray(record[info["measure"]])[:, info["layer"]]
                trainer.clamp_args = clamps.choose_heads(trainer.clamp_args, name, scores, record["step"])
                if record["step"] > trainer.cfg.clamps[name].start:
                    log.info("clamp %s: heads chosen at step %d (first log step >= %d)",
                                                     name, record["step"], info["step"])
