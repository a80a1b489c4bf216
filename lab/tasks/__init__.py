"""Synthetic data generators: pure JAX functions of a PRNG key, sampled inside the jitted step."""
from lab.tasks.induction import InductionTask, TokenBatch

def make_task(cfg):
    """Build the task named by `cfg.name` from its config node."""
    if cfg.name == "induction":
        return InductionTask.from_config(cfg)
    raise ValueError(f"task.name={cfg.name!r} is not a known task; known: induction")

__all__ = ["InductionTask", "TokenBatch", "make_task"]
