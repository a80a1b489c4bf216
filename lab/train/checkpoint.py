"""Checkpoints with orbax: the whole training state (params, optimiser state, PRNG keys; leading
seed axis) and the step. Orbax writes each step to a temporary directory and renames it when
complete, so a killed run never leaves a half-written checkpoint that looks finished.

Orbax does not notice every damaged file (a flipped bit in an array's bytes reads back as another
number), so each finished checkpoint gets a manifest, `checkpoint_manifests/<step>.json` beside
`checkpoints/`: the size and SHA-256 of every file of `checkpoints/<step>/` and of
`callback_state/<step>.npz`. It lives outside orbax's directory (orbax lists and deletes only its
step folders there, and tools count the folders of `checkpoints/`), so it is pruned here with them.
A restore checks it before orbax reads anything; a checkpoint without one (written by an older lab,
or by a run killed between orbax's rename and the manifest) is restored unverified, as before.

Each checkpoint is saved for reasons (lab/train/schedule.py): "periodic", "final" and "interrupted"
ones are rolling, and only the newest `keep` of them stay; "schedule" and "transition" ones are never
pruned. The reasons are recorded in `checkpoints.json` beside `checkpoints/` (lab.rundir's
checkpoint index), written before orbax's save (an entry whose folder never appeared is dropped) and
read back when a run is continued, so a resumed run prunes exactly as an uninterrupted one. A
checkpoint the index does not list (an older lab's) counts as rolling, as orbax's max_to_keep did."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
from functools import cached_property
from pathlib import Path
from typing import Optional

import jax

from lab.core import ConfigError, first_line
from lab.rundir import load_checkpoint_index, save_checkpoint_index
from lab.train.schedule import KEPT_REASONS

log = logging.getLogger(__name__)
logging.getLogger("absl").setLevel(logging.WARNING)   # orbax logs every file it writes at INFO

MANIFEST_FORMAT = 1
_BLOCK = 1 << 20


def file_digest(path: Path) -> dict:
    """{"size", "sha256"} of a file, read in 1 MiB blocks."""
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
            size += len(block)
    return {"size": size, "sha256": h.hexdigest()}


def _bytes_digest(data: bytes) -> dict:
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def checkpoint_manifest(step_dir: Path, callback_state: Optional[Path] = None) -> dict:
    """The manifest of a finished checkpoint folder: every file under it (path relative to it, in
    POSIX form) and, if given and present, the callback-state file of the same step."""
    step_dir = Path(step_dir)
    files = {p.relative_to(step_dir).as_posix(): file_digest(p)
             for p in sorted(step_dir.rglob("*")) if p.is_file()}
    cb = file_digest(callback_state) if callback_state is not None and Path(callback_state).is_file() else None
    return {"format": MANIFEST_FORMAT, "files": files, "callback_state": cb}


def _digest_problem(name: str, expected: dict, actual: Optional[dict]) -> Optional[str]:
    if actual is None:
        return f"{name} is missing"
    if actual["size"] != expected["size"]:
        return f"size mismatch in {name}: {actual['size']} bytes, {expected['size']} expected"
    if actual["sha256"] != expected["sha256"]:
        return f"checksum mismatch in {name}"
    return None


def manifest_problem(manifest: dict, step_dir: Path, callback_state: Optional[Path] = None,
                     callback_name: str = "callback state") -> Optional[str]:
    """Why the files of `step_dir` (and `callback_state`) do not match `manifest`, in a few words
    naming the first file that differs; None when they all match. Files the manifest does not list
    are ignored (orbax reads only its own)."""
    step_dir = Path(step_dir)
    try:
        listed = manifest["files"]
        if not isinstance(listed, dict) or not listed:
            return "its manifest lists no files"
        # sizes first (cheap; a cut or missing file is the common damage), then the checksums
        for name, d in listed.items():
            path = step_dir / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != d["size"]:
                return f"size mismatch in {name}: {path.stat().st_size} bytes, {d['size']} expected"
        for name, d in listed.items():
            problem = _digest_problem(name, d, file_digest(step_dir / name))
            if problem:
                return problem
        cb = manifest.get("callback_state")
        if cb is not None and callback_state is not None:
            path = Path(callback_state)
            return _digest_problem(callback_name, cb, file_digest(path) if path.is_file() else None)
    except (KeyError, TypeError, AttributeError) as e:   # a manifest of another shape: damaged too
        return f"its manifest is malformed ({first_line(e)})"
    except OSError as e:   # a file that cannot be read back
        return f"unreadable file ({first_line(e)})"
    return None


_ORBAX_LOGGERS = ("absl", "orbax", "tensorstore")


@contextlib.contextmanager
def _quiet(*names: str):
    """Silence loggers (orbax's absl ones) while orbax reads checkpoints that may be damaged: it logs
    a damaged metadata file's whole content (hundreds of lines); the failure is summarised in one
    line here instead."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _placed_abstract(x) -> jax.ShapeDtypeStruct:
    """The shape, dtype and sharding an array is restored with. Orbax would otherwise restore onto the
    sharding the checkpoint was saved with, and refuse ("topology mismatch") where that device layout
    does not exist: lab-train makes one XLA device per CPU core, a notebook has one. Arrays without a
    sharding (jax.eval_shape's) are restored onto the first device; the trainer places them on its mesh."""
    s = orbax().utils.to_shape_dtype_struct(x)
    if getattr(s, "sharding", None) is None:
        s = jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    return s


def orbax():
    """orbax.checkpoint, imported at first use: a third of a second that a run's start need not wait for."""
    import orbax.checkpoint as ocp
    return ocp


class Checkpoints:
    def __init__(self, directory: Path, keep: int):
        self.directory = Path(directory).absolute()
        self.keep = keep
        index = load_checkpoint_index(self.directory.parent)
        self.reasons: dict[int, list[str]] = {s: r for s, r in index["checkpoints"].items() if r}
        self.transitions: list = index["transitions"]   # the online detector's, set by the Checkpointer

    @cached_property
    def manager(self):
        """orbax's manager of the directory, made at its first use (orbax is imported then: not before
        a run's first training step, since the first checkpoint comes after it)."""
        ocp = orbax()
        # pruning is ours (`_prune`): orbax's max_to_keep would count the checkpoints kept for good too
        options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=False)
        with _quiet(*_ORBAX_LOGGERS):   # it reads every step's metadata, and logs a damaged file whole
            return ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: dict, reasons=("periodic",)) -> None:
        """Save `state` as checkpoint `step` for `reasons` (module docstring), then prune the rolling
        checkpoints past the newest `keep`."""
        if step in self.manager.all_steps():
            # a checkpoint labelled `step` holds the state after that step: a run resumed from its
            # final checkpoint (killed while summarising) has nothing newer to write
            log.info("checkpoint %d already saved in %s", step, self.directory)
            self.add_reasons(step, reasons)
            return
        self._write_reasons(step, reasons)   # first: a checkpoint on disk is never missing from the index
        # saved from host copies: orbax slices device arrays per replica with eager ops, each compiled on
        # first use (~0.4 s a run on 2 CPU devices); `restore` puts them back on the devices they came from
        state = jax.device_get(state)
        self.manager.save(step, args=orbax().args.StandardSave(state), force=True)
        self.manager.wait_until_finished()
        # orbax has renamed the finished checkpoint into place
        self._write_manifest(step, checkpoint_manifest(self._step_dir(step), self._callback_path(step)))
        self._prune()

    def _write_reasons(self, step: int, reasons) -> None:
        self.reasons[step] = sorted(set(self.reasons.get(step, [])) | set(reasons))
        self.write_index()

    def add_reasons(self, step: int, reasons) -> None:
        """Checkpoint `step`, already saved, is kept for `reasons` too (e.g. the run's final step was a
        periodic one); pruned again, since a rolling checkpoint may now be kept for good."""
        if step in self.manager.all_steps():
            self._write_reasons(step, reasons)
            self._prune()

    def drop_reason(self, step: int, reason: str) -> None:
        """`step` is no longer kept for `reason` (e.g. a transition checkpoint thinned out): deleted if
        nothing else keeps it, else kept (or pruned) for its other reasons."""
        if reason not in self.reasons.get(step, []):
            return
        self.reasons[step] = [r for r in self.reasons[step] if r != reason]
        if not self.reasons[step]:
            del self.reasons[step]
            if step in self.manager.all_steps():
                self.manager.delete(step)
            self._forget(step)
        self._prune()

    def write_index(self) -> None:
        """checkpoints.json: the reasons of the checkpoints on disk (and of the one being saved)."""
        save_checkpoint_index(self.directory.parent, self.reasons, self.transitions)

    def rolling(self) -> list[int]:
        """The checkpoints on disk that `keep` bounds (no reason to keep them for good), oldest first."""
        return [s for s in self.manager.all_steps()
                if not any(r in KEPT_REASONS for r in self.reasons.get(s, []))]

    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def restore(self, like: dict, step: Optional[int] = None, up_to: Optional[int] = None) -> tuple[int, dict]:
        """Restore into the structure (and shapes) of `like`: `step`, or else the newest checkpoint
        (at or before step `up_to`, if given) that is intact (its files match its manifest) and reads
        back whole. A damaged one (a flipped bit, cut files, a disk error) is skipped with one warning
        line, and deleted when an older one is restored in its place; raises FileNotFoundError (one
        line) when none is intact (a damaged `step` is refused, never replaced by another)."""
        abstract = jax.tree.map(_placed_abstract, like)
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None and step not in steps:
            raise FileNotFoundError(f"no checkpoint at step {step} in {self.directory}; available steps: {steps[::-1]}")
        candidates = [step] if step is not None else [s for s in steps if up_to is None or s <= up_to]
        if not candidates:
            raise FileNotFoundError(f"no checkpoint in {self.directory}"
                                    + (f" at or before step {up_to}" if up_to is not None and steps else ""))
        damaged = []   # (step, why), newest first
        for s in candidates:
            why = self.problem(s)
            if why is None:
                try:
                    with _quiet(*_ORBAX_LOGGERS):
                        state = self.manager.restore(s, args=orbax().args.StandardRestore(abstract))
                except Exception as e:   # orbax/tensorstore raise many kinds; any failure means unreadable
                    why = f"unreadable: {first_line(e)[:200]}"
            if why is not None:
                damaged.append((s, why))
                continue
            for d, why in damaged:   # unusable, and in the way of the resumed run's saves
                log.warning("checkpoint %s/%d is damaged (%s); falling back to step %d", self.directory, d, why, s)
                self.manager.delete(d)
                self._forget(d)
            return s, state
        if step is not None:
            raise FileNotFoundError(f"checkpoint {self.directory}/{step} is damaged ({damaged[0][1]})")
        raise FileNotFoundError(f"no intact checkpoint in {self.directory} ("
                                + "; ".join(f"step {s}: {why}" for s, why in damaged) + ")")

    # The manifests: checkpoint_manifests/<step>.json beside checkpoints/.
    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def _manifest_path(self, step: int) -> Path:
        return self.directory.parent / "checkpoint_manifests" / f"{step}.json"

    def _write_manifest(self, step: int, manifest: dict) -> None:
        path = self._manifest_path(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(path)

    def _read_manifest(self, step: int) -> Optional[dict]:
        """The manifest of `step`; None if it has none; raises ValueError if it cannot be read."""
        path = self._manifest_path(step)
        if not path.exists():
            return None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"its manifest {path.name} is unreadable ({type(e).__name__})") from e
        if not isinstance(manifest, dict):
            raise ValueError(f"its manifest {path.name} is malformed")
        return manifest

    def problem(self, step: int) -> Optional[str]:
        """Why checkpoint `step` (with its callback state) does not match its manifest; None when it
        does, or when it has no manifest (then it is restored unverified)."""
        try:
            manifest = self._read_manifest(step)
        except ValueError as e:
            return str(e)
        if manifest is None:
            log.debug("checkpoint %s/%d has no manifest (written by an older lab); restoring it unverified",
                      self.directory, step)
            return None
        cb = self._callback_path(step)
        return manifest_problem(manifest, self._step_dir(step), cb, f"{cb.parent.name}/{cb.name}")

    def _prune(self) -> None:
        """Delete the rolling checkpoints past the newest `keep`, then the manifests, callback state
        and index entries of the steps no longer on disk (and a manifest's temporary file left by a kill)."""
        rolling = sorted(self.rolling())
        for step in rolling[:max(len(rolling) - self.keep, 0)]:
            self.manager.delete(step)
        on_disk = set(self.manager.all_steps())
        if any(s not in on_disk for s in self.reasons):
            self.reasons = {s: r for s, r in self.reasons.items() if s in on_disk}
            self.write_index()
        kept = {str(s) for s in on_disk}
        for folder in (self._manifest_path(0).parent, self._callback_path(0).parent):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                label = p.name.split(".")[0]
                if p.name.endswith(".json.tmp") or (label.isdigit() and label not in kept):
                    p.unlink(missing_ok=True)

    def _forget(self, step: int) -> None:
        """Drop what belongs to a deleted checkpoint: its manifest, callback state and index entry."""
        self._manifest_path(step).unlink(missing_ok=True)
        self._callback_path(step).unlink(missing_ok=True)
        if self.reasons.pop(step, None) is not None:
            self.write_index()

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
        if step in self.manager.all_steps():
            # saved again for a step already checkpointed (a run resumed from its final checkpoint):
            # the checkpoint's manifest must vouch for the new file (np.savez stamps the time in it)
            self._refresh_callback_digest(step)

    def _refresh_callback_digest(self, step: int) -> None:
        try:
            manifest = self._read_manifest(step)
        except ValueError:
            return   # a damaged manifest stays damaged: the checkpoint is not vouched for again
        if manifest is not None:
            manifest["callback_state"] = file_digest(self._callback_path(step))
            self._write_manifest(step, manifest)

    def load_callback_state(self, step: int, callbacks) -> None:
        """Load the callback state saved with checkpoint `step`, after checking it against the
        checkpoint's manifest: a mismatch damages that checkpoint (ConfigError, one line; the next
        resume skips it)."""
        import numpy as np
        path = self._callback_path(step)
        data = path.read_bytes() if path.exists() else None
        try:
            manifest = self._read_manifest(step)
        except ValueError as e:
            raise ConfigError(f"checkpoint {self.directory}/{step} is damaged ({e}); run again to resume "
                              "from an older checkpoint") from None
        expected = (manifest or {}).get("callback_state")
        if expected is not None:
            name = f"{path.parent.name}/{path.name}"
            why = _digest_problem(name, expected, _bytes_digest(data) if data is not None else None)
            if why:
                raise ConfigError(f"checkpoint {self.directory}/{step} is damaged ({why}); run again to "
                                  "resume from an older checkpoint")
        if data is None:
            return
        with np.load(io.BytesIO(data)) as f:
            for cb in callbacks:
                prefix = f"{type(cb).__name__}/"
                state = {k[len(prefix):]: f[k] for k in f.files if k.startswith(prefix)}
                if state:
                    cb.load_state_dict(state)

    def close(self) -> None:
        if "manager" in self.__dict__:   # made (cached_property) only if a checkpoint was read or written
            self.manager.close()
