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
        if step in self.manager.all_steps():
            # a checkpoint labelled `step` holds the state after that step: a run resumed from its
            # final checkpoint (killed while summarising) has nothing newer to write
            log.info("checkpoint %d already saved in %s", step, self.directory)
            return
        self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self.manager.wait_until_finished()

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def restore(self, like: dict, step: Optional[int] = None) -> tuple[int, dict]:
        """Restore into the structure (and shapes) of `like`: `step`, or else the newest checkpoint
        that reads back whole; a damaged one (cut files, a disk error) is skipped with a warning."""
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        candidates = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        if not candidates:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        for i, s in enumerate(candidates):
            try:
                state = self.manager.restore(s, args=ocp.args.StandardRestore(abstract))
                for damaged in candidates[:i]:   # unreadable, and in the way of the resumed run's saves
                    self.manager.delete(damaged)
                return s, state
            except Exception as e:   # orbax/tensorstore raise many kinds; any failure means unreadable
                if i == len(candidates) - 1:
                    raise FileNotFoundError(f"no readable checkpoint in {self.directory}: step {s}: "
                                            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
                log.warning("checkpoint %s/%d is damaged (%s); falling back to an older one",
                            self.directory, s, type(e).__name__)

    # Callback state (e.g. attention snapshots) lives beside the checkpoints, one .npz per step,
    # written atomically and pruned with them.
    def _callback_path(self, step: int) -> Path:
        return self.directory.parent / "callback_state" / f"{step}.npz"

    def save_callback_state(self, step: int, callbacks) -> None:
        import numpy as np
        arrays = {f"{type(cb).__name__}/{k}": v for cb in callbacks
                  for k, v in (cb.state_dict() or {}).items()}
        path = self._callback_path(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)
        kept = set(self.manager.all_steps()) | {step}   # written before its checkpoint (see Checkpointer)
        for old in path.parent.glob("*.npz"):
            if old.stem.isdigit() and int(old.stem) not in kept:
                old.unlink()

    def load_callback_state(self, step: int, callbacks) -> None:
        import numpy as np
        path = self._callback_path(step)
        if not path.exists():
            return
        with np.load(path) as f:
            for cb in callbacks:
                prefix = f"{type(cb).__name__}/"
                state = {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}
                if state:
                    cb.load_state_dict(state)

    def close(self) -> None:
        self.manager.close()
