"""Loading a finished (or checkpointed) run directory back: its config, task, model, seeds and
parameters, without building a `Trainer` (so without its clamps, probe or compiled programs). Used
by clamps that graft from or choose heads by another run, and by lab-ablate."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Optional

import jax
from omegaconf import open_dict

from lab.config.compose import saved_config
from lab.core import RunLoadError, first_line
from lab.model import Model
from lab.rundir import checkpoint_steps, run_dir_problem
from lab.train.checkpoint import Checkpoints
from lab.train.state import build, init_state, seed_range


class LoadedRun(NamedTuple):
    cfg: object
    task: object
    model: Model
    seeds: list
    step: int
    params: dict      # leading seed axis


def load_run(run_dir, step: Optional[int] = None) -> LoadedRun:
    """A run directory's checkpoint (`step`, or the newest that reads back whole). The run's own
    clamps are dropped: rebuilding its model and task does not need them (nor the runs they graft from)."""
    run_dir = Path(run_dir)
    problem = run_dir_problem(run_dir)
    if problem:
        raise RunLoadError(problem)
    try:
        cfg = saved_config(run_dir / "config.yaml")
        with open_dict(cfg):
            cfg.clamps = {}
        task, model, optimizer, _ = build(cfg)
    except Exception as e:   # unreadable YAML, a config this version of the lab cannot run
        raise RunLoadError(f"cannot rebuild the model from {run_dir / 'config.yaml'}: {first_line(e)}") from e
    seeds = seed_range(cfg.train)
    steps = checkpoint_steps(run_dir)
    if step is not None and step not in steps:
        raise RunLoadError(f"no checkpoint at step {step} in {run_dir / 'checkpoints'}; available steps: {steps}")
    ck = Checkpoints(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
    try:
        step, state = ck.restore(jax.eval_shape(lambda: init_state(model, optimizer, seeds)), step)
    except Exception as e:   # e.g. shapes that no longer match the config
        raise RunLoadError(f"cannot restore the checkpoint in {run_dir / 'checkpoints'}: {first_line(e)}") from e
    finally:
        ck.close()
    return LoadedRun(cfg, task, model, seeds, int(step), state["params"])
