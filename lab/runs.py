"""Loading a finished (or checkpointed) run directory back: its config, its model and task, and
its parameters. Used by clamps that graft from or choose heads by another run, and by lab-ablate.
JAX is imported only inside `load_run`, so a CLI can check a directory and set XLA's threading first."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


class RunLoadError(ValueError):
    """The run directory cannot be loaded; the message is one line."""


def run_dir_problem(run_dir: Path) -> Optional[str]:
    """Why `run_dir` cannot be loaded, checked without JAX; None if it has a config and a checkpoint."""
    if not (run_dir / "config.yaml").is_file():
        return f"{run_dir} is not a run directory: it has no config.yaml"
    ckpt = run_dir / "checkpoints"
    if not ckpt.is_dir() or not any(p.is_dir() and p.name.isdigit() for p in ckpt.iterdir()):
        return f"{run_dir} holds no checkpoint (nothing in {ckpt}); train it first, or wait until it writes one"
    return None


def first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def saved_config(path):
    """A run's saved (resolved) config, laid over the current default config, so that a run written
    before a key existed gets that key's default. If the saved config does not fit the current
    schema, it is used as saved."""
    from omegaconf import OmegaConf

    saved = OmegaConf.load(path)
    try:
        from lab.runner import load_config
        return OmegaConf.merge(load_config(), saved)
    except Exception:
        return OmegaConf.merge({"clamps": {}}, saved)


def load_run(run_dir, step: Optional[int] = None):
    """(cfg, trainer, step, params) of a run directory's checkpoint (`step`, or the newest);
    params have a leading seed axis. The run's own clamps are dropped: rebuilding its model and
    task does not need them (nor the runs they graft from)."""
    import jax
    from omegaconf import open_dict

    from lab.checkpoint import Checkpoints
    from lab.train import Trainer

    run_dir = Path(run_dir)
    problem = run_dir_problem(run_dir)
    if problem:
        raise RunLoadError(problem)
    try:
        cfg = saved_config(run_dir / "config.yaml")
        with open_dict(cfg):
            cfg.clamps = {}
        trainer = Trainer(cfg)
    except Exception as e:   # unreadable YAML, a config this version of the lab cannot run
        raise RunLoadError(f"cannot rebuild the model from {run_dir / 'config.yaml'}: {first_line(e)}") from e
    ck = Checkpoints(run_dir / "checkpoints", keep=cfg.train.keep_checkpoints)
    try:
        steps = sorted(ck.manager.all_steps())
        if step is not None and step not in steps:
            raise RunLoadError(f"no checkpoint at step {step} in {run_dir / 'checkpoints'}; available steps: {steps}")
        step, state = ck.restore(jax.eval_shape(trainer.init_state), step)
    except RunLoadError:
        raise
    except Exception as e:   # e.g. shapes that no longer match the config
        raise RunLoadError(f"cannot restore the checkpoint in {run_dir / 'checkpoints'}: {first_line(e)}") from e
    finally:
        ck.close()
    return cfg, trainer, int(step), state["params"]
