"""Loading a finished (or checkpointed) run directory back: its config, task, model, seeds and
parameters, without building a `Trainer` (so without its clamps, probe or compiled programs). Used
by clamps that graft from or choose heads by another run, by lab-ablate and lab-export, and from a
notebook as `lab.load_run(run_dir, step=...)`."""
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
    """A run directory's checkpoint: its config, task and model, the seeds it trained and the parameters
    of every seed (leading seed axis) at `step`."""
    cfg: object
    task: object
    model: Model
    seeds: list
    step: int
    params: dict      # leading seed axis

    def seed_index(self, seed: int) -> int:
        """The position of seed *value* `seed` on the parameters' seed axis."""
        if seed not in self.seeds:
            raise RunLoadError(f"the run has no seed {seed}; its seeds are {self.seeds}")
        return self.seeds.index(seed)

    def seed_params(self, i: int = 0) -> dict:
        """The parameters of the i-th seed (an index, not a seed value: see `seed_index`)."""
        if not -len(self.seeds) <= i < len(self.seeds):
            raise RunLoadError(f"seed index {i} is out of range: the run trained {len(self.seeds)} seed(s) {self.seeds}")
        return jax.tree.map(lambda x: x[i], self.params)

    def sample(self, n: int, key=0):
        """A fresh batch of n sequences of the run's task (`key`: an int seed or a PRNG key); its
        `.tokens` are (n, seq_len)."""
        key = jax.random.key(key) if isinstance(key, int) else key
        return jax.jit(self.task.sample, static_argnums=1)(key, n)

    def run_with_cache(self, tokens, names=("*",), seed_index: int = 0, interventions=None):
        """(logits, cache) of one seed's model on `tokens` (a batch or a (B, T) array); names and
        intervention keys may be globs and TransformerLens' names."""
        return self.model.run_with_cache(self.seed_params(seed_index), tokens, names, interventions)


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
