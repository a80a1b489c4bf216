"""Synthetic data generators: pure JAX functions of a PRNG key, sampled inside the jitted step.

Every module here that defines `Config` and `Task` (see lab/tasks/base.py) is a task; its name is
`Config.name`, and `task=<name>` in configs/task/ selects it."""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from lab.tasks.base import Task
from lab.tasks.induction import InductionTask, TokenBatch


@lru_cache(maxsize=None)
def registry() -> dict:
    """name -> module, for every task module in this package."""
    out = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "Config") and hasattr(module, "Task"):
            out[module.Config.name] = module
    return out


def make_task(cfg) -> Task:
    """Build the task named by `cfg.name` from its config node."""
    tasks = registry()
    if cfg.name not in tasks:
        raise ValueError(f"task.name={cfg.name!r} is not a known task; known: {', '.join(tasks)}")
    return tasks[cfg.name].Task.from_config(cfg)


__all__ = ["InductionTask", "Task", "TokenBatch", "make_task", "registry"]
