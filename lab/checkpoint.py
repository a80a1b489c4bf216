"""Checkpoints with orbax: the whole training state (params, optimiser state, PRNG keys; leading
seed axis) and the step. Orbax writes each step to a temporary directory and renames it when
complete, so a killed run never leaves a half-written checkpoint that looks finished."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)
logging.getLogger("absl").setLevel(logging.WARNING)   # orbax logs every file it writes at INFO


class Checkpoints:
    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: dict) -> None:
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def restore(self, like: dict, step: Optional[int] = None) -> tuple[int, dict]:
        """Restore into the structure (and shapes) of `like`; newest step by default."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        return step, self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.manager.close()
