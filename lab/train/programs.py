"""lab-train's whole-program cache: a run's compiled programs (probe, init, measures, chunks) saved as
executables and loaded by the next run of the same config, which then neither traces, lowers nor
compiles them.

Why beside JAX's persistent compile cache (`train.compile_cache`): that cache is keyed by the lowered
program, so every run still traces and lowers each program to look it up, about 1.3 s of the default
run's warm start on a 2-core CPU (issue 28). This cache is keyed by what the programs are made of,
known before tracing (`fingerprint`):
- the resolved config, less the keys that only steer the host side (`HOST_ONLY_KEYS`; train.seed
  too: seeds reach the programs as PRNG keys, arguments, never as constants);
- the lab's own source (every .py file under lab/), and the versions of Python, JAX, jaxlib,
  Flax, Optax, NumPy and ml_dtypes;
- the backend, its devices and version, the CPU model and flags (an executable compiled for one
  node's instruction set must not run on another's: a SLURM cluster may share one home directory),
  XLA_FLAGS and the JAX settings that change lowering;
and, per program, by its name and its arguments' shapes, dtypes and shardings.

Only `lab-train` uses it (lab.app.run, `reuse_programs`): in a notebook a patched function would not
change the key. `train.compile_cache=null` turns it off with JAX's cache. Clamps that graft or pick
heads from another run (`source:`) read that run's files, which the key does not cover: such runs
are not cached. The files live in `<compile_cache>/programs/`. JAX loads an executable by
unpickling it, which can run code, so a file is read only if this user owns it and neither it
nor its directory is writable by others (as ssh treats its keys). A file that fails to load
is removed and the program compiled again; a program that cannot be serialised, or that JAX's own
cache reloaded instead of compiling it (`JAX_CACHE_HIT`), is run but not saved. The directory is
pruned to `MAX_BYTES`, least recently used first.

Measured on this 2-core VM (`make bench ARGS=--launch-only`, 2026-12-04): launch to the first
training step of the default run with a warm cache 2.4-2.6 s before, 1.4-1.6 s with it.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import logging
import os
import pickle
import platform
import stat
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Callable, Optional

import jax
import numpy as np

from lab.rundir import flat_config

log = logging.getLogger(__name__)

# JAX's persistent cache hits, counted per thread (jax.monitoring calls listeners in the compiling thread).
# An executable that cache reloaded serialises without part of its code (XLA:CPU, jax 0.10.2: "Function
# ... not found" when the copy runs), so only programs compiled afresh are saved here.
JAX_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_jax_cache_hits = threading.local()


def _count_jax_cache_hits(event: str, **_) -> None:
    if event == JAX_CACHE_HIT:
        _jax_cache_hits.n = getattr(_jax_cache_hits, "n", 0) + 1


jax.monitoring.register_event_listener(_count_jax_cache_hits)

# Keys that never reach a compiled program: how a run logs, checkpoints, resumes and caches, and its seed
HOST_ONLY_KEYS = ("train.seed", "train.resume", "train.progress", "train.tensorboard", "train.wandb",
                  "train.wandb_mode", "train.wandb_project", "train.checkpoint_every", "train.keep_checkpoints",
                  "train.checkpoint_log_points", "train.checkpoint_linear_points",
                  "train.checkpoints_around_transition", "train.compile_cache", "train.gpus_per_job")
MAX_BYTES = 2 * 1024 ** 3
_saves: list[threading.Thread] = []


@atexit.register
def _join_saves(timeout_s: float = 30) -> None:
    """Saves still being written when the process exits are finished first (lab-train ends with os._exit
    once atexit's handlers ran). One cut short by a kill leaves only a temporary file, pruned later."""
    deadline = time.monotonic() + timeout_s
    for t in _saves:
        t.join(max(deadline - time.monotonic(), 0))


_LAB_DIR = Path(__file__).resolve().parents[1]


def _source_digest() -> str:
    h = hashlib.sha256()
    for path in sorted(_LAB_DIR.rglob("*.py")):
        h.update(str(path.relative_to(_LAB_DIR)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _cpu_model() -> str:
    """The CPU's model and instruction-set flags (XLA:CPU compiles for the host's)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f.read(1 << 16).splitlines() if l.startswith(("model name", "flags", "Features"))]
        return "\n".join(dict.fromkeys(lines))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def _versions() -> dict:
    out = {"python": sys.version, "jax": jax.__version__, "numpy": np.__version__}
    for name in ("jaxlib", "flax", "optax", "ml_dtypes"):
        module = sys.modules.get(name)
        out[name] = getattr(module, "__version__", None)
    return out


def fingerprint(cfg) -> str:
    """What a run's programs are made of, known before tracing them (see the module docstring)."""
    from omegaconf import OmegaConf
    config = {k: v for k, v in flat_config(OmegaConf.to_container(cfg, resolve=True)).items()
              if k not in HOST_ONLY_KEYS}
    devices = jax.devices()
    backend = devices[0].client
    settings = {name: getattr(jax.config, name, None) for name in
                ("jax_enable_x64", "jax_default_matmul_precision", "jax_threefry_partitionable",
                 "jax_default_prng_impl", "jax_numpy_rank_promotion")}
    parts = {"config": config, "source": _source_digest(), "versions": _versions(),
             "backend": [backend.platform, backend.platform_version],
             "devices": [[d.platform, d.device_kind, d.id, d.process_index] for d in devices],
             "cpu": _cpu_model(), "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax_settings": settings}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def signature(args: tuple) -> str:
    """The arguments as a compiled program sees them: tree structure, shapes, dtypes, shardings. Arrays
    and their shapes (jax.ShapeDtypeStruct, for `prepare`) alike; an array not committed to a device,
    like a ShapeDtypeStruct without a sharding, leaves its placement to the program."""
    leaves, tree = jax.tree.flatten(args)
    parts = [str(tree)]
    for x in leaves:
        if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
            placed = x.committed if isinstance(x, jax.Array) else x.sharding is not None
            parts.append(f"{x.shape}{x.dtype}{x.weak_type}{x.sharding if placed else 'anywhere'}")
        elif isinstance(x, np.ndarray):
            parts.append(f"np{x.shape}{x.dtype}")
        else:
            parts.append(type(x).__name__)
    return "|".join(parts)


def _private(path: Path) -> bool:
    """Owned by this user and not writable by group or others (the file and its directory)."""
    if not hasattr(os, "getuid"):
        return True
    for p in (path, path.parent):
        st = os.stat(p)
        if st.st_uid != os.getuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


class ProgramCache:
    """Compiled programs of one config in `directory`, keyed by `key` (`fingerprint`) and by name and
    argument signature. `compiled(name, jitted)` gives a callable that runs `jitted`'s program."""

    def __init__(self, directory: Path, key: str):
        self.directory, self.key = Path(directory), key
        self.loaded: list[str] = []    # the names of the programs loaded from files (logged, tested)
        self.compiled_now: list[str] = []
        self.from_jax_cache: list[str] = []   # compiled by reloading from JAX's cache: not saved (JAX_CACHE_HIT)

    @classmethod
    def for_config(cls, cfg) -> Optional["ProgramCache"]:
        """The cache of a run of `cfg`, or None: no compile cache, a clamp reading another run, or a
        directory that cannot be created."""
        if not cfg.train.compile_cache:
            return None
        if any(c.get("source") for c in (cfg.get("clamps") or {}).values() if c is not None):
            return None
        directory = Path(os.path.expanduser(cfg.train.compile_cache)) / "programs"
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            log.info("program cache off: cannot create %s (%s)", directory, e)
            return None
        return cls(directory, fingerprint(cfg))

    def report(self) -> str:
        """Which programs came from the cache and which were compiled, for train.log."""
        parts = [f"{len(self.loaded)} loaded from {self.directory} ({', '.join(self.loaded)})" if self.loaded else
                 "none loaded from the program cache",
                 f"{len(self.compiled_now)} compiled ({', '.join(self.compiled_now)})" if self.compiled_now else "",
                 f"{len(self.from_jax_cache)} from JAX's cache, not saved ({', '.join(self.from_jax_cache)})"
                 if self.from_jax_cache else ""]
        return "programs: " + "; ".join(p for p in parts if p)

    def path(self, name: str, sig: str) -> Path:
        digest = hashlib.sha256(f"{self.key}\n{name}\n{sig}".encode()).hexdigest()[:32]
        return self.directory / f"{name}-{digest}.jaxexe"

    def compiled(self, name: str, jitted) -> Callable:
        """A callable running `jitted`: on its first call with each argument signature, the program is
        loaded from this cache, or compiled (lowered from those arguments) and saved. Its `prepare(*shapes)`
        does that on a thread from the arguments' shapes (jax.ShapeDtypeStruct, with their shardings), so
        that the first call finds the program made or being made."""
        programs: dict[str, Future] = {}
        lock = threading.Lock()

        def made(args, sig: str) -> Future:
            with lock:
                if sig in programs:
                    return programs[sig]
                programs[sig] = future = Future()
            try:
                future.set_result(self._get(name, jitted, args, sig))
            except BaseException as e:   # raised again where the program is called
                future.set_exception(e)
            return future

        def call(*args):
            if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(args)):   # inside eval_shape or jit
                return jitted(*args)
            sig = signature(args)
            future = programs.get(sig) or made(args, sig)
            return future.result()(*args)

        def prepare(*shapes) -> None:
            threading.Thread(target=made, args=(shapes, signature(shapes)), name=f"lab-compile-{name}",
                             daemon=True).start()

        call.prepare = prepare
        call._cache_size = lambda: len(programs)   # compile count, for tests (as jitted._cache_size)
        return call

    def _get(self, name: str, jitted, args: tuple, sig: str) -> Callable:
        path = self.path(name, sig)
        program = self._load(path)
        if program is not None:
            self.loaded.append(name)
            return program
        hits = getattr(_jax_cache_hits, "n", 0)
        program = jitted.lower(*args).compile()
        if getattr(_jax_cache_hits, "n", 0) == hits:   # compiled afresh, not reloaded by JAX's cache
            # saved beside the run (0.05 s a program here); the process waits for saves at exit (`_join_saves`)
            saving = threading.Thread(target=self._save, args=(path, program), name="lab-save-program", daemon=True)
            _saves.append(saving)
            saving.start()
            self.compiled_now.append(name)
        else:
            self.from_jax_cache.append(name)
        return program

    def _load(self, path: Path) -> Optional[Callable]:
        from jax.experimental.serialize_executable import deserialize_and_load
        try:
            if not _private(path):
                log.warning("program cache: %s is not private to this user; not loading it", path)
                return None
            device_ids, (payload, in_tree, out_tree) = pickle.loads(path.read_bytes())
            by_id = {d.id: d for d in jax.devices()}
            program = deserialize_and_load(payload, in_tree, out_tree,
                                           execution_devices=[by_id[i] for i in device_ids])
        except FileNotFoundError:
            return None
        except Exception as e:   # written by another version, truncated: compile again
            log.info("program cache: %s unreadable (%s); compiling it again", path.name, e)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)   # recently used: pruned last
        return program

    def _save(self, path: Path, program) -> None:
        from jax.experimental.serialize_executable import serialize
        try:
            device_ids = [d.id for d in program.runtime_executable().local_devices()]
            blob = pickle.dumps((device_ids, serialize(program)))
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)   # whole or absent: another run may read it at once
        except Exception as e:   # not serialisable, disk full: the run goes on uncached
            log.info("program cache: %s not saved (%s)", path.name, e)
            return
        self._prune()

    def _prune(self) -> None:
        """The least recently used files go while the directory holds more than MAX_BYTES; so do temporary
        files older than an hour (saves cut short when their process exited)."""
        try:
            files = [(e.stat().st_mtime, e.stat().st_size, e.path) for e in os.scandir(self.directory) if e.is_file()]
        except OSError:
            return
        stale = time.time() - 3600
        for mtime, _, p in files:
            if os.path.basename(p).startswith(".") and mtime < stale:
                with contextlib.suppress(OSError):
                    os.unlink(p)
        total = sum(size for _, size, _ in files)
        for _, size, p in sorted(files):
            if total <= MAX_BYTES:
                break
            try:
                os.unlink(p)
                total -= size
            except OSError:
                pass
